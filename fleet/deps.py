"""Dependencies: a job with unfinished deps waits `blocked` until the last one ships.

Deps are idempotency keys of jobs in the same product. The finishing job's write releases its
dependents (`release_dependents`); a submit re-checks right after writing `blocked`, and the
sweep re-checks every blocked job, so a crash between two writes never strands one.
"""
from __future__ import annotations

from typing import Any

from fleet import errors, queue_state, store, weight_registry
from fleet import lifecycle
from fleet.context import Context
from fleet.jobs import BlockedOn, Job, job_id
from fleet.stages import FINISHED, Stage


def waiting_on(ctx: Context, product_id: str, keys: list[str]) -> list[BlockedOn]:
    """Each dep in `keys` that is not finished, with its current stage (None: not submitted)."""
    waiting = []
    for key in keys:
        dep_id = job_id(product_id, key)
        try:
            stage = Stage(ctx.store.read("jobs", product_id, dep_id)["stage"])
        except errors.NotFound:
            stage = None
        if stage not in FINISHED:
            waiting.append(BlockedOn(idempotency_key=key, job_id=dep_id, stage=stage))
    return waiting


def refuse_unknown(waiting: list[BlockedOn]) -> None:
    """`ValidationFailed` naming the deps in `waiting` that were never submitted."""
    unknown = [d.idempotency_key for d in waiting if d.stage is None]
    if unknown:
        raise errors.ValidationFailed(
            f"deps name jobs that were never submitted: {unknown}", [{"field": "deps", "message": f"unknown: {unknown}"}]
        )


def recheck(ctx: Context, product_id: str, id: str) -> Job:
    """Unblock the job if all its deps are finished, else refresh its `blockedOn`."""
    return unblock_if_ready(ctx, product_id, id)[0]


def unblock_if_ready(ctx: Context, product_id: str, id: str) -> tuple[Job, bool]:
    """`recheck`, also telling whether this call is the one that unblocked the job."""
    now = ctx.clock.now()
    weights = weight_registry.for_product(ctx, product_id)
    unblocked: list[bool] = []

    def decide(doc: dict[str, Any]) -> dict[str, Any] | None:
        job = Job.from_doc(doc)
        unblocked.clear()
        if job.stage != Stage.BLOCKED:
            return None
        waiting = waiting_on(ctx, product_id, job.deps)
        if waiting:
            return None if waiting == job.blocked_on else job.model_copy(update={"blocked_on": waiting}).to_doc()
        unblocked.append(True)
        return lifecycle.requeued(job, now, weights).with_event(now, "unblocked").to_doc()

    job = Job.from_doc(store.update(ctx.store, "jobs", product_id, id, decide))
    if unblocked:
        job = weight_registry.ensure_rank(ctx, job)
        queue_state.bump(ctx, product_id)
    return job, bool(unblocked)


def release_dependents(ctx: Context, finished: Job) -> None:
    """Re-check the blocked jobs of the product that name `finished` as a dep."""
    query = store.Query(
        "jobs",
        finished.product_id,
        (store.Filter("stage", "=", Stage.BLOCKED.value), store.Filter("deps", "contains", finished.idempotency_key)),
        limit=200,
    )
    # Read them all before writing: unblocking shrinks the result being paged through.
    for doc in list(store.query_all(ctx.store, query)):
        try:
            recheck(ctx, finished.product_id, doc["id"])
        except errors.NotFound:
            continue
