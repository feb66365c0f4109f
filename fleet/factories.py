"""Factories: registration by heartbeat, lease renewal, health and seats.

A factory's document (`factories` container, id = factory id) is written by its heartbeats
only: what it serves (`products`, `capabilities`, `seatLimit`), `firstSeenAt`,
`lastHeartbeatAt`, and its lease liveness: `leaseUntil` (one lease term after its last
heartbeat) and `leases` (the ids of the leases that heartbeat renewed). A job's lease L held by
factory F is live at `now` iff the job's own `lease.expiresAt > now`, or F's document has
`leaseUntil > now` and lists L; its effective expiry is the later of the two
(`fleet.liveness`, the one place that decides it: fenced writes, the sweep, seat counts and
preemption all ask it). Heartbeats write it conditionally, so that one landing after a later
one of the same factory never moves its liveness back (`heartbeat`).
"""
from __future__ import annotations

import functools
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Callable

from pydantic import Field

from fleet import activity, clock, errors, liveness, outage, store
from fleet.context import Context, Settings
from fleet.jobs import Job, Model, Time, product_of

#: Heartbeat age up to which a factory is `online`, then `stale`; past `STALE` it is `offline`.
ONLINE_SECONDS = 60
STALE_SECONDS = 300


class FactoryHealth(str, Enum):
    """How recently a factory was heard from."""

    ONLINE = "online"  # a heartbeat within the last ONLINE_SECONDS
    STALE = "stale"  # silent for a while (up to STALE_SECONDS): slow, or on its way out
    OFFLINE = "offline"  # silent for longer, or never heard from


class Renewal(str, Enum):
    """A heartbeat's answer about one lease the factory says it runs."""

    RENEWED = "renewed"  # still the job's live lease, extended by a lease term: keep working
    REVOKED = "revoked"  # not (or no longer) the factory's lease: stop that work now, write nothing


class Factory(Model):
    """One factory as `GET /fleet/factories` lists it."""

    id: str
    products: list[str] = Field(default_factory=list)
    capabilities: list[str] = Field(default_factory=list)
    seat_limit: int | None = None
    #: Live leases it holds now.
    seats_used: int = 0
    last_heartbeat_at: Time | None = None
    health: FactoryHealth = FactoryHealth.OFFLINE


class FactoryList(Model):
    """`GET /fleet/factories`."""

    items: list[Factory] = Field(default_factory=list)


class LeaseRenewal(Model):
    job_id: str
    lease_id: str
    status: Renewal
    #: The lease's new expiry; None when revoked.
    expires_at: Time | None = None

    @property
    def revoked(self) -> bool:
        return self.status == Renewal.REVOKED


class Heartbeat(Model):
    """`POST /fleet/factories/{id}/heartbeat`: the answer for each lease the factory named."""

    factory_id: str
    leases: list[LeaseRenewal] = Field(default_factory=list)


def find(ctx: Context, factory_id: str) -> dict[str, Any] | None:
    return liveness.read_factory(ctx, factory_id)


#: How many times a heartbeat writes its factory's document: once, and again after each race
#: lost to another heartbeat of the factory (a re-read and a fresh decision each time).
HEARTBEAT_ATTEMPTS = 4


