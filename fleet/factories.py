"""Factories: registration by heartbeat, lease renewal, health and seats."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from fleet import clock, effects, errors, outage, store, writes
from fleet.context import Context
from fleet.jobs import Job, product_of

#: Heartbeat age up to which a factory is `online`, then `stale`; past `STALE` it is `offline`.
ONLINE_SECONDS = 60
STALE_SECONDS = 300


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
) -> list[dict[str, Any]]:
    """Record the factory's registration, then renew each `(jobId, leaseId)` it says it runs.
    Answers per lease `renewed` (with the new expiry) or `revoked` (stop that work now)."""
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
    return [renew(ctx, job_id, lease_id, factory_id) for job_id, lease_id in running]


def renew(ctx: Context, job_id: str, lease_id: str, factory_id: str | None = None) -> dict[str, Any]:
    """Extend one lease by a lease term if it is still the job's live lease, or one held for
    an outage (and, when `factory_id` is given, held by that factory)."""
    now = ctx.clock.now()
    product_id = product_of(job_id)
    revoked = {"jobId": job_id, "leaseId": lease_id, "status": "revoked", "expiresAt": None}
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
    return {"jobId": job_id, "leaseId": lease_id, "status": "renewed", "expiresAt": clock.format(job.lease.expires_at)}


def held_leases(ctx: Context, factory_id: str | None = None) -> list[Job]:
    """Jobs holding a live-or-unswept lease, of one factory or of all (a cross-partition read
    whose size is the number of running jobs, not of jobs)."""
    where = (store.Filter("lease.factoryId", "=", factory_id),) if factory_id else (
        store.Filter("lease.factoryId", "!=", None),
    )
    query = store.Query("jobs", None, where, (("lease.factoryId", False),), limit=500)
    return [Job.from_doc(doc) for doc in store.query_all(ctx.store, query)]


def health(last_heartbeat_at: str | None, now) -> str:
    if not last_heartbeat_at:
        return "offline"
    age = (now - clock.parse(last_heartbeat_at)).total_seconds()
    return "online" if age <= ONLINE_SECONDS else "stale" if age <= STALE_SECONDS else "offline"


def list_all(ctx: Context) -> list[dict[str, Any]]:
    """Every factory with its health and seats: used (live leases) over its limit."""
    now = ctx.clock.now()
    used: dict[str, int] = {}
    for job in held_leases(ctx):
        if job.lease and job.lease.expires_at > now:
            used[job.lease.factory_id] = used.get(job.lease.factory_id, 0) + 1
    docs = store.query_all(ctx.store, store.Query("factories", None, order_by=(("id", False),), limit=500))
    return [
        {
            "id": doc["id"],
            "products": doc.get("products", []),
            "capabilities": doc.get("capabilities", []),
            "seatLimit": doc.get("seatLimit"),
            "seatsUsed": used.get(doc["id"], 0),
            "lastHeartbeatAt": doc.get("lastHeartbeatAt"),
            "health": health(doc.get("lastHeartbeatAt"), now),
        }
        for doc in docs
    ]
