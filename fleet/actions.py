"""Operator actions on a job: `requeue`, `reject`, `cancel`, `ship`. Lease-free: they work on
a job whatever holds it, revoke its lease, and retry on optimistic-concurrency conflicts."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from fleet import deps, effects, errors, lifecycle, weight_registry, writes
from fleet.context import Context
from fleet.jobs import Job
from fleet.stages import TERMINAL, RunResult, Stage


class Action(str, Enum):
    """What an operator may do to a job, whatever holds it."""

    REQUEUE = "requeue"  # back to the queue (or blocked on its deps), attempts reset, lease revoked
    REJECT = "reject"  # give up on it: failed
    CANCEL = "cancel"  # withdraw it: cancelled
    SHIP = "ship"  # mark it delivered: shipped (a no-op on a shipped job)


def available(job: Job) -> frozenset[Action]:
    """The actions that would change `job` now: a job that has ended (shipped, done, failed,
    dead-lettered, cancelled) can only be requeued, and a blocked one not shipped; the others
    would answer `illegal_transition`, or change nothing on the stage it is at."""
    if job.stage in TERMINAL:
        return frozenset({Action.REQUEUE})
    return frozenset(Action) - {Action.SHIP} if job.stage == Stage.BLOCKED else frozenset(Action)


def apply(ctx: Context, id: str, action: Action, reason: str | None = None, actor: str | None = None) -> Job:
    """Apply `action`; its events name the principal as the actor (`actor`, the caller's own
    word, counts only with auth off: see `Principal.actor`)."""
    return _apply(ctx, writes.read(ctx, id), action, reason, ctx.principal.actor(actor))


@dataclass(frozen=True)
class _Acting:
    """What an action decides with beyond the job."""

    action: Action
    reason: str | None
    actor: str | None
    #: A requeue's: the product's weights and the stages of the job's deps.
    weights: weight_registry.Snapshot | None = None
    stages: deps.Stages | None = None


def _apply(ctx: Context, job: Job, action: Action, reason: str | None, actor: str | None) -> Job:
    """`apply` to the job as read."""
    if action == Action.REQUEUE:
        weights = weight_registry.cached(ctx, job.product_id)
        acting = _Acting(action, reason, actor, weights, deps.stages(ctx, job.product_id, job.deps))
    elif action == Action.SHIP and job.stage == Stage.BLOCKED:  # refused: named with its deps as they stand
        acting = _Acting(action, reason, actor, stages=deps.stages(ctx, job.product_id, job.deps))
    else:
        acting = _Acting(action, reason, actor)
    job = effects.change(ctx, job.id, _decide, acting, current=job, keyed_with=acting.weights).job
    if job.stage == Stage.BLOCKED:
        job = effects.recheck(ctx, job.id, job).job  # a dep may have finished meanwhile
    if action == Action.CANCEL:
        _cancel_descendants(ctx, job, reason, actor)
    return job


def _decide(job: Job, acting: _Acting, now: datetime) -> Job | None:
    if acting.action == Action.REQUEUE:
        changed = _requeue(job, acting, now)
    elif acting.action == Action.REJECT:
        changed = _to_terminal(job, now, Stage.FAILED, RunResult.CANCELLED)
    elif acting.action == Action.CANCEL:
        changed = _to_terminal(job, now, Stage.CANCELLED, RunResult.CANCELLED)
    else:
        if job.stage == Stage.BLOCKED:
            # Its deps (a composite's children) have not shipped: shipping it would release
            # its dependents on work nobody did. (A cancelled dep keeps it blocked for good.)
            on = deps.waiting(job.product_id, job.deps, acting.stages) if acting.stages is not None else job.blocked_on
            waiting = ", ".join(f"{b.idempotency_key} ({b.stage.value if b.stage else 'not submitted'})" for b in on)
            raise errors.IllegalTransition(
                f"job {job.id} is blocked on {waiting}; ship those first (requeue one that ended otherwise), or cancel it"
            )
        changed = _to_terminal(job, now, Stage.SHIPPED)
    if changed is None:
        return None
    return changed.with_event(now, acting.action.value, acting.actor, **({"reason": acting.reason} if acting.reason else {}))


def follow_cancel(ctx: Context, parent_id: str) -> Job:
    """The composite `parent_id` as it stands; if it is cancelled, with every unfinished job
    below it cancelled too, as its cancel does (in the name of whoever cancelled it). For a
    writer that has just created children under it: a cancel that landed meanwhile cascaded
    only to the children that existed then."""
    parent = writes.read(ctx, parent_id)
    if parent.stage == Stage.CANCELLED:
        cancel = next((e for e in reversed(parent.events) if e.type == Action.CANCEL.value), None)
        reason = (cancel.detail or {}).get("reason") if cancel else None
        _cancel_descendants(ctx, parent, reason, cancel.actor if cancel else None)
    return parent


def _cancel_descendants(ctx: Context, parent: Job, reason: str | None, actor: str | None) -> None:
    """Cancel every unfinished job below a cancelled composite (children first written, so a
    retry of the cancel converges)."""
    for child_id in parent.children:
        try:
            child = writes.read(ctx, child_id)
        except errors.NotFound:
            continue
        if child.stage not in TERMINAL:
            # `_apply` cancels this child's own descendants in turn.
            _apply(ctx, child, Action.CANCEL, reason or f"parent {parent.id} cancelled", actor)
        else:
            _cancel_descendants(ctx, child, reason, actor)  # a finished job may still have unfinished ones below


def _to_terminal(job: Job, now, stage: Stage, result: RunResult | None = None) -> Job | None:
    if job.stage == stage:
        return None  # idempotent: already there
    if job.stage in TERMINAL:
        raise errors.IllegalTransition(f"job {job.id} is {job.stage.value}; requeue it first")
    return lifecycle.finished(job, now, stage, result)


def _requeue(job: Job, acting: _Acting, now) -> Job:
    """Back to the queue (blocked while a dep is unfinished), attempts reset, lease revoked. A
    dep added since its stages were read counts as unfinished; the re-check after the write
    reads it."""
    job = lifecycle.requeued(lifecycle.released(job, now), now, acting.weights.weights, attempts=0)
    waiting = deps.waiting(job.product_id, job.deps, acting.stages)
    if waiting:
        job = job.model_copy(update={"stage": Stage.BLOCKED, "blocked_on": waiting})
    return job
