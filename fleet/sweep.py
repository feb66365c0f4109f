"""The sweeps a timer runs: what keeps the fleet live when factories or processes die.

Correctness never depends on them running on time — a write naming an expired lease is fenced
anyway — but liveness does: expired work goes back to the queue only here, and follow-up
writes a crash interrupted (queue-state bumps, unblocking dependents, accruals, re-keying) are
finished here. Every change is a conditional write that re-decides on the current document, so
a job finished after the sweep read it is never clobbered. One job that keeps failing is
logged and passed over: it never stops the sweep for the rest of the fleet.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable

from fleet import budgets, capability_sets, clock, effects, lifecycle, outage, queue_state, spend, store, weight_registry
from fleet.batch import each
from fleet.context import Context, Settings
from fleet.jobs import Job, cap_key
from fleet.stages import FINISHED, RunResult, Stage

log = logging.getLogger("fleet.sweep")

#: How far before the last sweep the repair step looks back for changes it may have to finish.
REPAIR_MARGIN = timedelta(minutes=5)


def run(ctx: Context) -> dict[str, int]:
    """Everything the `sweep_expired_leases` timer does, in order. Each step is isolated: one
    that fails is logged and the others still run."""
    stored = outage.read_doc(ctx)  # read once: the leases step decides with it, then stamps it
    record = outage.Record.from_doc(stored or {})
    last = record.last_sweep_at
    repair_from = None if last is None else last - REPAIR_MARGIN
    steps: list[tuple[str, Callable[[], dict[str, int]]]] = [
        ("leases", lambda: _expired_leases(ctx, record, stored)),
        ("unblocked", lambda: {"unblocked": blocked_jobs(ctx, repair_from)}),
        ("bumped", lambda: {"bumped": queue_versions(ctx, repair_from)}),
        ("rekeyed", lambda: {"rekeyed": rekeys(ctx)}),
        ("capabilitySets", lambda: capability_sets.sweep(ctx)),
        ("accrued", lambda: {"accrued": spend.replay_pending(ctx)}),
        ("reservations", lambda: {"reservationsDropped": budgets.drop_stale_reservations(ctx) if ctx.settings.budgets else 0}),
    ]
    counts: dict[str, int] = {}
    for name, step in steps:
        try:
            counts.update(step())
        except Exception:  # noqa: BLE001 - a sweep step must never stop the others
            log.exception("sweep step %s failed", name)
            counts[f"{name}Failed"] = 1
    return counts


def expired_leases(ctx: Context) -> dict[str, int]:
    """Every job whose lease has expired: back to the queue with an attempt more, or
    `dead_letter` at `maxAttempts`.

    Outage grace (`fleet.outage`): a lease that expired in an outage gap — one a process
    recorded, or the one a stale stamp shows now (the sweep itself had not run for longer than
    `outage_grace_seconds`) — is extended until one lease term after the gap ended and marked
    `spared`, instead of expired, so an outage never causes a mass expiry. If its holder does
    not renew it by then, a later sweep expires it as usual. The gap a stale stamp shows is
    recorded at the end, with the sweep's own stamp.
    """
    stored = outage.read_doc(ctx)
    return _expired_leases(ctx, outage.Record.from_doc(stored or {}), stored)


@dataclass(frozen=True)
class _Expiry:
    """What expiring one job decides with: the outage record (a lease that expired in one of
    its gaps is spared), the product's weights (the retried job's rank key), the settings."""

    record: outage.Record
    weights: weight_registry.Snapshot
    settings: Settings


def _expired_leases(ctx: Context, record: outage.Record, stored: dict[str, Any] | None) -> dict[str, int]:
    """`expired_leases`, given the outage record as the sweep read it (`stored`: its document)."""
    now = ctx.clock.now()
    query = store.Query(
        "jobs",
        None,
        (store.Filter("lease.expiresAt", "<", clock.format(now)),),
        (("lease.expiresAt", False),),
        limit=200,
    )
    counts = {"expired": 0, "deadLettered": 0, "spared": 0}
    weights: dict[str, weight_registry.Snapshot] = {}  # read once per product this sweep

    def expire(doc: dict[str, Any]) -> None:
        if doc["productId"] not in weights:
            weights[doc["productId"]] = weight_registry.snapshot(ctx, doc["productId"])
        facts = _Expiry(record, weights[doc["productId"]], ctx.settings)
        written = effects.change(
            ctx, doc["id"], _expired, facts, current=Job.from_doc(doc), now=now, request=False, keyed_with=facts.weights
        )
        if not written.wrote:
            return  # renewed or finished since the query read it
        if written.job.lease is not None and written.job.lease.spared:
            counts["spared"] += 1
        else:
            counts["deadLettered" if written.job.stage == Stage.DEAD_LETTER else "expired"] += 1

    counts["failed"] = each(store.query_all(ctx.store, query), expire)
    outage.record_sweep(ctx, now, stored, read=True)  # even if some jobs failed: the sweep itself is running
    return counts


def _expired(job: Job, facts: _Expiry, now: datetime) -> Job | None:
    if job.lease is None or job.lease.expires_at > now:
        return None  # renewed or finished since we read it
    until = outage.grace_until(facts.record, job.lease, now, facts.settings)
    if until is not None:
        lease = job.lease.model_copy(update={"expires_at": until, "spared": True})
        return job.model_copy(update={"lease": lease}).with_event(now, "lease_spared", reason="outage")
    return lifecycle.retried(job, now, facts.weights.weights, RunResult.EXPIRED).with_event(
        now, "lease_expired", job.lease.factory_id
    )


def blocked_jobs(ctx: Context, since: datetime | None = None) -> int:
    """Finish unblocking that a crash interrupted, for jobs changed since `since` (None: every
    job, as on the first sweep ever): re-check the blocked jobs written since (a submit that
    died before its re-check), and release the dependents of the jobs finished since (a
    finishing write that died before releasing them). Returns how many this call unblocked."""
    unblocked = 0

    def unblock(doc: dict[str, Any]) -> None:
        nonlocal unblocked
        if effects.recheck(ctx, doc["id"], Job.from_doc(doc)).entered(Stage.QUEUED):
            unblocked += 1

    each(changed(ctx, Stage.BLOCKED, since), unblock)
    for stage in FINISHED:
        each(changed(ctx, stage, since), lambda doc: effects.release_dependents(ctx, Job.from_doc(doc)))
    return unblocked


def queue_versions(ctx: Context, since: datetime | None = None) -> int:
    """Bump the queue-state of every product with a job queued since `since` that is newer
    than the product's version, or whose capability set it does not register (a bump a crash
    or a throttled store lost), registering those sets. Returns how many products."""
    newest: dict[str, str] = {}
    keys: dict[str, set[str]] = {}
    for doc in changed(ctx, Stage.QUEUED, since):
        newest[doc["productId"]] = max(doc["updatedAt"], newest.get(doc["productId"], ""))
        keys.setdefault(doc["productId"], set()).add(cap_key(doc.get("capabilities") or []))
    bumped = 0

    def bump_if_behind(item: tuple[str, str]) -> None:
        nonlocal bumped
        product_id, latest = item
        doc = queue_state.read_doc(ctx, product_id) or {}
        missing = keys[product_id] - set(queue_state.cap_sets(doc))
        if doc.get("updatedAt", "") < latest or missing:
            queue_state.bump(ctx, product_id, missing)
            bumped += 1

    each(list(newest.items()), bump_if_behind)
    return bumped


def changed(ctx: Context, stage: Stage, since: datetime | None) -> Iterable[dict[str, Any]]:
    """Jobs in `stage` written at or after `since` (all of them for None), oldest first."""
    where = [store.Filter("stage", "=", stage.value)]
    if since is not None:
        where.append(store.Filter("updatedAt", ">=", clock.format(since)))
    return list(store.query_all(ctx.store, store.Query("jobs", None, tuple(where), (("updatedAt", False),), limit=200)))


def rekeys(ctx: Context) -> int:
    """Finish any weight change whose re-keying a process did not complete."""
    query = store.Query("jobs", None, (store.Filter("rekeying", "=", True),), limit=100)
    rekeyed = 0

    def finish(doc: dict[str, Any]) -> None:
        nonlocal rekeyed
        rekeyed += weight_registry.rekey(ctx, doc["productId"])

    each(store.query_all(ctx.store, query), finish)
    return rekeyed
