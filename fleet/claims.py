"""Claiming: a factory takes the best queued job it can do, under a new fenced lease."""
from __future__ import annotations

import functools
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

from pydantic import Field, model_serializer

from fleet import (
    budget_rules,
    budgets,
    candidates,
    clock,
    effects,
    errors,
    factories,
    leases,
    liveness,
    preemption,
    queue_state,
    scoring,
    weight_registry,
    writes,
)
from fleet.context import Context
from fleet.jobs import Job, Lease, Model, Run
from fleet.schemas import ReleaseBody
from fleet.stages import ClaimReason, Priority, Stage

log = logging.getLogger("fleet.claims")

#: The most attempts a job may be given; bounds the claim's bucket path.
MAX_ATTEMPTS = 10
#: How often a claim re-reads the queue after losing the race for every candidate it saw.
RESCANS = 3
#: How many candidates too dear for the budget's remaining room a claim passes over before it
#: gives up with `budget_exceeded` (bounds the read when every queued job is too dear).
MAX_UNAFFORDABLE = 16
#: How many candidates estimated above the ceiling itself (that no room can ever fit) a claim
#: passes over besides, uncounted in `MAX_UNAFFORDABLE`: a few such jobs (an estimate gone
#: wrong) must not stop the product's claims for good, and the read stays bounded.
MAX_NEVER_FITTING = 256


@dataclass(frozen=True)
class ClaimRequest:
    factory_id: str
    product_id: str
    capabilities: list[str] | None = None
    weights: scoring.WeightsPatch | None = None
    seat_limit: int | None = None


class Claimed(Model):
    """`POST /fleet/claim` and `POST /fleet/jobs/{id}/claim`: a job with its new lease and run
    (`{job, lease, runId, preempted?}`), or no job and why (`{job: null, reason, preempted?}`)."""

    job: Job | None = None
    lease: Lease | None = None
    run_id: str | None = None
    #: Jobs of this factory evicted for a critical job (this one, or one the claim then lost
    #: to another factory): their leases are gone. Sent only when any were.
    preempted: list[str] = Field(default_factory=list)
    #: Why there is no job; sent only then.
    reason: ClaimReason | None = None

    @classmethod
    def taken(cls, job: Job, preempted: list[str] | None = None) -> "Claimed":
        return cls(job=job, lease=job.lease, run_id=job.latest_run.run_id, preempted=preempted or [])

    def having_evicted(self, evicted: list[str]) -> "Claimed":
        """This answer, naming also the jobs `evicted` for critical jobs the claim then lost
        (`EvictedThenLost`): the factory must stop their commands, whatever it got instead."""
        if not evicted:
            return self
        return self.model_copy(update={"preempted": list(dict.fromkeys([*evicted, *self.preempted]))})

    @model_serializer(mode="wrap")
    def _either_shape(self, handler):
        # Two shapes on the wire: a field that is not part of the shape is left out, not null.
        doc = handler(self)
        if self.job is None:
            nothing = {"job": None, "reason": doc["reason"]}
            return {**nothing, "preempted": doc["preempted"]} if self.preempted else nothing
        doc.pop("reason")
        if not self.preempted:
            doc.pop("preempted")
        return doc


