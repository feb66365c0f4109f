"""Operator actions on a job: `requeue`, `reject`, `cancel`, `ship`. Lease-free: they work on
a job whatever holds it, revoke its lease, and retry on optimistic-concurrency conflicts."""
from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Callable

from fleet import deps, errors, lifecycle, listing, writes, weight_registry
from fleet.context import Context
from fleet.jobs import Job
from fleet.stages import TERMINAL, RunResult, Stage


class Action(str, Enum):
    """What an operator may do to a job, whatever holds it."""

    REQUEUE = "requeue"  # back to the queue (or blocked on its deps), attempts reset, lease revoked
    REJECT = "reject"  # give up on it: failed
    CANCEL = "cancel"  # withdraw it: cancelled
    SHIP = "ship"  # mark it delivered: shipped (a no-op on a shipped job)


def apply(ctx: Context, id: str, action: Action, reason: str | None = None, actor: str | None = None) -> Job:
    decide_for: dict[Action, Callable[[Job, datetime], Job | None]] = {
        Action.REQUEUE: lambda job, now: _requeue(ctx, job, now),
        Action.REJECT: lambda job, now: _to_terminal(job, now, Stage.FAILED, RunResult.CANCELLED),
        Action.CANCEL: lambda job, now: _to_terminal(job, now, Stage.CANCELLED, RunResult.CANCELLED),
        Action.SHIP: lambda job, now: _to_terminal(job, now, Stage.SHIPPED),
    }

    def decide(job: Job, now: datetime) -> Job | None:
        changed = decide_for[action](job, now)
        if changed is None:
            return None
        return changed.with_event(now, action.value, actor, **({"reason": reason} if reason else {}))

    job = writes.change(ctx, id, decide)
    if job.stage == Stage.BLOCKED:
        job = deps.recheck(ctx, job.product_id, id)  # a dep may have finished meanwhile
    if action == Action.CANCEL:
        _cancel_descendants(ctx, job, reason, actor)
    return job


def _cancel_descendants(ctx: Context, parent: Job, reason: str | None, actor: str | None) -> None:
    """Cancel every unfinished job below a cancelled composite (children first written, so a
    retry of the cancel converges)."""
    for child_id in parent.children:
        try:
            child = listing.get(ctx, child_id)
        except errors.NotFound:
            continue
        if child.stage not in TERMINAL:
            # `apply` cancels this child's own descendants in turn.
            apply(ctx, child_id, Action.CANCEL, reason or f"parent {parent.id} cancelled", actor)
        else:
            _cancel_descendants(ctx, child, reason, actor)  # a finished job may still have unfinished ones below


def _to_terminal(job: Job, now, stage: Stage, result: RunResult | None = None) -> Job | None:
    if job.stage == stage:
        return None  # idempotent: already there
    if job.stage in TERMINAL:
        raise errors.IllegalTransition(f"job {job.id} is {job.stage.value}; requeue it first")
    return lifecycle.finished(job, now, stage, result)


def _requeue(ctx: Context, job: Job, now) -> Job:
    job = lifecycle.requeued(lifecycle.released(job, now), now, weight_registry.for_product(ctx, job.product_id), attempts=0)
    waiting = deps.waiting_on(ctx, job.product_id, job.deps)
    if waiting:
        job = job.model_copy(update={"stage": Stage.BLOCKED, "blocked_on": waiting})
    return job
