"""The sweeps a timer runs: what keeps the fleet live when factories or processes die.

Correctness never depends on them running on time — a write naming an expired lease is fenced
anyway — but liveness does: expired work goes back to the queue only here. Every change is a
conditional write that re-decides on the current document, so a job finished after the sweep
read it is never clobbered.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from fleet import budgets, clock, deps, effects, errors, lifecycle, spend, store, weights as registry
from fleet.context import Context
from fleet.jobs import Job
from fleet.stages import RunResult, Stage


#: Where the sweep remembers when it last ran: a reserved partition no product can have.
STATE_PARTITION = "_fleet"
STATE_ID = "sweep-state"


def expired_leases(ctx: Context) -> dict[str, int]:
    """Every job whose lease has expired: back to the queue with an attempt more, or
    `dead_letter` at `maxAttempts`.

    Outage grace: if the sweep has not run for longer than `outage_grace_seconds` (the store or
    the coordinator was down, so factories could not renew either), a lease that expired during
    that gap is extended by one lease term instead of expired, so an outage never causes a
    mass expiry. Leases that expired before the gap began are expired as usual.
    """
    now = ctx.clock.now()
    gap_began = _outage_began(ctx, now)
    query = store.Query(
        "jobs",
        None,
        (store.Filter("lease.expiresAt", "<", clock.format(now)),),
        (("lease.expiresAt", False),),
        limit=200,
    )
    counts = {"expired": 0, "deadLettered": 0, "spared": 0}
    for doc in list(store.query_all(ctx.store, query)):
        weights = registry.for_product(ctx, doc["productId"])
        spare = gap_began is not None and clock.parse(doc["lease"]["expiresAt"]) >= gap_began
        wrote: dict[str, Stage] = {}

        def decide(current: dict[str, Any]) -> dict[str, Any] | None:
            job = Job.from_doc(current)
            wrote.clear()
            if job.lease is None or job.lease.expires_at > now:
                return None  # renewed or finished since we read it
            wrote["before"] = job.stage
            if spare:
                lease = job.lease.model_copy(update={"expires_at": now + timedelta(seconds=ctx.settings.lease_seconds)})
                return job.model_copy(update={"lease": lease}).with_event(now, "lease_spared", reason="outage").to_doc()
            factory = job.lease.factory_id
            return (
                lifecycle.retried(job, now, weights, RunResult.EXPIRED)
                .with_event(now, "lease_expired", factory)
                .to_doc()
            )

        try:
            job = Job.from_doc(store.update(ctx.store, "jobs", doc["productId"], doc["id"], decide))
        except errors.NotFound:
            continue
        if not wrote:
            continue  # nothing of ours was written
        if spare:
            counts["spared"] += 1
        else:
            counts["deadLettered" if job.stage == Stage.DEAD_LETTER else "expired"] += 1
            effects.settle(ctx, wrote["before"], job)
    _record_run(ctx, now)
    return counts


def _outage_began(ctx: Context, now) -> Any:
    """When the gap began if the last sweep is older than the grace threshold, else None."""
    try:
        last = clock.parse(ctx.store.read("jobs", STATE_PARTITION, STATE_ID)["lastSweepAt"])
    except errors.NotFound:
        return None
    return last if (now - last).total_seconds() > ctx.settings.outage_grace_seconds else None


def _record_run(ctx: Context, now) -> None:
    ctx.store.upsert("jobs", {"id": STATE_ID, "productId": STATE_PARTITION, "lastSweepAt": clock.format(now)})


def blocked_jobs(ctx: Context) -> int:
    """Re-check every blocked job: repairs an unblock a crash interrupted."""
    query = store.Query("jobs", None, (store.Filter("stage", "=", Stage.BLOCKED.value),), limit=200)
    released = 0
    for doc in list(store.query_all(ctx.store, query)):
        try:
            if deps.unblock_if_ready(ctx, doc["productId"], doc["id"])[1]:
                released += 1
        except errors.NotFound:
            continue
    return released


def rekeys(ctx: Context) -> int:
    """Finish any weight change whose re-keying a process did not complete."""
    query = store.Query("jobs", None, (store.Filter("rekeying", "=", True),), limit=100)
    return sum(registry.rekey(ctx, doc["productId"]) for doc in list(store.query_all(ctx.store, query)))


def run(ctx: Context) -> dict[str, int]:
    """Everything the `sweep_expired_leases` timer does, in order."""
    counts = expired_leases(ctx)
    counts["unblocked"] = blocked_jobs(ctx)
    counts["rekeyed"] = rekeys(ctx)
    counts["accrued"] = spend.replay_pending(ctx)
    counts["reservationsDropped"] = budgets.drop_stale_reservations(ctx) if ctx.settings.budgets else 0
    return counts