def claim_next(ctx: Context, request: ClaimRequest) -> Claimed:
    """The best queued job of the product this factory can do, claimed; or none, with a reason.

    Budgets are checked first, with one point read and no job query. At its seat limit (with
    preemption on) a factory may only take a critical job, by evicting a lower-priority one.
    A principal claims only as a factory it speaks for, in a product it may enter (else
    `Forbidden`).

    Candidates are ranked from their heads (`candidates.Head`: a few fields a row), and the
    best is taken by its head (`_take_head`): one patch conditional on the ETag its head was
    read with, which the store answers with the whole job, so an ordinary claim is three store
    calls: the product's queue-state document (its weights' copy and capability sets, see
    `weight_registry.for_claim`; the weights document too while a weight change is under way),
    the candidate page, the take. A job changed since its head
    was read fails the condition and the claim falls through to the next best, so the pick is
    exactly a full scan's with the weights as read. At its seat limit a claim reads its pick
    whole (`_as_read`) before choosing a victim to preempt for it.

    With `claim_weights_seconds` set, an ordinary claim ranks with the weights as this process
    read them at most that long ago (`weight_registry.for_claim`): two calls. On the rank-key
    path every head read is checked against those weights, and a head keyed otherwise makes
    the claim read them and rank again; so the order is a full scan's except in the seconds
    after another process changed the weights, before the re-keying reaches the heads a claim
    reads (or, on the bucket path, before the snapshot ages out): such a claim ranks with the
    weights as they were and may take a different job than a full scan with the new ones
    would, never one that is not queued, that the factory cannot do, or that another holds,
    which the conditional write rules out whatever the weights. At the seat limit the weights
    are always read: the victim of a preemption is chosen with them too.
    """
    ctx.principal.act_as_factory(request.factory_id)
    ctx.principal.enter(request.product_id)
    now = ctx.clock.now()
    budget = _budget(ctx, request.product_id)
    refused = budget_rules.refusal(budget.rolled)
    if refused:
        return Claimed(reason=refused)
    offered, seat_limit, factory = _factory_view(ctx, request)
    running = _running_at_limit(ctx, request.factory_id, seat_limit, now, factory)
    within = ctx.settings.claim_weights_seconds if running is None else 0
    weighed = weight_registry.for_claim(ctx, request.product_id, within)
    product = weighed.snapshot
    scan = _Scan(request, now, offered, seat_limit, budget, factory, weighed.queue_state)
    evicted: list[str] = []  # victims of critical jobs this claim evicted for, then lost
    try:
        try:
            claimed = _claim_best(ctx, scan, running, product, not weighed.read_now, evicted)
        except _Unkeyed:
            fresh = weight_registry.snapshot(ctx, request.product_id)
            claimed = _claim_best(ctx, scan, running, fresh, False, evicted)
    except errors.FleetError as failed:
        if evicted:  # whatever ended the claim, the factory must stop its victims' commands
            _name_evicted(failed, evicted)
        raise
    if running is None and _over_seats(ctx, claimed, request.factory_id, seat_limit, factory):
        claimed = Claimed(reason=ClaimReason.SEAT_LIMIT)
    return claimed.having_evicted(evicted)


@dataclass(frozen=True)
class _Scan:
    """What one claim ranks and takes its candidates with, besides the weights."""

    request: ClaimRequest
    now: datetime
    offered: frozenset[str]
    seat_limit: int | None
    budget: _Budget
    #: The factory's document, read at most once, when seat counting needs it.
    factory: Callable[[], dict[str, Any] | None]
    #: The product's queue-state document if read with the weights (`ForClaim.queue_state`).
    queue_state: tuple[dict[str, Any] | None, ...] = ()


class _Unkeyed(Exception):
    """A head read on the rank-key path is not keyed with the weights the claim ranks with."""


