"""Factories: registration by heartbeat, lease renewal, health and seats."""
from __future__ import annotations

from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from pydantic import Field

from fleet import activity, clock, effects, errors, outage, store, writes
from fleet.context import Context
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
    try:
        return ctx.store.read("factories", factory_id, factory_id)
    except errors.NotFound:
        return None


def heartbeat(
    ctx: Context,
    factory_id: str,
    products: list[str],
    capabilities: list[str],
    seat_limit: int | None,
    running: list[tuple[str, str]],
) -> Heartbeat:
    """Record the factory's registration, then renew each `(jobId, leaseId)` it says it runs.
    Answers per lease `renewed` (with the new expiry) or `revoked` (stop that work now).
    `Forbidden` unless the principal speaks for the factory and may enter every product named."""
    ctx.principal.act_as_factory(factory_id)
    for product_id in products:
        ctx.principal.enter(product_id)
    now = ctx.clock.now()
    previous = find(ctx, factory_id) or {}
    ctx.store.upsert(
        "factories",
        {
            "id": factory_id,
            "products": products,
            "capabilities": capabilities,
            "seatLimit": seat_limit,
            "firstSeenAt": previous.get("firstSeenAt", clock.format(now)),
            "lastHeartbeatAt": clock.format(now),
        },
    )
    if [previous.get(k) for k in ("products", "capabilities", "seatLimit")] != [products, capabilities, seat_limit]:
        activity.touch(ctx)  # a new factory, or one that changed what it serves
    leases = [renew(ctx, job_id, lease_id, factory_id) for job_id, lease_id in running]
    return Heartbeat(factory_id=factory_id, leases=leases)


def renew(ctx: Context, job_id: str, lease_id: str, factory_id: str | None = None) -> LeaseRenewal:
    """Extend one lease by a lease term if it is still the job's live lease, or one held for
    an outage (and, when `factory_id` is given, held by that factory)."""
    now = ctx.clock.now()
    product_id = product_of(job_id)
    revoked = LeaseRenewal(job_id=job_id, lease_id=lease_id, status=Renewal.REVOKED)
    if product_id is None:
        return revoked

    def extend(job: Job, grace, now) -> Job:
        if job.lease is None or (factory_id is not None and job.lease.factory_id != factory_id):
            raise errors.LeaseLost()
        if not outage.held(job, lease_id, now, grace):
            raise errors.LeaseLost()
        expires_at = now + timedelta(seconds=ctx.settings.lease_seconds)
        lease = job.lease.model_copy(update={"expires_at": expires_at, "spared": False})
        renewed = job.model_copy(update={"lease": lease, "updated_at": now})
        if not job.holds(lease_id, now):  # it expired in an outage: say why it lives on
            renewed = renewed.with_event(now, "lease_renewed", job.lease.factory_id, reason="outage")
        return renewed

    try:
        current = writes.read(ctx, job_id)
        if current.lease is None or (factory_id is not None and current.lease.factory_id != factory_id):
            return revoked  # not this factory's: refused before any outage read
        grace = outage.grace_for(ctx, current, lease_id, now)
        job = effects.change(ctx, job_id, extend, grace, current=current, now=now, request=False).job
    except (errors.NotFound, errors.LeaseLost):
        return revoked
    return LeaseRenewal(job_id=job_id, lease_id=lease_id, status=Renewal.RENEWED, expires_at=job.lease.expires_at)


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
    """Every factory with its health and seats: used (live leases) over its limit. A principal
    limited to some products sees only the factories serving one of them."""
    now = ctx.clock.now()
    used: dict[str, int] = {}
    for job in held_leases(ctx):
        if job.lease and job.lease.expires_at > now:
            used[job.lease.factory_id] = used.get(job.lease.factory_id, 0) + 1
    docs = store.query_all(ctx.store, store.Query("factories", None, order_by=(("id", False),), limit=500))
    return FactoryList(
        items=[
            Factory.from_doc(doc).model_copy(
                update={"seats_used": used.get(doc["id"], 0), "health": health(doc.get("lastHeartbeatAt"), now)}
            )
            for doc in docs
            if ctx.principal.products is None or any(ctx.principal.sees(p) for p in doc.get("products") or [])
        ]
    )
