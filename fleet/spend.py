"""Accruing what runs cost to their product's budget, exactly once.

Order of writes (each idempotent): the job's own write ends the run and sets
`accrualPending`; then each ended, unaccrued run is accrued to the budget by run id (the
budget remembers the id, so a replay adds nothing); then the job's runs are marked `accrued`
and the flag cleared. A crash anywhere leaves `accrualPending` set, and the sweep replays.
"""
from __future__ import annotations

from datetime import datetime

from fleet import batch, budget_rules, budgets, errors, queue_state, store, writes
from fleet.context import Context
from fleet.jobs import Job, Run


def settle(ctx: Context, job: Job) -> Job:
    """Apply the job's pending accruals (budgets on) and clear its flag."""
    if not job.accrual_pending or not ctx.settings.budgets:
        return job
    now = ctx.clock.now()
    due = tuple(run for run in job.runs if run.ended_at is not None and not run.accrued)
    budgets.change(ctx, job.product_id, lambda budget: _accrued(budget, due, now))
    if any(run.reservation for run in due):
        # The reservation gave way to what the run really cost: claims may fit again.
        queue_state.bump(ctx, job.product_id)
    try:
        return writes.change(ctx, job.id, _marked, frozenset(run.run_id for run in due), current=job, request=False).job
    except errors.NotFound:
        return job


def _accrued(budget: budget_rules.Budget, due: tuple[Run, ...], now: datetime) -> budget_rules.Budget | None:
    """`budget` with every run in `due` accrued once (in one write); None if all were counted."""
    accrued = budget
    for run in due:
        cost = float(run.insights.get("costUsd") or 0.0)
        accrued = budget_rules.accrue(accrued, run.run_id, cost, now, run.reservation, run.ended_at) or accrued
    return None if accrued is budget else accrued


def _marked(job: Job, done: frozenset[str], now: datetime) -> Job | None:
    """The runs in `done` marked accrued; the flag cleared unless a run ended since."""
    if not job.accrual_pending:
        return None
    runs = [r.model_copy(update={"accrued": True}) if r.run_id in done else r for r in job.runs]
    # A run that ended since we looked stays pending for the next settle.
    pending = any(r.ended_at is not None and not r.accrued for r in runs)
    return job.model_copy(update={"runs": runs, "accrual_pending": pending})


def replay_pending(ctx: Context) -> int:
    """The sweep's part: finish every accrual a crash interrupted."""
    if not ctx.settings.budgets:
        return 0
    query = store.Query("jobs", None, (store.Filter("accrualPending", "=", True),), limit=200)
    pending = list(store.query_all(ctx.store, query))
    failed = batch.each(pending, lambda doc: settle(ctx, Job.from_doc(doc)))
    return len(pending) - failed
