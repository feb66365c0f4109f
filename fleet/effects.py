"""Changing a job: its one conditional write (`writes`), then what follows on other documents.

`change` and `create` are the one way a use case writes a job: the caller reads the facts its
decision needs before calling (the job too, when the facts depend on it), the decision is pure,
the job is written once with `If-Match`, and then the follow-ups are settled once, by what the
write did: a job that entered the queue bumps the product's queue-state (registering its
capability set in the same write) and has its rank key checked against the product's weights;
a job with a run's cost pending has it accrued; a job that finished re-checks the jobs waiting
on it; a write a person could see bumps the fleet's activity version (`fleet.activity`, for the
dashboard: the one follow-up the sweep does not repeat, as it is a hint). The answer is a
`writes.Written` naming them.

Each follow-up is idempotent and safe to repeat, and the sweep repeats them, so a process that
dies between the job's write and these never strands work (DESIGN.md, "the one rule of state").
"""
from __future__ import annotations

import dataclasses
import logging
from datetime import datetime
from enum import Enum
from typing import Any, Callable

from fleet import activity, deps, errors, queue_state, spend, store, weight_registry, writes
from fleet.context import Context
from fleet.jobs import Job, cap_key
from fleet.stages import FINISHED, Stage

log = logging.getLogger("fleet.effects")


class FollowUp(str, Enum):
    QUEUE_STATE = "queue-state"  # the product's queue-state version was bumped: idle factories look again
    RE_KEY = "re-key"  # the queued job's rank key was checked against the product's current weights
    ACCRUAL = "accrual"  # the costs of the job's ended runs were accrued to its budget, and marked
    DEPENDENTS = "dependents"  # the blocked jobs waiting on the finished job were re-checked
    ACTIVITY = "activity"  # the fleet's activity version was bumped (and the day's rollup counted)


def change(
    ctx: Context,
    id: str,
    decide: writes.Decide,
    facts: Any = None,
    *,
    current: Job | None = None,
    now: datetime | None = None,
    retry: bool = True,
    request: bool = True,
    recalled: bool = False,
    keyed_with: weight_registry.Snapshot | None = None,
) -> writes.Written:
    """`writes.change` (see there for the arguments), then `settle`. `keyed_with`: the
    product's weights as read for the decision, when it may queue the job (its rank key).
    A `writes.Stale` write (`recalled`) wrote nothing, so nothing follows it."""
    written = writes.change(
        ctx, id, decide, facts, current=current, now=now, retry=retry, request=request, recalled=recalled
    )
    return settle(ctx, written, keyed_with)


def create(ctx: Context, job: Job, keyed_with: weight_registry.Snapshot | None = None) -> writes.Written:
    """`writes.create`, then `settle`; raises `Conflict` if the job exists."""
    return settle(ctx, writes.create(ctx, job), keyed_with)


def settle(ctx: Context, written: writes.Written, keyed_with: weight_registry.Snapshot | None = None) -> writes.Written:
    """Apply what follows from the write in `written`; the outcome with the job as it stands
    afterwards and the follow-ups that ran. Each follow-up is tried on its own: one the store
    fails is logged and left to the sweep, and skips no other but the activity bump, a hint
    not worth another store deadline once the store has failed this request."""
    job = written.job
    followed: list[FollowUp] = []
    failed: list[FollowUp] = []
    if written.entered(Stage.QUEUED):
        bump = lambda: queue_state.bump(ctx, job.product_id, [cap_key(job.capabilities)])  # noqa: E731
        bumped = _attempt(job, FollowUp.QUEUE_STATE, followed, bump, failed)
        rank = lambda: weight_registry.ensure_rank(ctx, job, keyed_with, bumped)  # noqa: E731
        job = _attempt(job, FollowUp.RE_KEY, followed, rank, failed) or job
    if job.accrual_pending:
        job = _attempt(job, FollowUp.ACCRUAL, followed, lambda: spend.settle(ctx, job), failed) or job
    if job.stage in FINISHED and (written.before is None or written.before.stage not in FINISHED):
        _attempt(job, FollowUp.DEPENDENTS, followed, lambda: release_dependents(ctx, job), failed)
    if written.wrote and not failed and activity.visible_change(written.before, job):
        _attempt(job, FollowUp.ACTIVITY, followed, lambda: activity.note_write(ctx, written.before, job), failed)
    return dataclasses.replace(written, job=job, followed=tuple(followed))


def recheck(ctx: Context, id: str, current: Job | None = None) -> writes.Written:
    """Unblock the job if all its deps are finished, else refresh its `blockedOn`. `current`:
    the job as the caller read or wrote it. Whether this call unblocked it:
    `.entered(Stage.QUEUED)`."""
    job = current if current is not None and current.etag else writes.read(ctx, id)
    if job.stage != Stage.BLOCKED:
        return writes.Written(job, job, False)
    facts = deps.unblocking(ctx, job)
    return change(ctx, id, deps.unblocked, facts, current=job, request=False, keyed_with=facts.weights)


def release_dependents(ctx: Context, finished: Job) -> None:
    """Re-check the blocked jobs of the product that name `finished` as a dep."""
    query = store.Query(
        "jobs",
        finished.product_id,
        (store.Filter("stage", "=", Stage.BLOCKED.value), store.Filter("deps", "contains", finished.idempotency_key)),
        (("createdAt", True),),  # as the product's listing of a stage is read: no index of its own
        limit=200,
    )
    # Read them all before writing: unblocking shrinks the result being paged through.
    for doc in list(store.query_all(ctx.store, query)):
        try:
            recheck(ctx, doc["id"], Job.from_doc(doc))
        except errors.NotFound:
            continue


def _attempt(job: Job, what: FollowUp, followed: list[FollowUp], follow_up: Callable[[], Any], failed: list[FollowUp]) -> Any:
    """Run one follow-up and note it in `followed` (in `failed` if the store fails it: the
    job's own write stands and the sweep finishes it, and None is answered then)."""
    try:
        result = follow_up()
    except errors.FleetError:
        log.warning("%s after job %s interrupted; the sweep will finish it", what.value, job.id, exc_info=True)
        failed.append(what)
        return None
    followed.append(what)
    return result