def _claim_best(
    ctx: Context,
    scan: _Scan,
    running: list[Job] | None,
    product: weight_registry.Snapshot,
    checked: bool,
    evicted: list[str],
) -> Claimed:
    """The best candidate taken, falling through races lost. `checked`: the weights are a
    remembered snapshot, so raise `_Unkeyed` at the first head on the rank-key path that
    they did not key (for the caller to read them and rank again). A race lost after evicting
    a victim adds the victim's id to `evicted`, for the answer."""
    request, now, offered = scan.request, scan.now, scan.offered
    weights = scoring.resolve(product.patch, request.weights)
    score = candidates.scorer(now, weights, offered)
    if checked and running is None and _keyed_path(weights, product):
        score = _keyed_by(product.weights, score)
    claimable = _claimable(ctx, request.product_id, offered, scan.queue_state)
    unaffordable: set[str] = set()  # by id: a rescan meets the same jobs again
    never: set[str] = set()  # too dear for the ceiling itself: passed over, uncounted above
    # The jobs whose take the last scan lost to a change, with the lease epoch they had then.
    changed: dict[str, int] = {}
    churned = False  # a later scan found one of them queued still, never taken since
    for _ in range(RESCANS):
        if running is not None:
            # At the seat limit only critical work may be taken: read only its buckets.
            page = ctx.settings.claim_page
            critical = (Priority.CRITICAL,)
            streams = candidates.bucket_streams(
                request.product_id, now, weights, offered, page, MAX_ATTEMPTS, critical, claimable
            )
        else:
            streams = _streams(ctx, request.product_id, now, weights, product, offered, claimable)
        lost, lost_to_change = False, {}
        for candidate in candidates.ranked(ctx.store, streams, score):
            head = candidate.head
            churned = churned or changed.get(head.id, -1) == head.lease_epoch
            try:
                if running is None and head.etag:
                    return _take_head(ctx, head, request.factory_id, scan.budget)
                job = _as_read(ctx, head, offered)
                return _claim(ctx, job, request.factory_id, offered, running, scan.budget, product)
            except (errors.PreconditionFailed, errors.NotFound, errors.LeaseLost) as race:
                lost = True
                if isinstance(race, EvictedThenLost):
                    evicted.append(race.victim_id)
                if not isinstance(race, errors.NotFound):
                    lost_to_change[head.id] = head.lease_epoch
                if running is not None:
                    running = _running_at_limit(ctx, request.factory_id, scan.seat_limit, now, scan.factory)
            except RoomTaken:
                # Taken, then given back: the room the claim read is gone (to claims made
                # meanwhile). What it read of the budget is stale, so it looks no further; the
                # give-back moved the queue-state, so the factory looks again at once.
                return Claimed(reason=ClaimReason.BUDGET_EXCEEDED)
            except budget_rules.BudgetExhausted:
                # Too dear for what is left: a cheaper (or free) job may still fit.
                if _never_fits(head, scan.budget):
                    never.add(head.id)
                    if len(never) >= MAX_NEVER_FITTING:
                        return Claimed(reason=ClaimReason.BUDGET_EXCEEDED)
                    continue
                unaffordable.add(head.id)
                if len(unaffordable) >= MAX_UNAFFORDABLE:
                    return Claimed(reason=ClaimReason.BUDGET_EXCEEDED)
            except NoSeat:
                return Claimed(reason=ClaimReason.SEAT_LIMIT)
        if not lost:
            break
        changed = lost_to_change
    if unaffordable or never:
        return Claimed(reason=ClaimReason.BUDGET_EXCEEDED)
    if lost and churned:
        # Every scan lost its races, and a job lost in one was queued still in the next, at
        # the same lease epoch: its candidates are changing under it (a weight change re-keying
        # them), not being taken. (One taken and given back meanwhile is at a later epoch.)
        # "Nothing for you" would send the factory to wait for a new queue-state version while
        # work is there to take. (Races lost to other factories' takes end in no_job.)
        raise errors.TooManyRetries(f"product {request.product_id}: its candidates kept changing under this claim")
    return Claimed(reason=ClaimReason.SEAT_LIMIT if running is not None else ClaimReason.NO_JOB)


def _as_read(ctx: Context, head: candidates.Head, offered: frozenset[str]) -> Job:
    """The candidate's job, whole, with its ETag: what the claim's write and its answer need.
    `PreconditionFailed` (a race lost) if it changed since its head was read, or is no longer
    queued or within what the factory offers; `NotFound` if it is gone. Read through
    `writes.read`, which remembers the document, so that the claim's write patches it."""
    job = writes.read(ctx, head.id)
    if job.etag != head.etag or job.stage != Stage.QUEUED or not offered.issuperset(job.capabilities):
        raise errors.PreconditionFailed(f"job {job.id} changed since it was ranked")
    return job


def _keyed_by(keyed_with: scoring.Weights, score: candidates.Score) -> candidates.Score:
    """`score`, raising `_Unkeyed` for a head whose stored rank key `keyed_with` does not give
    (a job a writer has not re-keyed yet, or weights changed since they were read)."""

    def checked(head: candidates.Head) -> candidates.Candidate | None:
        if scoring.rank_key(head.priority.order, head.attempts, head.created_at, keyed_with) != head.rank_key:
            raise _Unkeyed()
        return score(head)

    return checked


