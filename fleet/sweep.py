"""The sweeps a timer runs: what keeps the fleet live when factories or processes die.

Correctness never depends on them running on time — a write naming an expired lease is fenced
anyway — but liveness does: expired work goes back to the queue only here (a lease expires at
its effective expiry, `fleet.liveness`: the later of the job's own `lease.expiresAt` and its
factory's `leaseUntil`, the factory's only while its last heartbeat listed the lease), and follow-up
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

from fleet import budgets, capability_sets, clock, effects, lifecycle, liveness, outage, queue_state, spend, store, weight_registry
from fleet.batch import each
from fleet.context import Context, Settings
from fleet.jobs import Job, cap_key
from fleet.stages import FINISHED, RunResult, Stage

log = logging.getLogger("fleet.sweep")

#: How far before the last sweep the repair step looks back for changes it may have to finish.
REPAIR_MARGIN = timedelta(minutes=5)
#: How many jobs whose retry wait has passed a page of `due_retries` reads.
DUE_PAGE = 200


def run(ctx: Context) -> dict[str, int]:
    """Everything the `sweep_expired_leases` timer does, in order. Each step is isolated: one
    that fails is logged and the others still run."""
    stored = outage.read_doc(ctx)  # read once: the leases step decides with it, then stamps it
    record = outage.Record.from_doc(stored or {})
    last = record.last_sweep_at
    repair_from = None if last is None else last - REPAIR_MARGIN
    steps: list[tuple[str, Callable[[], dict[str, int]]]] = [
        ("leases", lambda: _expired_leases(ctx, record, stored)),
        ("retries", lambda: {"retriesDue": due_retries(ctx)}),
        ("unblocked", lambda: {"unblocked": blocked_jobs(ctx, repair_from)}),
        ("bumped", lambda: {"bumped": queue_versions(ctx, repair_from)}),
        ("rekeyed", lambda: {"rekeyed": rekeys(ctx)}),
        ("claimWeights", lambda: {"claimWeightsStamped": weight_registry.restamp(ctx)}),
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
    """Every job whose lease has ended: back to the queue with an attempt more, or
    `dead_letter` at `maxAttempts`.

    A lease ends at its effective expiry (`fleet.liveness`): the job's own expiry, or later,
    its factory's `leaseUntil` while the factory's heartbeats list it. The jobs whose own
    expiry has passed are read in one query projected to their leases, so the many whose
    factory keeps them alive cost a few hundred bytes each; each factory's document is read
    once per sweep, when a job of that factory first needs it (after the query, so a
    heartbeat that landed meanwhile counts), and a job live by the rule is left without a job
    read. The others are read again and decided on the job as it is now, with the factory
    document as a fact: a write that refreshed the lease, a release or a requeue since the
    query all keep the sweep from touching it.

    Why a factory document read a moment before the job's write may be stale and that is
    still safe: a heartbeat renews only a lease live by the factory's document before it, and
    the sweep expires only a lease that is not live at the sweep's `now` by a document it read
    after `now`. A heartbeat it misses therefore decided before the sweep's `now`, on a lease
    that ended by then: the holder heartbeat in the last instant of a term (it is due every
    third of one). Expiring it is what would have happened a moment later; and it is only a
    lost lease, never two holders, for the job's document names the current lease and every
    change of it is conditional: the holder's next write is `lease_lost` and its next
    heartbeat answers `revoked`.

    Outage grace (`fleet.outage`): a lease whose effective expiry fell in an outage gap — one
    a process recorded, or the one a stale stamp shows now (the sweep itself had not run for
    longer than `outage_grace_seconds`) — is extended until one lease term after the gap ended
    and marked `spared`, instead of expired, so an outage never causes a mass expiry. If its
    holder does not renew it by then, a later sweep expires it as usual. The gap a stale stamp
    shows is recorded at the end, with the sweep's own stamp.
    """
    stored = outage.read_doc(ctx)
    return _expired_leases(ctx, outage.Record.from_doc(stored or {}), stored)


@dataclass(frozen=True)
class _Expiry:
    """What expiring one job decides with: the outage record (a lease whose effective expiry
    fell in one of its gaps is spared), the holder's factory document as this sweep read it
    (its heartbeat may keep the lease live), the product's weights (the retried job's rank
    key), the settings."""

    record: outage.Record
    factory: dict[str, Any] | None
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
        fields=liveness.LEASE_FIELDS,
    )
    counts = {"expired": 0, "deadLettered": 0, "spared": 0}
    weights: dict[str, weight_registry.Snapshot] = {}  # read once per product this sweep
    factories: dict[str, dict[str, Any] | None] = {}  # read once per factory this sweep

    def expire(doc: dict[str, Any]) -> None:
        held = liveness.Held.from_doc(doc.get("lease"))
        if held is None:
            return
        if held.factory_id not in factories:
            factories[held.factory_id] = liveness.read_factory(ctx, held.factory_id)
        factory = factories[held.factory_id]
        if liveness.live(held, factory, now):
            return  # its factory's heartbeats keep it
        if doc["productId"] not in weights:
            weights[doc["productId"]] = weight_registry.snapshot(ctx, doc["productId"])
        facts = _Expiry(record, factory, weights[doc["productId"]], ctx.settings)
        written = effects.change(ctx, doc["id"], _expired, facts, now=now, request=False, keyed_with=facts.weights)
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
    """The job with its lease expired (requeued or dead-lettered), or spared for an outage;
    None if its lease is live by `fleet.liveness` (refreshed, or kept by its factory's
    heartbeat) or gone (finished, released, requeued) since the sweep's query."""
    lease = job.lease
    if lease is None or liveness.live(lease, facts.factory, now):
        return None
    until = outage.grace_until(facts.record, liveness.effective(lease, facts.factory), now, facts.settings)
    if until is not None:
        spared = lease.model_copy(update={"expires_at": until, "spared": True})
        return job.model_copy(update={"lease": spared}).with_event(now, "lease_spared", reason="outage")
    expired = job.with_event(now, "lease_expired", lease.factory_id)  # then the retry it makes
    return lifecycle.retried(expired, now, facts.weights.weights, RunResult.EXPIRED, lease.factory_id)


def due_retries(ctx: Context) -> int:
    """Move every job whose retry wait has passed (`retryAt`) back to the claimable queue.
    The write enters the queue as any requeue does: the product's queue-state is bumped, so
    idle factories gated on its version look again, and the rank key is checked. A job an
    operator requeued, cancelled or shipped meanwhile is left as it is. Returns how many."""
    now = ctx.clock.now()
    due = store.Query(
        "jobs", None, (store.Filter("retryAt", "<=", clock.format(now)),), (("retryAt", False),),
        limit=DUE_PAGE, fields=("productId",),
    )
    moved = 0

    def move(doc: dict[str, Any]) -> None:
        nonlocal moved
        if effects.change(ctx, doc["id"], _moved_back, request=False).wrote:
            moved += 1

    each(list(store.query_all(ctx.store, due)), move)
    return moved


def _moved_back(job: Job, facts: None, now: datetime) -> Job | None:
    return lifecycle.moved_back(job, now)


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
        if doc.get("retryAt"):
            continue  # waiting to retry: its move back bumps
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