def heartbeat(
    ctx: Context,
    factory_id: str,
    products: list[str],
    capabilities: list[str],
    seat_limit: int | None,
    running: list[tuple[str, str]],
) -> Heartbeat:
    """Record the factory's registration and renew each `(jobId, leaseId)` it says it runs,
    answering per lease `renewed` (with the new expiry) or `revoked` (stop that work now).
    `Forbidden` unless the principal speaks for the factory and may enter every product named.

    The renewal is the factory document's (see `fleet.liveness`): `leaseUntil` one lease term
    from now and `leases` the ids renewed, written in the heartbeat's one write. No job
    document is written, so a heartbeat costs at most three store calls whatever it names: the
    factory's document (point read), the factory's leases (one query, projected to the lease),
    the write; and the outage record (a point read) only when a named lease is past its
    effective expiry. A lease is renewed if the job's current lease is still that one, held by
    this factory, and live by the rule on the factory document as it was before this heartbeat
    (or held for an outage, `outage.grace_until` on its effective expiry): a heartbeat keeps a
    live lease alive and never brings back one that has ended.

    The write is conditional (`_write_liveness`): a replace on the ETag of the document read,
    or a create when there was none, and a race lost to another heartbeat of the factory
    re-reads and decides again, at most `HEARTBEAT_ATTEMPTS` times in all (then
    `TooManyRetries`, a 503 worth retrying). Two heartbeats of one factory can land out of
    order (one delayed in a proxy, a paused instance): a last writer winning would let the
    older one move `leaseUntil` back and drop the leases the newer one listed, so the sweep
    could end live work and the next heartbeat answer `revoked` for a lease still running. So
    a heartbeat older than the one stored (its `lastHeartbeatAt` later than this `now`) never
    moves `leaseUntil` back nor drops a stored lease: it only adds the leases it renewed, and
    writes nothing when they are listed already.
    """
    ctx.principal.act_as_factory(factory_id)
    for product_id in products:
        ctx.principal.enter(product_id)
    now = ctx.clock.now()
    previous = find(ctx, factory_id)
    held = _held_by(ctx, factory_id) if running else {}
    outages = functools.cache(lambda: outage.read(ctx))  # once, for a lease past its effective expiry

    until = now + timedelta(seconds=ctx.settings.lease_seconds)
    for attempt in range(HEARTBEAT_ATTEMPTS):
        if attempt:
            # Another heartbeat of this factory wrote first: decide again on what it wrote.
            store.backoff(attempt - 1, ctx.clock.sleep)
            previous = find(ctx, factory_id)
        before = previous or {}
        answers = [
            LeaseRenewal(job_id=job_id, lease_id=lease_id, status=Renewal.RENEWED, expires_at=until)
            if renewed(held.get(job_id), lease_id, before, now, outages, ctx.settings)
            else LeaseRenewal(job_id=job_id, lease_id=lease_id, status=Renewal.REVOKED)
            for job_id, lease_id in running
        ]
        doc = _liveness_doc(before, factory_id, products, capabilities, seat_limit, now, until, answers)
        try:
            if doc is not None:
                _write_liveness(ctx, previous, doc)
        except (errors.PreconditionFailed, errors.Conflict, errors.NotFound):
            continue
        if doc is not None and _registration(before) != _registration(doc):
            activity.touch(ctx)  # a new factory, or one that changed what it serves
        return Heartbeat(factory_id=factory_id, leases=answers)
    raise errors.TooManyRetries(f"factory {factory_id}: its document kept changing under this heartbeat")


def _liveness_doc(
    stored: dict[str, Any],
    factory_id: str,
    products: list[str],
    capabilities: list[str],
    seat_limit: int | None,
    now: datetime,
    until: datetime,
    answers: list[LeaseRenewal],
) -> dict[str, Any] | None:
    """The factory document this heartbeat writes over `stored` (`{}`: none yet), or None if
    there is nothing to write. A heartbeat at least as recent as the stored one writes its own
    registration and liveness. One older than it (a late arrival) keeps what the later one
    wrote (registration, `lastHeartbeatAt`, the later `leaseUntil`, its `leases`) and only adds
    the leases it renewed itself, so that what it answered `renewed` stays true; None when the
    stored document lists them all already."""
    renewed_ids = list(dict.fromkeys(liveness.listed(a.lease_id) for a in answers if not a.revoked))
    first_seen = stored.get("firstSeenAt") or clock.format(now)
    last = stored.get("lastHeartbeatAt")
    if last and clock.parse(last) > now:
        listed = list(stored.get("leases") or [])
        added = [lease for lease in renewed_ids if lease not in listed]
        stored_until = stored.get("leaseUntil")
        later = clock.format(until) if not stored_until or clock.parse(stored_until) < until else stored_until
        if not added and later == stored_until:
            return None
        return {**store.clean(stored), "leaseUntil": later, "leases": listed + added, "firstSeenAt": first_seen}
    return {
        "id": factory_id,
        "products": products,
        "capabilities": capabilities,
        "seatLimit": seat_limit,
        "firstSeenAt": first_seen,
        "lastHeartbeatAt": clock.format(now),
        "leaseUntil": clock.format(until),
        "leases": renewed_ids,
    }


def _write_liveness(ctx: Context, previous: dict[str, Any] | None, doc: dict[str, Any]) -> None:
    """Write the factory's document if it is still as `previous` was read: a replace on its
    ETag, or a create when there was none. A race lost raises `PreconditionFailed` (another
    heartbeat replaced it), `Conflict` (another created it) or `NotFound` (it is gone)."""
    if previous is None:
        ctx.store.create("factories", doc)
    else:
        ctx.store.replace("factories", doc, previous["_etag"])