def claim_job(ctx: Context, job_id: str, product_id: str, request: ClaimRequest) -> Claimed:
    """Claim one named job, if it is queued, the factory has its capabilities, the budget
    allows it and the factory has a seat for it (or may preempt for it); else `NotClaimable`
    with the `ClaimReason`."""
    ctx.principal.reach(product_id, f"no job {job_id!r}")
    ctx.principal.act_as_factory(request.factory_id)
    now = ctx.clock.now()
    budget = _budget(ctx, product_id)
    refused = budget_rules.refusal(budget.rolled)
    if refused:
        raise _not_claimable(f"product {product_id}: {refused.value}", refused)
    offered, seat_limit, factory = _factory_view(ctx, request)
    running = _running_at_limit(ctx, request.factory_id, seat_limit, now, factory)
    job = Job.from_doc(ctx.store.read("jobs", product_id, job_id))
    if job.stage != Stage.QUEUED:
        raise _not_claimable(f"job {job.id} is {job.stage.value}, not queued", ClaimReason.NOT_QUEUED)
    if job.waiting:
        at = clock.format(job.retry_at)
        raise _not_claimable(f"job {job.id} waits to retry until {at}", ClaimReason.RETRY_WAIT, retryAt=at)
    missing = sorted(set(job.capabilities) - offered)
    if missing:
        detail = f"factory {request.factory_id} lacks capabilities {missing}"
        raise _not_claimable(detail, ClaimReason.CAPABILITIES, missing=missing)
    product = weight_registry.snapshot(ctx, product_id) if running is not None else None
    try:
        claimed = _claim(ctx, job, request.factory_id, offered, running, budget, product)
        if running is None and _over_seats(ctx, claimed, request.factory_id, seat_limit, factory):
            raise NoSeat()
        return claimed
    except (errors.PreconditionFailed, errors.LeaseLost) as race:
        evicted = {"preempted": [race.victim_id]} if isinstance(race, EvictedThenLost) else {}
        raise _not_claimable(f"job {job.id} was claimed by another factory", ClaimReason.LOST_RACE, **evicted) from None
    except budget_rules.BudgetExhausted:
        reason = ClaimReason.BUDGET_EXCEEDED
        raise _not_claimable(f"product {product_id}: {reason.value}", reason) from None
    except NoSeat:
        raise _not_claimable(f"factory {request.factory_id} is at its seat limit", ClaimReason.SEAT_LIMIT) from None


def _not_claimable(detail: str, reason: ClaimReason, **extra: Any) -> errors.NotClaimable:
    return errors.NotClaimable(detail, reason=reason.value, **extra)


class NoSeat(Exception):
    """The factory is at its seat limit and nothing may be preempted for this job."""


def _claim(
    ctx: Context,
    job: Job,
    factory_id: str,
    offered: frozenset[str],
    running: list[Job] | None,
    budget: _Budget,
    product: weight_registry.Snapshot | None,
) -> Claimed:
    """Take `job`: choose a victim if the factory is at its seat limit (`NoSeat` if there is
    none), reserve the job's estimated cost (budgets on), evict the victim, then CAS the job.
    Nothing is evicted for a job the budget cannot start.
    `budget` and `product` (its product's weights) are what the claim read before."""
    now = ctx.clock.now()
    lease = _new_lease(ctx, job, factory_id, now)
    victim = None
    if running is not None:
        # Chosen (reads only) before anything is reserved: a claim with no one to evict holds
        # no room, not even for a moment, and refuses nobody else.
        known = {product.product_id: product} if product is not None else {}
        weights = preemption.weights_of(ctx, running, known)
        victim = preemption.select_preemption_victim(
            preemption.scored_running(ctx, running, offered, now, weights), job, now, ctx.settings.preempt_exempt_seconds
        )
        if victim is None:
            raise NoSeat()
    reserved = _reserve(ctx, job, lease, now, budget)
    evicted = None
    try:
        if victim is not None:
            preemption.evict(ctx, victim, job, weights[victim.product_id])
            evicted = victim
        taken = _take(ctx, job, lease, now, reserved, preempted=evicted)
    except (errors.PreconditionFailed, errors.NotFound, errors.LeaseLost) as lost:
        # Definitely not claimed: give the reservation back. (After an ambiguous failure such
        # as a timeout the claim may have landed; the sweep drops the reservation if not.)
        if reserved:
            _give_back(ctx, job.product_id, lease, now)
        if evicted is not None:
            raise EvictedThenLost(evicted.id, lost) from lost
        raise
    except errors.FleetError as failed:
        # Failed otherwise (a busy store, a timeout) after the eviction: the answer, an error,
        # names the victim still (`preempted` in the problem), so the factory stops its command.
        if evicted is not None:
            _name_evicted(failed, [evicted.id])
        raise
    return Claimed.taken(taken, [evicted.id] if evicted else [])


def _name_evicted(failed: errors.FleetError, evicted: list[str]) -> None:
    """Add `evicted` to the `preempted` the problem of `failed` names."""
    failed.extra["preempted"] = list(dict.fromkeys([*failed.extra.get("preempted", []), *evicted]))


