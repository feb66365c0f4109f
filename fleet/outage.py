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
    return gap_began(last_sweep(ctx), now, ctx.settings.outage_grace_seconds)


def gap_began(last: datetime | None, now: datetime, grace_seconds: float) -> datetime | None:
    """`began`, given when the sweep last ran."""
    return last if last is not None and (now - last).total_seconds() > grace_seconds else None


def record_sweep(ctx: Context, now: datetime) -> None:
    ctx.store.upsert("jobs", {"id": STATE_ID, "productId": STATE_PARTITION, "lastSweepAt": clock.format(now)})


def spared(ctx: Context, job: Job, lease_id: str, now: datetime) -> bool:
    """Whether `lease_id`, the job's current lease, expired during an outage (and so still
    counts as held). One point read, made only for a lease that has expired."""
    gap = gap_for(ctx, job, lease_id, now)
    return gap is not None and job.lease.expires_at >= gap


def gap_for(ctx: Context, job: Job, lease_id: str, now: datetime) -> datetime | None:
    """What `held` needs to know of outages for a write naming `lease_id`: when the current
    gap began, read (one point read) only if `lease_id` is the job's lease and it has expired."""
    if job.lease is None or job.lease.lease_id != lease_id or job.lease.expires_at > now:
        return None
    return began(ctx, now)


def held(job: Job, lease_id: str, now: datetime, gap: datetime | None) -> bool:
    """`job.holds`, with outage grace, given `gap_for`'s answer (read before deciding)."""
    if job.holds(lease_id, now):
        return True
    return gap is not None and job.lease is not None and job.lease.lease_id == lease_id and job.lease.expires_at >= gap


def holds(ctx: Context, job: Job, lease_id: str, now: datetime) -> bool:
    """`job.holds`, with outage grace."""
    return held(job, lease_id, now, gap_for(ctx, job, lease_id, now))