def _registration(doc: dict[str, Any]) -> list[Any]:
    """What a factory says it serves, as its document has it."""
    return [doc.get(k) for k in ("products", "capabilities", "seatLimit")]


def renewed(
    held: liveness.Held | None,
    lease_id: str,
    factory_doc: dict[str, Any],
    now: datetime,
    outages: Callable[[], outage.Record],
    settings: Settings,
) -> bool:
    """Whether a heartbeat renews `lease_id`, given `held`, the current lease of the job it
    names (None: no such job, none of this factory's, or not the principal's to see), and the
    factory's document before this heartbeat. `outages()` reads the outage record, asked for
    only for the job's current lease once it is past its effective expiry."""
    if held is None or held.lease_id != lease_id:
        return False
    if liveness.live(held, factory_doc, now):
        return True
    return outage.grace_until(outages(), liveness.effective(held, factory_doc), now, settings) is not None


def _held_by(ctx: Context, factory_id: str) -> dict[str, liveness.Held]:
    """The factory's current leases by job id, of the products the principal sees: one query,
    projected to what liveness needs of the lease (not its holder, which the filter names; in
    no order, which would send the ordering field with every row)."""
    where = (store.Filter("lease.factoryId", "=", factory_id),)
    query = store.Query("jobs", None, where, limit=500, fields=liveness.ONE_FACTORYS_LEASE_FIELDS)
    held: dict[str, liveness.Held] = {}
    for doc in store.query_all(ctx.store, query):
        lease = liveness.Held.from_doc(doc.get("lease"), factory_id)
        if lease is not None and ctx.principal.sees(product_of(doc["id"])):
            held[doc["id"]] = lease
    return held


def held_leases(ctx: Context, factory_id: str | None = None) -> list[Job]:
    """Jobs holding a live-or-unswept lease, of one factory or of all (a cross-partition read
    whose size is the number of running jobs, not of jobs)."""
    where = (store.Filter("lease.factoryId", "=", factory_id),) if factory_id else (
        store.Filter("lease.factoryId", "!=", None),
    )
    query = store.Query("jobs", None, where, (("lease.factoryId", False),), limit=500)
    return [Job.from_doc(doc) for doc in store.query_all(ctx.store, query)]


def health(last_heartbeat_at: str | None, now: datetime) -> FactoryHealth:
    if not last_heartbeat_at:
        return FactoryHealth.OFFLINE
    age = (now - clock.parse(last_heartbeat_at)).total_seconds()
    if age <= ONLINE_SECONDS:
        return FactoryHealth.ONLINE
    return FactoryHealth.STALE if age <= STALE_SECONDS else FactoryHealth.OFFLINE


def list_all(ctx: Context) -> FactoryList:
    """Every factory with its health and seats: used (leases live by `fleet.liveness`, decided
    with the factory documents listed here) over its limit. A principal limited to some
    products sees only the factories serving one of them, and of what they serve only those
    products (their seats used count every lease: a seat is the factory's, whatever it runs)."""
    now = ctx.clock.now()
    docs = list(store.query_all(ctx.store, store.Query("factories", None, order_by=(("id", False),), limit=500)))
    by_id = {doc["id"]: doc for doc in docs}
    held = store.Query(
        "jobs",
        None,
        (store.Filter("lease.factoryId", "!=", None),),
        (("lease.factoryId", False),),
        limit=500,
        fields=liveness.LEASE_FIELDS,
    )
    used: dict[str, int] = {}
    for doc in store.query_all(ctx.store, held):
        lease = liveness.Held.from_doc(doc.get("lease"))
        if lease is not None and liveness.live(lease, by_id.get(lease.factory_id), now):
            used[lease.factory_id] = used.get(lease.factory_id, 0) + 1
    seen = ctx.principal.sees
    return FactoryList(
        items=[
            Factory.from_doc(doc).model_copy(
                update={
                    "seats_used": used.get(doc["id"], 0),
                    "health": health(doc.get("lastHeartbeatAt"), now),
                    "products": [p for p in doc.get("products") or [] if seen(p)],
                }
            )
            for doc in docs
            if ctx.principal.products is None or any(seen(p) for p in doc.get("products") or [])
        ]
    )