class EvictedThenLost(errors.PreconditionFailed):
    """A critical job's take lost its race after the claim had evicted a victim for it. The
    eviction stands (evict first, then take: the freed seat is simply free), so whoever
    answers the claim tells the factory, which is still running the victim's command under a
    lease that is gone."""

    def __init__(self, victim_id: str, lost: errors.FleetError) -> None:
        super().__init__(lost.detail)
        self.victim_id = victim_id


def _take_head(ctx: Context, head: candidates.Head, factory_id: str, budget: _Budget) -> Claimed:
    """Take the job `head` ranks without reading it whole: one patch of what a claim changes
    (stage, lease, epoch, `updatedAt`, the new run and event appended), conditional on the ETag
    the head was read with, which the store answers with the job as it stands. Budgets on, a
    job too dear for the budget as the claim read it is refused first, with nothing written;
    its estimate is reserved after the take (`_reserve_taken`) while the room left is ample
    (`_ample`), else before it, as claims near the ceiling would otherwise take each other's
    room and give their jobs back (a give-back is a run and a queue-state bump no factory asked
    for). A job changed since its head was read (taken, requeued, its priority or capabilities
    changed) fails the condition: a race lost, as `PreconditionFailed` (or `NotFound`), which
    wrote nothing (or gave its reservation back, reserved first).

    A job document without its `runs` or `events` array (an older release's, a hand-written
    one: `Job.from_doc` reads them as empty) cannot take the appends, and the store refuses
    the patch whole (`ValueError`, nothing written). Such a job is read whole and taken by the
    ordinary write (`_take_as_read`), under the same lease and still conditional on the ETag
    its head was read with, so it is exactly as fenced as the patch: one more read, for a
    document that then has its arrays."""
    now = ctx.clock.now()
    seen = _as_seen(head)
    lease = _new_lease(ctx, seen, factory_id, now)
    amount = _estimate(ctx, seen, budget)
    reserving = _fits(budget, lease, amount, now)
    first = reserving and not _ample(budget, amount)
    if first:
        _reserve(ctx, seen, lease, now, budget)
    decided = _claimed(seen, _Taking(lease, reserving, None), now)
    try:
        try:
            written = writes.unread(ctx, head.id, head.etag, seen, decided, TAKEN_FIELDS, ("runs", "events"))
        except ValueError:
            taken = _take_as_read(ctx, head, lease, now, reserving)
        else:
            taken = effects.settle(ctx, written).job
    except (errors.PreconditionFailed, errors.NotFound):
        if first:
            _give_back(ctx, head.product_id, lease, now)
        raise
    if reserving and not first:
        _reserve_taken(ctx, taken, lease, now, budget)
    return Claimed.taken(taken)


#: A claim reserves after its take while the room left under the ceiling (as the claim read the
#: budget) holds at least this many of the job's estimate; with less, it reserves first.
AMPLE_ROOM = 4


def _ample(budget: _Budget, amount: float) -> bool:
    """Whether the room the claim read is ample for a reservation of `amount` after the take:
    so much that claims racing for it meanwhile will seldom leave too little (`AMPLE_ROOM`)."""
    rolled = budget.rolled
    if rolled is None or rolled.ceiling_usd is None:
        return True
    return rolled.ceiling_usd - rolled.spent_usd - rolled.reserved_usd >= AMPLE_ROOM * amount


def _fits(budget: _Budget, lease: Lease, amount: float, now: datetime) -> bool:
    """Whether the claim under `lease` is to reserve `amount` (its job's `_estimate`: none to
    reserve with budgets off or no estimate): `BudgetExhausted`, with nothing written, if it
    does not fit the budget as the claim read it."""
    if amount:
        budget_rules.reserve(budget.rolled, lease.lease_id, "", amount, now)
    return bool(amount)


class RoomTaken(budget_rules.BudgetExhausted):
    """The job was taken, and then its reservation no longer fit: claims taken meanwhile had
    reserved the room the claim read. The job was given back."""


