"""Follow-up writes after a job's own write: the queue-state version, spend, dependents.

Each is idempotent and safe to repeat, and the sweep repeats them, so a process that dies
between the job's write and these never strands work (DESIGN.md, "the one rule of state").
"""
from __future__ import annotations

import logging

from fleet import deps, errors, queue_state, spend, weights
from fleet.context import Context
from fleet.jobs import Job
from fleet.stages import FINISHED, Stage

log = logging.getLogger("fleet.effects")


def settle(ctx: Context, before: Stage | None, job: Job) -> Job:
    """Apply what follows from `job` having moved from `before` to its current stage; the job
    as it stands afterwards."""
    try:
        if job.stage == Stage.QUEUED and before != Stage.QUEUED:
            job = weights.ensure_rank(ctx, job)
            queue_state.bump(ctx, job.product_id)
        if job.accrual_pending:
            job = spend.settle(ctx, job)
        if job.stage in FINISHED and before not in FINISHED:
            deps.release_dependents(ctx, job)
    except errors.FleetError:
        # The job's own write stands; the sweep finishes what was interrupted here.
        log.warning("follow-ups of job %s interrupted; the sweep will finish them", job.id, exc_info=True)
    return job
