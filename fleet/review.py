"""The human review gate: a job resting at `testing` ships on a quorum of approvals by
distinct reviewers; one rejection sends it back to the queue for rework."""
from __future__ import annotations

from fleet import clock, errors, lifecycle, writes, weight_registry
from fleet.context import Context
from fleet.jobs import Job
from fleet.stages import Stage


def request(ctx: Context, id: str, required: int, reviewers: list[str] | None, actor: str | None = None) -> Job:
    """Open (or re-open) the gate on a `testing` job: `required` approvals, optionally only
    from the named reviewers."""
    if reviewers is not None and len(set(reviewers)) < required:
        raise errors.ValidationFailed(
            f"{required} approvals required but only {len(set(reviewers))} reviewers named",
            [{"field": "required", "message": "more than the reviewers named"}],
        )
    now = ctx.clock.now()

    def decide(job: Job, now) -> Job:
        if job.stage != Stage.TESTING:
            raise errors.IllegalTransition(f"job {job.id} is {job.stage.value}; review opens on a testing job")
        review = {
            "required": required,
            "reviewers": sorted(set(reviewers)) if reviewers is not None else None,
            "approvals": [],
            "requestedAt": clock.format(now),
        }
        return job.model_copy(update={"review": review}).with_event(now, "review_requested", actor, required=required)

    return writes.change(ctx, id, decide)


def decide(ctx: Context, id: str, reviewer: str, approve: bool, comment: str | None = None) -> Job:
    """Record one reviewer's decision. Approvals count once per reviewer; reaching the quorum
    ships the job. A rejection sends it to the queue for rework, the comment in its events."""
    now = ctx.clock.now()

    def change(job: Job, now) -> Job | None:
        review = job.review
        if job.stage != Stage.TESTING or review is None:
            raise errors.IllegalTransition(f"job {job.id} has no open review (stage {job.stage.value})")
        if review.get("reviewers") is not None and reviewer not in review["reviewers"]:
            raise errors.Forbidden(f"{reviewer} is not a reviewer of job {job.id}")
        detail = {"comment": comment} if comment else {}
        if not approve:
            weights = weight_registry.for_product(ctx, job.product_id)
            # The rework must be approved afresh: the quorum stays, its approvals do not.
            return (
                lifecycle.requeued(lifecycle.released(job, now), now, weights)
                .model_copy(update={"review": {**review, "approvals": [], "rejectedBy": reviewer}})
                .with_event(now, "review_rejected", reviewer, **detail)
            )
        if reviewer in review["approvals"]:
            return None  # the same reviewer approving twice counts once
        approvals = [*review["approvals"], reviewer]
        job = job.model_copy(update={"review": {**review, "approvals": approvals}})
        job = job.with_event(now, "review_approved", reviewer, approvals=len(approvals), **detail)
        if len(approvals) >= review["required"]:
            job = lifecycle.finished(job, now, Stage.SHIPPED).with_event(now, "shipped", reviewer, by="review")
        return job

    return writes.change(ctx, id, change)