def _reserve_taken(ctx: Context, job: Job, lease: Lease, now: datetime, budget: _Budget) -> None:
    """Reserve the estimate of `job`, just taken under `lease` (its run names the reservation).

    A claim reserves after it has won its job, not before: factories racing for the same head
    job then race on the job's document only, and the product's one budget document is written
    once a claim, by its winner (reserving first, each loser wrote it twice: its reservation,
    and its give-back). Should the reservation not fit any more (`RoomTaken`), or the store
    refuse it, the job is given back by its own release (attempts unchanged, the queue-state
    bumped) and the error raised: the claim holds no job it has not reserved for. Should that
    release fail too, the lease is left to expire, and the sweep requeues the job (counting an
    attempt, as for any expired lease).

    The trade: a budget store that fails writes while reads succeed now costs each failing
    claim a take and a give-back of its job, whose queue-state bump wakes idle factories to
    claim and fail likewise (each backs off for the 503's `Retry-After`), where a claim that
    reserved first failed before touching the job."""
    try:
        _reserve(ctx, job, lease, now, budget)
    except Exception as refused:  # whatever failed it (a FleetError, or a document it cannot read)
        try:
            leases.release(ctx, job.id, ReleaseBody(lease_id=lease.lease_id))
        except errors.FleetError:
            log.warning("claim %s: its reservation failed, and so did giving job %s back (unless only the"
                        " follow-ups failed); its lease will expire", lease.lease_id, job.id, exc_info=True)
        if isinstance(refused, budget_rules.BudgetExhausted):
            raise RoomTaken() from refused
        raise


def _take_as_read(ctx: Context, head: candidates.Head, lease: Lease, now: datetime, reserved: bool) -> Job:
    """Take the job `head` ranks by reading it whole and writing it as every job write does
    (`_take`: decided on the whole document, which may lack fields the patch assumed), under
    `lease`. `PreconditionFailed` if it is no longer stored at the ETag its head was read with,
    so the take is conditional on that ETag as the patch was."""
    job = writes.read(ctx, head.id)
    if job.etag != head.etag:
        raise errors.PreconditionFailed(f"job {job.id} changed since it was ranked")
    return _take(ctx, job, lease, now, reserved)


#: The top-level fields a claim sets (`_claimed`), besides the run and event it appends.
TAKEN_FIELDS = ("stage", "lease", "leaseEpoch", "updatedAt")


def _as_seen(head: candidates.Head) -> Job:
    """The queued job as its head shows it: what `_claimed` decides the claim's change on (the
    fields it writes are all the head's or new)."""
    at = clock.format(head.created_at)
    return Job.from_doc(
        {
            "id": head.id,
            "productId": head.product_id,
            "idempotencyKey": "",
            "priority": head.priority.value,
            "attempts": head.attempts,
            "capabilities": list(head.capabilities),
            "leaseEpoch": head.lease_epoch,
            "estimatedCostUsd": head.estimated_cost_usd,
            "rankKey": head.rank_key,
            "createdAt": at,
            "updatedAt": at,
            "_etag": head.etag,
        }
    )


def take(ctx: Context, job: Job, factory_id: str, now: datetime) -> Job:
    """CAS `job` (as read, with its ETag) from queued to assigned with a new lease and run.
    Raises `PreconditionFailed` if anyone changed it since it was read."""
    return _take(ctx, job, _new_lease(ctx, job, factory_id, now), now)


def _new_lease(ctx: Context, job: Job, factory_id: str, now: datetime) -> Lease:
    return Lease(
        lease_id=uuid.uuid4().hex,
        factory_id=factory_id,
        epoch=job.lease_epoch + 1,
        expires_at=now + timedelta(seconds=ctx.settings.lease_seconds),
    )


def _take(ctx: Context, job: Job, lease: Lease, now: datetime, reserved: bool = False, preempted: Job | None = None) -> Job:
    """`take` under a given lease. `reserved`: the claim holds a budget reservation under its
    lease id, recorded on the run. One attempt, on the job as the claim read it: a lost race
    raises `PreconditionFailed`, for the caller to fall through to its next candidate."""
    taking = _Taking(lease, reserved, preempted)
    return effects.change(ctx, job.id, _claimed, taking, current=job, now=now, retry=False, request=False).job


@dataclass(frozen=True)
class _Taking:
    """What a claim decides its job's new lease and run with."""

    lease: Lease
    reserved: bool
    preempted: Job | None


