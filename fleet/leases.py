"""Fenced factory writes: a lease holder moves its job (PATCH) or ends its lease (release).

Every write names a `leaseId`; unless it is the job's current, unexpired lease the write is
refused with `lease_lost` and nothing changes, so a factory that lost its lease (expired,
preempted, requeued) can never overwrite the job's newer owner.
"""
from __future__ import annotations

from fleet import effects, errors, lifecycle, outage, weight_registry, writes
from fleet.context import Context
from fleet.jobs import Job, product_of
from fleet.schemas import PatchBody, ReleaseBody
from fleet.stages import ACTIVE, TERMINAL, RunResult, Stage, check_factory_move


def _write(ctx: Context, id: str, lease_id: str, change, keyed_with: weight_registry.Snapshot | None = None) -> Job:
    """Apply `change(job, now) -> Job` if `lease_id` is the job's live lease (or, its lease
    expired, during an outage: the outage record is read before deciding, and only then)."""
    now = ctx.clock.now()
    current = writes.read(ctx, id)
    gap = outage.gap_for(ctx, current, lease_id, now)

    def fenced(job: Job, gap, now) -> Job:
        if not outage.held(job, lease_id, now, gap):
            raise errors.LeaseLost(f"lease {lease_id} is not the live lease of job {id}")
        return change(job, now)

    return effects.change(ctx, id, fenced, gap, current=current, now=now, keyed_with=keyed_with).job


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


def release(ctx: Context, id: str, body: ReleaseBody) -> Job:
    """End the lease. With a terminal `stage`/`result` the job finishes; `stage: testing` parks
    it lease-free for the review gate; `result: retry` counts an attempt; neither gives it back
    to the queue with its checkpoint, attempts unchanged."""
    target = _release_target(body)
    product_id = product_of(id)
    keyed_with = weight_registry.snapshot(ctx, product_id) if product_id else None
    weights = keyed_with.weights if keyed_with else None
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

    return _write(ctx, id, body.lease_id, change, keyed_with)


def _release_target(body: ReleaseBody) -> Stage | str | None:
    """What the release asks for: a terminal stage, `testing` (park), "retry", or None (give back)."""
    by_result = {"shipped": Stage.SHIPPED, "done": Stage.DONE, "failed": Stage.FAILED, "retry": "retry", "released": None}
    from_result = by_result[body.result] if body.result else None
    if body.stage is not None:
        if body.stage not in TERMINAL | {Stage.TESTING} or body.stage in (Stage.DEAD_LETTER, Stage.CANCELLED):
            raise errors.ValidationFailed(
                f"a release may name stage shipped, done, failed or testing, not {body.stage.value}",
                [{"field": "stage", "message": "not a stage a release can end in"}],
            )
        if body.result and from_result != body.stage:
            raise errors.ValidationFailed(
                f"stage {body.stage.value} and result {body.result} disagree",
                [{"field": "result", "message": "disagrees with stage"}],
            )
        return body.stage
    return from_result
