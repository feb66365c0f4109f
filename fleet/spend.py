"""Accruing what runs cost to their product's budget, exactly once.

Order of writes (each idempotent): the job's own write ends the run and sets
`accrualPending`; then each ended, unaccrued run is accrued to the budget by run id (the
budget remembers the id, so a replay adds nothing); then the job's runs are marked `accrued`
and the flag cleared. A crash anywhere leaves `accrualPending` set, and the sweep replays.
"""
from __future__ import annotations

from typing import Any

from fleet import batch, budget_rules, budgets, errors, queue_state, store
from fleet.context import Context
from fleet.jobs import Job


def settle(ctx: Context, job: Job) -> Job:
    """Apply the job's pending accruals (budgets on) and clear its flag."""
    if not job.accrual_pending or not ctx.settings.budgets:
        return job
    now = ctx.clock.now()
    due = [run for run in job.runs if run.ended_at is not None and not run.accrued]
    for run in due:
        budgets.change(
            ctx,
            job.product_id,
            lambda b, r=run: budget_rules.accrue(
                b, r.run_id, float(r.insights.get("costUsd") or 0.0), now, r.reservation, r.ended_at
            ),
        )
    done = {run.run_id for run in due}
    if any(run.reservation for run in due):
        # The reservation gave way to what the run really cost: claims may fit again.
        queue_state.bump(ctx, job.product_id)

    def mark(doc: dict[str, Any]) -> dict[str, Any] | None:
        current = Job.from_doc(doc)
        if not current.accrual_pending:
            return None
        runs = [r.model_copy(update={"accrued": True}) if r.run_id in done else r for r in current.runs]
        # A run that ended since we looked stays pending for the next settle.
        pending = any(r.ended_at is not None and not r.accrued for r in runs)
        return current.model_copy(update={"runs": runs, "accrual_pending": pending}).to_doc()

    try:
        return Job.from_doc(store.update(ctx.store, "jobs", job.product_id, job.id, mark))
    except errors.NotFound:
        return job


def replay_pending(ctx: Context) -> int:
    """The sweep's part: finish every accrual a crash interrupted."""
    if not ctx.settings.budgets:
        return 0
    query = store.Query("jobs", None, (store.Filter("accrualPending", "=", True),), limit=200)
    pending = list(store.query_all(ctx.store, query))
    failed = batch.each(pending, lambda doc: settle(ctx, Job.from_doc(doc)))
    return len(pending) - failed