def _claimed(job: Job, taking: _Taking, now: datetime) -> Job:
    """The job assigned under the new lease, with a new run."""
    lease = taking.lease
    run = Run(
        run_id=f"{job.id}#{lease.epoch}",
        factory_id=lease.factory_id,
        started_at=now,
        reservation=lease.lease_id if taking.reserved else None,
    )
    claimed = (
        job.model_copy(update={"stage": Stage.ASSIGNED, "lease": lease, "lease_epoch": lease.epoch, "updated_at": now})
        .with_run(run)
        .with_event(now, "claimed", lease.factory_id, runId=run.run_id, epoch=lease.epoch)
    )
    if taking.preempted is not None:
        claimed = claimed.with_event(now, "preempted", lease.factory_id, victim=taking.preempted.id, preemptor=job.id)
    return claimed


@dataclass(frozen=True)
class _Budget:
    """The product's budget as the claim read it, once: the document (with its ETag, for the
    reservation's write) and the budget as of now. Both None with budgets off or no budget."""

    doc: dict[str, Any] | None
    rolled: budget_rules.Budget | None


def _budget(ctx: Context, product_id: str) -> _Budget:
    if not ctx.settings.budgets:
        return _Budget(None, None)
    doc = budgets.read(ctx, product_id)
    if doc is None:
        return _Budget(None, None)
    return _Budget(doc, budget_rules.rolled(budget_rules.Budget.from_doc(doc), ctx.clock.now()))


def _reserve(ctx: Context, job: Job, lease: Lease, now: datetime, budget: _Budget) -> bool:
    """Reserve the job's estimated cost (its own, else the budget's default estimate) under the
    claim's lease id (so a claim that loses the race releases only its own reservation); False
    when there is nothing to reserve."""
    amount = _estimate(ctx, job, budget)
    if not amount:
        return False
    run_id = f"{job.id}#{lease.epoch}"
    budgets.change(
        ctx,
        job.product_id,
        lambda b: budget_rules.reserve(b, lease.lease_id, run_id, amount, now),
        current=budget.doc,
    )
    return True


def _never_fits(head: candidates.Head, budget: _Budget) -> bool:
    """Whether the job's estimate is above the ceiling itself: no room made will ever fit it."""
    rolled = budget.rolled
    if rolled is None or rolled.ceiling_usd is None:
        return False
    return budget_rules.estimate(rolled, head.estimated_cost_usd) > rolled.ceiling_usd


def _estimate(ctx: Context, job: Job, budget: _Budget) -> float:
    """What a claim of `job` reserves: its estimate, else the budget's default (budgets on)."""
    return budget_rules.estimate(budget.rolled, job.estimated_cost_usd) if ctx.settings.budgets else 0.0


def _give_back(ctx: Context, product_id: str, lease: Lease, now: datetime) -> None:
    """Give back the reservation a claim that lost its race made under `lease`, and bump the
    product's queue-state: a claim refused meanwhile for the room it held may fit now, and an
    idle factory learns of that only from the version (as when an accrual or the sweep frees
    room). (A claim refused for a seat reserves nothing, so a full factory polling moves
    nothing.)

    Best effort: a store that refuses leaves the reservation to the sweep (it drops one older
    than a lease term whose run never started), and the claim goes on, so that what it must
    still answer (the next candidate, an eviction it made) is not lost to a 503."""
    try:
        budgets.change(ctx, product_id, lambda b: budget_rules.release(b, lease.lease_id, now), create=False)
        queue_state.bump(ctx, product_id)
    except (errors.StoreBusy, errors.StoreUnavailable, errors.TooManyRetries):
        log.warning("claim %s: its reservation in product %s is left to the sweep", lease.lease_id, product_id, exc_info=True)


def _over_seats(
    ctx: Context, claimed: Claimed, factory_id: str, seat_limit: int | None, factory: Callable[[], dict[str, Any]]
) -> bool:
    """Whether the job `claimed` took below the seat limit put the factory over it, and was
    given back. Claims of one factory racing each other (a client's retry, two processes under
    one id, a scaled-out app) each counted its seats before taking; counting again after the
    take, whichever counts last sees every take made before its own count (on one store that
    shows every committed write to a query: SQLite, or Cosmos within one instance's session),
    so the factory keeps at most `seat_limit` (two that both see too many both give theirs
    back: a seat idle until the next poll, never one too many). One more query a claim, only
    with preemption on and a seat limit known. The give-back is the factory's own release
    (attempts unchanged, the budget's reservation given back, the queue-state bumped); should
    it fail, the claim stands as taken, one over, rather than strand a lease nobody renews,
    unless the lease was taken meanwhile (evicted by the factory's own critical claim)."""
    if claimed.job is None or not ctx.settings.preemption or seat_limit is None:
        return False
    others = [j for j in _live_held(ctx, factory_id, ctx.clock.now(), factory) if j.id != claimed.job.id]
    if len(others) + 1 <= seat_limit:
        return False
    try:
        leases.release(ctx, claimed.job.id, ReleaseBody(lease_id=claimed.lease.lease_id))
    except errors.LeaseLost:
        return True  # taken from it meanwhile (a critical job of its own evicted it): not its job either way
    except errors.FleetError:
        log.warning("claim %s: over factory %s's seat limit, and its give-back failed; it stands",
                    claimed.lease.lease_id, factory_id, exc_info=True)
        return False
    return True


