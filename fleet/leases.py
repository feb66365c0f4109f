"""Fenced factory writes: a lease holder moves its job (PATCH) or ends its lease (release).

Every write names a `leaseId`; unless it is the job's current, unexpired lease the write is
refused with `lease_lost` and nothing changes, so a factory that lost its lease (expired,
preempted, requeued) can never overwrite the job's newer owner.
"""
from __future__ import annotations

from fleet import errors, lifecycle, outage, writes, weight_registry
from fleet.context import Context
from fleet.jobs import Job, product_of
from fleet.schemas import PatchBody, ReleaseBody, ReleaseResult
from fleet.stages import ACTIVE, TERMINAL, RunResult, Stage, check_factory_move


def _write(ctx: Context, id: str, lease_id: str, change) -> Job:
    """Apply `change(job, now) -> Job` if `lease_id` is the job's live lease."""

    def fenced(job: Job, now) -> Job:
        if not outage.holds(ctx, job, lease_id, now):
            raise errors.LeaseLost(f"lease {lease_id} is not the live lease of job {id}")
        return change(job, now)

    return writes.change(ctx, id, fenced)


def patch(ctx: Context, id: str, body: PatchBody) -> Job:
    """Move the job to `body.stage` (see `stages.check_factory_move`); record note/insights."""

    def change(job: Job, now) -> Job:
        factory = job.lease.factory_id
        check_factory_move(job.stage, body.stage)
        insights = body.insights.model_dump(exclude_none=True) if body.insights else None
        if body.stage == Stage.SHIPPED:
            job = lifecycle.finished(job, now, Stage.SHIPPED, insights=insights)
        else:
            job = job.model_copy(update={"stage": body.stage})
            if insights:
                job = job.with_latest_run(insights={**job.latest_run.insights, **insights})
        detail = {"note": body.note} if body.note else {}
        return job.with_event(now, "stage", factory, stage=body.stage.value, **detail)

    return _write(ctx, id, body.lease_id, change)


def release(ctx: Context, id: str, body: ReleaseBody, weights_for=weight_registry.for_product) -> Job:
    """End the lease. With a terminal `stage`/`result` the job finishes; `stage: testing` parks
    it lease-free for the review gate; `result: retry` counts an attempt; neither gives it back
    to the queue with its checkpoint, attempts unchanged."""
    target = _release_target(body)
    product_id = product_of(id)
    weights = weights_for(ctx, product_id) if product_id else None
    report = {
        "insights": body.insights.model_dump(exclude_none=True) if body.insights else None,
        "pr_url": body.pr_url,
        "branch": body.branch,
        "artifacts": [a if isinstance(a, str) else a.model_dump(exclude_none=True) for a in body.artifacts],
    }

    def change(job: Job, now) -> Job:
        factory = job.lease.factory_id
        if body.checkpoint is not None:
            job = job.model_copy(update={"checkpoint": body.checkpoint})
        if target in TERMINAL:
            job = lifecycle.finished(job, now, target, **report)
        elif target == Stage.TESTING:
            if job.stage not in ACTIVE:
                raise errors.IllegalTransition(f"cannot park a {job.stage.value} job at testing")
            job = lifecycle.end_run(job, now, None, **report).model_copy(update={"stage": Stage.TESTING, "lease": None})
        elif target == "retry":
            job = lifecycle.retried(lifecycle.end_run(job, now, None, **report), now, weights, RunResult.RETRY)
        else:
            job = lifecycle.requeued(lifecycle.end_run(job, now, RunResult.RELEASED, **report), now, weights)
        return job.with_event(now, "released", factory, stage=job.stage.value)

    return _write(ctx, id, body.lease_id, change)


def _release_target(body: ReleaseBody) -> Stage | ReleaseResult | None:
    """What the release asks for: a terminal stage, `testing` (park), `retry`, or None (give back)."""
    by_result = {
        ReleaseResult.SHIPPED: Stage.SHIPPED,
        ReleaseResult.DONE: Stage.DONE,
        ReleaseResult.FAILED: Stage.FAILED,
        ReleaseResult.RETRY: ReleaseResult.RETRY,
        ReleaseResult.RELEASED: None,
    }
    from_result = by_result[body.result] if body.result else None
    if body.stage is not None:
        if body.stage not in TERMINAL | {Stage.TESTING} or body.stage in (Stage.DEAD_LETTER, Stage.CANCELLED):
            raise errors.ValidationFailed(
                f"a release may name stage shipped, done, failed or testing, not {body.stage.value}",
                [{"field": "stage", "message": "not a stage a release can end in"}],
            )
        if body.result and from_result != body.stage:
            raise errors.ValidationFailed(
                f"stage {body.stage.value} and result {body.result.value} disagree",
                [{"field": "result", "message": "disagrees with stage"}],
            )
        return body.stage
    return from_result
