"""Preemption: a factory at its seat limit makes room for a critical job by evicting its
lowest-scoring running job of lower priority. Only with `FLEET_PREEMPTION` on."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Mapping

from fleet import effects, errors, lifecycle, scoring, weight_registry
from fleet.context import Context
from fleet.jobs import Job
from fleet.stages import Priority, RunResult


def select_preemption_victim(
    running: list[tuple[Job, float]], incoming: Job, now: datetime, exempt_seconds: float = 0
) -> Job | None:
    """The running job to evict for `incoming`, or None.

    Only a critical job preempts; never a job of equal or higher priority; never one that has
    run for less than `exempt_seconds` (so preemption cannot thrash). Among the rest, the
    lowest score loses; on a tie, the one that started last (it has the least work to lose).
    """
    if incoming.priority != Priority.CRITICAL:
        return None
    eligible = [
        (score, job)
        for job, score in running
        if job.priority.order < incoming.priority.order
        and job.latest_run is not None
        and job.latest_run.started_at + timedelta(seconds=exempt_seconds) <= now
    ]
    if not eligible:
        return None
    return min(eligible, key=lambda pair: (pair[0], -pair[1].latest_run.started_at.timestamp(), pair[1].id))[1]


def weights_of(
    ctx: Context, running: list[Job], known: Mapping[str, weight_registry.Snapshot] | None = None
) -> dict[str, weight_registry.Snapshot]:
    """The weights of every product among `running`: those in `known` as given, each other
    product's read once."""
    found = dict(known or {})
    for product_id in dict.fromkeys(job.product_id for job in running):
        if product_id not in found:
            found[product_id] = weight_registry.snapshot(ctx, product_id)
    return found


def scored_running(
    ctx: Context,
    running: list[Job],
    offered: frozenset[str],
    now: datetime,
    weights: Mapping[str, weight_registry.Snapshot] | None = None,
) -> list[tuple[Job, float]]:
    """Each running job with its score under its own product's weights (`weights_of`, read
    here unless given)."""
    weights = weights if weights is not None else weights_of(ctx, running)
    scored = []
    for job in running:
        bonus = scoring.capability_bonus(job.capabilities, offered)
        resolved = weights[job.product_id].weights
        scored.append((job, scoring.score(job.priority.order, job.attempts, job.created_at, bonus, now, resolved)))
    return scored


def evict(ctx: Context, victim: Job, preemptor: Job, weights: weight_registry.Snapshot | None = None) -> Job:
    """Give the victim's seat up: back to the queue with its checkpoint, attempts unchanged,
    its lease revoked. Raises `LeaseLost` if the victim's lease changed since it was read.
    `weights`: the victim's product's, if the caller read them already."""
    weights = weights or weight_registry.snapshot(ctx, victim.product_id)
    eviction = _Eviction(victim.lease.lease_id if victim.lease else None, preemptor.id, weights.weights)
    return effects.change(ctx, victim.id, _evicted, eviction, current=victim, keyed_with=weights).job


@dataclass(frozen=True)
class _Eviction:
    lease_id: str | None
    preemptor_id: str
    weights: scoring.Weights


def _evicted(job: Job, eviction: _Eviction, now: datetime) -> Job:
    if job.lease is None or job.lease.lease_id != eviction.lease_id:
        raise errors.LeaseLost(f"job {job.id} changed hands before it could be preempted")
    ended = lifecycle.end_run(job, now, RunResult.PREEMPTED)
    # Released "with checkpoint": the factory's last one, or `true` (resume where it was).
    checkpoint = job.checkpoint if job.checkpoint is not None else True
    return (
        lifecycle.requeued(ended, now, eviction.weights)
        .model_copy(update={"checkpoint": checkpoint})
        .with_event(now, "preempted", victim=job.id, preemptor=eviction.preemptor_id, factoryId=job.lease.factory_id)
    )