def _factory_view(
    ctx: Context, request: ClaimRequest
) -> tuple[frozenset[str], int | None, Callable[[], dict[str, Any]]]:
    """The factory's capabilities and seat limit (the claim's, else its last heartbeat's), and
    its document for lease liveness: read here only if the first two need it, else once, when
    first asked for (`_running_at_limit`, for a lease past its own expiry)."""
    needs_doc = request.capabilities is None or (ctx.settings.preemption and request.seat_limit is None)
    factory = functools.cache(lambda: factories.find(ctx, request.factory_id) or {})
    doc = factory() if needs_doc else {}
    offered = request.capabilities if request.capabilities is not None else doc.get("capabilities", [])
    seat_limit = request.seat_limit if request.seat_limit is not None else doc.get("seatLimit")
    return frozenset(offered), seat_limit, factory


def _running_at_limit(
    ctx: Context, factory_id: str, seat_limit: int | None, now: datetime, factory: Callable[[], dict[str, Any]]
) -> list[Job] | None:
    """The factory's running jobs (`_live_held`) if preemption is on and it is at its seat
    limit, else None."""
    if not ctx.settings.preemption or seat_limit is None:
        return None
    running = _live_held(ctx, factory_id, now, factory)
    return running if len(running) >= seat_limit else None


def _live_held(ctx: Context, factory_id: str, now: datetime, factory: Callable[[], dict[str, Any]]) -> list[Job]:
    """The jobs the factory holds under a live lease (`fleet.liveness`), reading its document
    `factory()` only if some lease's own expiry has passed."""
    held = [j for j in factories.held_leases(ctx, factory_id) if j.lease]
    doc = factory() if any(j.lease.expires_at <= now for j in held) else None
    return [j for j in held if liveness.live(j.lease, doc, now)]


def _streams(
    ctx: Context,
    product_id: str,
    now: datetime,
    weights: scoring.Weights,
    product: weight_registry.Snapshot,
    offered: frozenset[str],
    claimable: candidates.Claimable,
) -> list[candidates.Stream]:
    """The fast rank-key stream while the stored keys order like `weights`; else one stream
    per (priority, attempts) bucket (a request override of age/priority/retries, or a weight
    change still re-keying). The rank-key stream's one page of the whole queue is the short
    `claim_first_page`: what it does not settle, the capability-set streams read on."""
    page = ctx.settings.claim_page
    if _keyed_path(weights, product):
        first = min(ctx.settings.claim_first_page, page)
        return [candidates.rank_stream(product_id, now, weights, offered, first, claimable, page)]
    return candidates.bucket_streams(
        product_id, now, weights, offered, max(4, page // 4), MAX_ATTEMPTS, claimable=claimable
    )


def _keyed_path(weights: scoring.Weights, product: weight_registry.Snapshot) -> bool:
    """Whether the stored rank keys order queued jobs as `weights` do."""
    return scoring.orders_like(weights, product.weights) and not product.rekeying


def _claimable(
    ctx: Context, product_id: str, offered: frozenset[str], read: tuple[dict[str, Any] | None, ...]
) -> candidates.Claimable:
    """The capability sets of the product's queue the factory can do, from the queue-state
    document: as `read` with the weights, else read once per claim and only if a first page did
    not settle it."""
    known: list[list[str] | None] = []

    def claimable() -> list[str] | None:
        if not known:
            doc = read[0] if read else queue_state.read_doc(ctx, product_id)
            known.append(queue_state.claimable_sets(doc, offered))
        return known[0]

    return claimable
