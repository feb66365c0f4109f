"""Follow-up writes after a job's own write: the queue-state version, spend, dependents.

Each is idempotent and safe to repeat, and the sweep repeats them, so a process that dies
between the job's write and these never strands work (DESIGN.md, "the one rule of state").
"""
from __future__ import annotations

import logging

from fleet import deps, errors, queue_state, spend, weight_registry
from fleet.context import Context
from fleet.jobs import Job
from fleet.stages import FINISHED, Stage

log = logging.getLogger("fleet.effects")


def settle(ctx: Context, before: Stage | None, job: Job) -> Job:
    """Apply what follows from `job` having moved from `before` to its current stage; the job
    as it stands afterwards."""
    if job.stage == Stage.QUEUED and before != Stage.QUEUED:
        job = _attempt(job, "re-key", lambda: weight_registry.ensure_rank(ctx, job))
        _attempt(job, "queue-state bump", lambda: queue_state.bump(ctx, job.product_id))
    if job.accrual_pending:
        job = _attempt(job, "accrual", lambda: spend.settle(ctx, job))
    if job.stage in FINISHED and before not in FINISHED:
        _attempt(job, "dependents", lambda: deps.release_dependents(ctx, job))
    return job


def _attempt(job: Job, what: str, follow_up):
    """Run one follow-up; if the store fails it, the job's own write stands and the sweep
    finishes it (each follow-up is tried on its own, so one failing skips no other)."""
    try:
        result = follow_up()
    except errors.FleetError:
        log.warning("%s after job %s interrupted; the sweep will finish it", what, job.id, exc_info=True)
        return job
    return result if isinstance(result, Job) else job
