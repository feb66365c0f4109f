"""Accruing what runs cost to their product's budget, exactly once.

Order of writes (each idempotent): the job's own write ends the run and sets
`accrualPending`; then each ended, unaccrued run is accrued to the budget by run id (the
budget remembers the id, so a replay adds nothing); then the job's runs are marked `accrued`
and the flag cleared. A crash anywhere leaves `accrualPending` set, and the sweep replays.

A run reported late by the lease taken from it (`leases.report`) accrues what that report adds
to the run's own cost as an accrual of its own, `{runId}:late`, whether or not the run's own
accrual has happened yet (once the run has ended: a report may reach an open run whose lease
expired before the sweep ends it): the two never count the same dollar.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from fleet import batch, budget_rules, budgets, errors, queue_state, store, writes
from fleet.context import Context
from fleet.jobs import Job, Run


def settle(ctx: Context, job: Job) -> Job:
    """Apply the job's pending accruals (budgets on) and clear its flag."""
    if not job.accrual_pending or not ctx.settings.budgets:
        return job
    now = ctx.clock.now()
    due = _due(job.runs, now + timedelta(seconds=ctx.settings.lease_seconds))
    budgets.change(ctx, job.product_id, lambda budget: _accrued(budget, due, now))
    if any(accrual.reservation for accrual in due):
        # The reservation gave way to what the run really cost: claims may fit again.
        queue_state.bump(ctx, job.product_id)
    done = frozenset(accrual.id for accrual in due)
    try:
        return writes.change(ctx, job.id, _marked, done, current=job, request=False).job
    except errors.NotFound:
        return job


@dataclass(frozen=True)
class _Accrual:
    """One amount a run adds to its budget, once by `id`."""

    id: str
    usd: float
    reservation: str | None
    ended_at: datetime | None
    #: Hold what the reservation has left until then: a late report may still come.
    hold_until: datetime | None = None


def late_id(run: Run) -> str:
    """The accrual id of what `run`'s late report adds to its cost."""
    return f"{run.run_id}:late"


def _due(runs: list[Run], hold_until: datetime | None = None) -> tuple[_Accrual, ...]:
    """What the ended runs have still to accrue: each one's own cost, and what a late report
    added to it. A run whose lease was taken (not ended by its holder's own write) and not yet
    reported late keeps what its reservation has left until `hold_until`; its late report's
    accrual drops it."""
    due = []
    for run in runs:
        if run.ended_at is not None and not run.accrued:
            taken = run.ended_by is None and run.lease_id is not None and run.late_report is None
            due.append(_Accrual(run.run_id, float(run.insights.get("costUsd") or 0.0), run.reservation, run.ended_at,
                                hold_until if taken else None))
        if run.ended_at is not None and run.late_report is not None and not run.late_report.accrued:
            # dated as it came: a window that began after the run ended still charges it
            due.append(_Accrual(late_id(run), run.late_usd, run.reservation, max(run.ended_at, run.late_report.at)))
    return tuple(due)


def _accrued(budget: budget_rules.Budget, due: tuple[_Accrual, ...], now: datetime) -> budget_rules.Budget | None:
    """`budget` with every accrual in `due` added once (in one write); None if all were counted."""
    accrued = budget
    for accrual in due:
        added = budget_rules.accrue(
            accrued, accrual.id, accrual.usd, now, accrual.reservation, accrual.ended_at, accrual.hold_until
        )
        accrued = added or accrued
    return None if accrued is budget else accrued


def _marked(job: Job, done: frozenset[str], now: datetime) -> Job | None:
    """The accruals in `done` marked on their runs; the flag cleared unless one came due since."""
    if not job.accrual_pending:
        return None
    runs = [_marked_run(run, done) for run in job.runs]
    # A run that ended, or was reported late, since we looked stays pending for the next settle.
    return job.model_copy(update={"runs": runs, "accrual_pending": bool(_due(runs))})


def _marked_run(run: Run, done: frozenset[str]) -> Run:
    if run.run_id in done:
        run = run.model_copy(update={"accrued": True})
    if run.late_report is not None and late_id(run) in done:
        run = run.model_copy(update={"late_report": run.late_report.model_copy(update={"accrued": True})})
    return run


def replay_pending(ctx: Context) -> int:
    """The sweep's part: finish every accrual a crash interrupted."""
    if not ctx.settings.budgets:
        return 0
    query = store.Query("jobs", None, (store.Filter("accrualPending", "=", True),), limit=200)
    pending = list(store.query_all(ctx.store, query))
    failed = batch.each(pending, lambda doc: settle(ctx, Job.from_doc(doc)))
    return len(pending) - failed
