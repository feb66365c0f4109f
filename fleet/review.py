"""The human review gate: a job resting at `testing` ships on a quorum of approvals by
distinct reviewers; one rejection sends it back to the queue for rework."""
from __future__ import annotations

from datetime import datetime

from fleet import clock, effects, errors, lifecycle, weight_registry
from fleet.context import Context
from fleet.jobs import Job, product_of
from fleet.principals import ANONYMOUS
from fleet.stages import Stage


def request(ctx: Context, id: str, required: int, reviewers: list[str] | None, actor: str | None = None) -> Job:
    """Open (or re-open) the gate on a `testing` job: `required` approvals, optionally only
    from the named reviewers. The event names the principal (see `Principal.actor`)."""
    actor = ctx.principal.actor(actor)
    if reviewers is not None and len(set(reviewers)) < required:
        raise errors.ValidationFailed(
            f"{required} approvals required but only {len(set(reviewers))} reviewers named",
            [{"field": "required", "message": "more than the reviewers named"}],
        )

    def decide(job: Job, _: None, now: datetime) -> Job:
        if job.stage != Stage.TESTING:
            raise errors.IllegalTransition(f"job {job.id} is {job.stage.value}; review opens on a testing job")
        review = {
            "required": required,
            "reviewers": sorted(set(reviewers)) if reviewers is not None else None,
            "approvals": [],
            "requestedAt": clock.format(now),
        }
        return job.model_copy(update={"review": review}).with_event(now, "review_requested", actor, required=required)

    return effects.change(ctx, id, decide).job


def decide(ctx: Context, id: str, reviewer: str | None, approve: bool, comment: str | None = None) -> Job:
    """Record one reviewer's decision. Approvals count once per reviewer; reaching the quorum
    ships the job. A rejection sends it to the queue for rework, the comment in its events.

    The reviewer is the principal: `reviewer` may be omitted, and naming anyone else is
    `Forbidden`, so distinct approvals are distinct principals. Only with auth off does the
    caller's word name the reviewer."""
    if ctx.principal == ANONYMOUS:
        if not reviewer:
            raise errors.ValidationFailed("reviewer is required", [{"field": "reviewer", "message": "missing"}])
    elif reviewer is not None and reviewer != ctx.principal.name:
        raise errors.Forbidden(f"a review is recorded in the principal's own name ({ctx.principal.name}), not {reviewer}")
    else:
        reviewer = ctx.principal.name
    product_id = product_of(id)
    # A rejection queues the job again: its rank key needs the product's weights.
    keyed_with = weight_registry.cached(ctx, product_id) if not approve and product_id else None

    def change(job: Job, _: None, now: datetime) -> Job | None:
        review = job.review
        if job.stage != Stage.TESTING or review is None:
            raise errors.IllegalTransition(f"job {job.id} has no open review (stage {job.stage.value})")
        if review.get("reviewers") is not None and reviewer not in review["reviewers"]:
            raise errors.Forbidden(f"{reviewer} is not a reviewer of job {job.id}")
        detail = {"comment": comment} if comment else {}
        if not approve:
            # The rework must be approved afresh: the quorum stays, its approvals do not.
            return (
                lifecycle.requeued(lifecycle.released(job, now), now, keyed_with.weights)
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

    return effects.change(ctx, id, change, keyed_with=keyed_with).job
