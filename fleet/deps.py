"""Dependencies: a job with unfinished deps waits `blocked` until the last one ships.

Deps are idempotency keys of jobs in the same product. The finishing job's write releases its
dependents; a submit re-checks right after writing `blocked`, and the sweep re-checks every
blocked job, so a crash between two writes never strands one (`effects.recheck`,
`effects.release_dependents` do the writing; this module holds the rules and reads the stages).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Mapping

from fleet import errors, lifecycle, weight_registry
from fleet.context import Context
from fleet.jobs import BlockedOn, Job, job_id
from fleet.stages import FINISHED, Stage

#: A dep's stage as read: None for a dep that was never submitted.
Stages = Mapping[str, "Stage | None"]


def stages(ctx: Context, product_id: str, keys: list[str]) -> dict[str, Stage | None]:
    """The current stage of each dep in `keys` (None: not submitted), one point read each."""
    found: dict[str, Stage | None] = {}
    for key in dict.fromkeys(keys):
        try:
            found[key] = Stage(ctx.store.read("jobs", product_id, job_id(product_id, key))["stage"])
        except errors.NotFound:
            found[key] = None
    return found


def waiting(product_id: str, keys: list[str], known: Stages) -> list[BlockedOn]:
    """Each dep in `keys` that is not finished by `known`, with its stage. Pure."""
    return [
        BlockedOn(idempotency_key=key, job_id=job_id(product_id, key), stage=known.get(key))
        for key in keys
        if known.get(key) not in FINISHED
    ]


def waiting_on(ctx: Context, product_id: str, keys: list[str]) -> list[BlockedOn]:
    """Each dep in `keys` that is not finished, with its current stage (None: not submitted)."""
    return waiting(product_id, keys, stages(ctx, product_id, keys))


def refuse_unknown(waiting: list[BlockedOn]) -> None:
    """`ValidationFailed` naming the deps in `waiting` that were never submitted."""
    unknown = [d.idempotency_key for d in waiting if d.stage is None]
    if unknown:
        raise errors.ValidationFailed(
            f"deps name jobs that were never submitted: {unknown}", [{"field": "deps", "message": f"unknown: {unknown}"}]
        )


@dataclass(frozen=True)
class Unblocking:
    """What deciding a blocked job's fate needs beyond the job: its deps' stages, and the
    product's weights when they are all finished (read only then)."""

    stages: Stages
    weights: weight_registry.Snapshot | None


def unblocking(ctx: Context, job: Job) -> Unblocking:
    """The facts `unblocked` decides on, for `job` as read."""
    known = stages(ctx, job.product_id, job.deps)
    ready = job.stage == Stage.BLOCKED and not waiting(job.product_id, job.deps, known)
    return Unblocking(known, weight_registry.cached(ctx, job.product_id) if ready else None)


def unblocked(job: Job, facts: Unblocking, now: datetime) -> Job | None:
    """A blocked job queued if all its deps are finished, else with `blockedOn` refreshed;
    None if it is not blocked or nothing changed. A job whose deps grew since the facts were
    read (children added meanwhile) is left to the writer that added them, which re-checks."""
    if job.stage != Stage.BLOCKED or any(key not in facts.stages for key in job.deps):
        return None
    still = waiting(job.product_id, job.deps, facts.stages)
    if still:
        return None if still == job.blocked_on else job.model_copy(update={"blocked_on": still})
    if facts.weights is None:
        return None  # the facts were read for the job when it was not ready: its re-check is the sweep's
    return lifecycle.requeued(job, now, facts.weights.weights).with_event(now, "unblocked")
