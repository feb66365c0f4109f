"""Outage grace: after the store or the coordinator was down, factories could not renew their
leases, so leases that expired during the gap are not held against them.

The sweep records when it last ran; a sweep (or a renewal) that finds that record older than
`Settings.outage_grace_seconds` knows there was a gap, and a lease that expired after the gap
began still counts as its holder's: the holder's heartbeat renews it, its writes are accepted,
and the sweep gives it one more lease term instead of expiring it.
"""
from __future__ import annotations

from datetime import datetime

from fleet import clock, errors
from fleet.context import Context
from fleet.jobs import Job

#: Where the sweep remembers when it last ran: a reserved partition no product can have.
STATE_PARTITION = "_fleet"
STATE_ID = "sweep-state"


def last_sweep(ctx: Context) -> datetime | None:
    """When the sweep last ran to the end, None if it never has."""
    try:
        return clock.parse(ctx.store.read("jobs", STATE_PARTITION, STATE_ID)["lastSweepAt"])
    except errors.NotFound:
        return None


def began(ctx: Context, now: datetime) -> datetime | None:
    """When the current gap began (the last sweep), or None if the sweep has been running."""
    last = last_sweep(ctx)
    return last if last is not None and (now - last).total_seconds() > ctx.settings.outage_grace_seconds else None


def record_sweep(ctx: Context, now: datetime) -> None:
    ctx.store.upsert("jobs", {"id": STATE_ID, "productId": STATE_PARTITION, "lastSweepAt": clock.format(now)})


def spared(ctx: Context, job: Job, lease_id: str, now: datetime) -> bool:
    """Whether `lease_id`, the job's current lease, expired during an outage (and so still
    counts as held). One point read, made only for a lease that has expired."""
    if job.lease is None or job.lease.lease_id != lease_id or job.lease.expires_at > now:
        return False
    gap = began(ctx, now)
    return gap is not None and job.lease.expires_at >= gap


def holds(ctx: Context, job: Job, lease_id: str, now: datetime) -> bool:
    """`job.holds`, with outage grace."""
    return job.holds(lease_id, now) or spared(ctx, job, lease_id, now)
