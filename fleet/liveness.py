"""Lease liveness: whether a job's lease still counts as its holder's.

A heartbeat renews every lease its factory runs by writing one small document, the factory's
own (`factories` container, id = factory id): `leaseUntil`, one lease term after the heartbeat,
and `leases`, the leases that heartbeat renewed (each by `listed`: the first 16 characters of
its id, 64 random bits, as the list travels with every heartbeat). It writes no job document: a
factory running sixteen jobs pays what a factory running one pays. (Kubernetes made the same
move for node heartbeats, KEP-589: a small Lease object per node instead of rewriting the node.)

The rule, decided here and only here: a job's lease L, held by factory F, is live at `now` iff

- the job's own `lease.expiresAt > now` (set by the claim, and refreshed by every fenced
  write that keeps the lease), or
- F's document has `leaseUntil > now` and lists L in `leases`.

Its *effective expiry* is the later of the two (F's only when F lists L). Outage grace
(`fleet.outage`) applies to the effective expiry, and a lease the sweep spared counts as
renewed since (no longer `spared`) once F's document carries it at least to the spared expiry.

The job document stays the authority on which lease is current: the factory document can only
keep alive the lease the job still names, never bring back one the job no longer names (a
lease id is never reused). Every fenced write and every expiry is a conditional write of the
job, so a factory document read a moment stale can make a lease end a moment early (its
holder's next write is `lease_lost`), never let two factories hold one job.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from fleet import clock, errors
from fleet.context import Context


class LeaseLike(Protocol):
    """What liveness needs of a lease: a `jobs.Lease`, or a projected `Held`."""

    lease_id: str
    factory_id: str
    expires_at: datetime
    spared: bool


@dataclass(frozen=True)
class Held:
    """A lease as a projected query reads it (`lease.leaseId`, `lease.factoryId`,
    `lease.expiresAt`, `lease.spared`): what liveness decides on, without the whole job."""

    lease_id: str
    factory_id: str
    expires_at: datetime
    spared: bool = False

    @classmethod
    def from_doc(cls, lease: dict[str, Any] | None, factory_id: str | None = None) -> "Held | None":
        """From a (projected) job document's `lease`; None if it has none. `factory_id`: the
        holder, when the query filtered on it and so did not read it."""
        if not lease or not lease.get("leaseId") or not lease.get("expiresAt"):
            return None
        holder = lease.get("factoryId", factory_id or "")
        return cls(lease["leaseId"], holder, clock.parse(lease["expiresAt"]), bool(lease.get("spared")))


#: How many leading characters of a lease id (random hex) a factory document lists it by.
LISTED_CHARS = 16


def listed(lease_id: str) -> str:
    """How a factory document's `leases` names `lease_id`: its first `LISTED_CHARS` characters.
    A list only ever keeps alive the lease its job names, so two leases of one factory would
    have to share 64 random bits for one to stand in for the other."""
    return lease_id[:LISTED_CHARS]


#: The lease fields a projected job query reads for `Held.from_doc`.
LEASE_FIELDS = ("productId", "lease.leaseId", "lease.expiresAt", "lease.factoryId", "lease.spared")
#: The same, for a query of one factory's leases (its filter names the holder).
ONE_FACTORYS_LEASE_FIELDS = ("lease.leaseId", "lease.expiresAt", "lease.spared")


def factory_until(lease: LeaseLike, factory_doc: dict[str, Any] | None) -> datetime | None:
    """Until when the holder's factory document keeps `lease` alive: its `leaseUntil` if it is
    that factory's document and lists the lease; else None."""
    if not factory_doc or factory_doc.get("id") != lease.factory_id or not factory_doc.get("leaseUntil"):
        return None
    if listed(lease.lease_id) not in (factory_doc.get("leases") or ()):
        return None
    return clock.parse(factory_doc["leaseUntil"])


def effective_expiry(lease: LeaseLike, factory_doc: dict[str, Any] | None) -> datetime:
    """The later of the job's own expiry and its factory's (the factory's only if it lists it)."""
    until = factory_until(lease, factory_doc)
    return lease.expires_at if until is None or until <= lease.expires_at else until


def live(lease: LeaseLike, factory_doc: dict[str, Any] | None, now: datetime) -> bool:
    """Whether `lease` still counts as its holder's at `now` (the rule in the module docstring)."""
    return effective_expiry(lease, factory_doc) > now


def spared(lease: LeaseLike, factory_doc: dict[str, Any] | None) -> bool:
    """Whether the lease is still only spared for an outage: the sweep spared it and no
    heartbeat of its factory has renewed it since (one that did carries it at least as far:
    the sweep spares only a lease its factory's document no longer keeps alive)."""
    if not lease.spared:
        return False
    until = factory_until(lease, factory_doc)
    return until is None or until < lease.expires_at


def effective(lease: LeaseLike, factory_doc: dict[str, Any] | None) -> Held:
    """`lease` as its factory document leaves it: its effective expiry, and `spared` only while
    it is still only spared. What outage grace (`outage.grace_until`) is decided on."""
    return Held(lease.lease_id, lease.factory_id, effective_expiry(lease, factory_doc), spared(lease, factory_doc))


def holds(lease: LeaseLike | None, lease_id: str, factory_doc: dict[str, Any] | None, now: datetime) -> bool:
    """Whether `lease_id` is `lease` (a job's current lease) and live at `now`."""
    return lease is not None and lease.lease_id == lease_id and live(lease, factory_doc, now)


def read_factory(ctx: Context, factory_id: str) -> dict[str, Any] | None:
    """The factory's document, in one point read; None if it never heartbeat."""
    try:
        return ctx.store.read("factories", factory_id, factory_id)
    except errors.NotFound:
        return None
