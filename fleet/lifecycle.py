"""Pure stage changes of a job: each takes a job and `now` and returns the changed copy.

Callers write the result with one conditional replace and then `effects.settle` the
follow-ups on other documents.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fleet import clock, scoring
from fleet.jobs import Job
from fleet.stages import TERMINAL, RunResult, Stage


def end_run(job: Job, now: datetime, result: RunResult | None, **report: Any) -> Job:
    """Close the latest run (if open) with `result`, merging what the factory reported, and
    record the lease it ran under. A run already closed keeps its end time; a later outcome (a
    parked run shipped) sets its result."""
    run = job.latest_run
    if run is None:
        return job
    update: dict[str, Any] = {"ended_at": run.ended_at or now}
    if run.ended_at is None and job.lease is not None:
        update["lease_id"] = job.lease.lease_id  # what a late report of the run names
    if result is not None:
        update["result"] = result
    if report.get("insights"):
        update["insights"] = {**run.insights, **report["insights"]}
    for name in ("pr_url", "branch"):
        if report.get(name):
            update[name] = report[name]
    if report.get("artifacts"):
        update["artifacts"] = [*run.artifacts, *report["artifacts"]]
    job = job.with_latest_run(**update)
    ended = job.latest_run
    late = ended.late_report is not None and not ended.late_report.accrued
    held = ended.reservation is not None or job.estimated_cost_usd is not None  # a reservation to give back
    if late or (not ended.accrued and (ended.insights.get("costUsd") or held)):
        job = job.model_copy(update={"accrual_pending": True})
    return job


def released(job: Job, now: datetime) -> Job:
    """The latest run ended as `released` if it has no outcome yet (running, or parked at
    testing): an operator or reviewer gave the job back to the queue."""
    run = job.latest_run
    return end_run(job, now, RunResult.RELEASED) if run is not None and run.result is None else job


def requeued(job: Job, now: datetime, weights: scoring.Weights, attempts: int | None = None) -> Job:
    """Back to the queue, lease-free, with a fresh rank key, claimable at once (a job waiting
    to retry that an operator requeues waits no more). An open review gate stays open
    with its quorum, and loses its approvals: they were given to the work the queue is about
    to have redone (by an operator's requeue, a retry, an expiry, a preemption, a rejection)."""
    attempts = job.attempts if attempts is None else attempts
    update: dict[str, Any] = {
        "stage": Stage.QUEUED,
        "lease": None,
        "attempts": attempts,
        "retry_at": None,
        "blocked_on": [],
        "rank_key": scoring.rank_key(job.priority.order, attempts, job.created_at, weights),
        "updated_at": now,
    }
    if job.review and job.review.get("approvals"):
        update["review"] = {**job.review, "approvals": []}
    return job.model_copy(update=update)


def retried(
    job: Job, now: datetime, weights: scoring.Weights, result: RunResult, actor: str | None = None,
    wait: timedelta = timedelta(0),
) -> Job:
    """A failed run: one attempt more, back to the queue, or `dead_letter` at `maxAttempts`;
    the event names `actor` (the lease's factory). `wait`: how long the job waits before a
    claim may take it again (`retry_wait`; zero: claimable at once)."""
    job = end_run(job, now, result)
    attempts = job.attempts + 1
    if attempts >= job.max_attempts:
        return job.model_copy(
            update={"stage": Stage.DEAD_LETTER, "lease": None, "attempts": attempts, "updated_at": now}
        ).with_event(now, "dead_lettered", actor, attempts=attempts)
    queued = requeued(job, now, weights, attempts)
    if wait > timedelta(0):
        queued = queued.model_copy(update={"retry_at": clock.truncated(now + wait)})
    retry_at = {"retryAt": clock.format(queued.retry_at)} if queued.retry_at else {}
    return queued.with_event(now, "retry", actor, attempts=attempts, reason=result.value, **retry_at)


def retry_wait(attempts: int, first: float, longest: float) -> timedelta:
    """How long a job waits after its `attempts`-th failed attempt before it may be claimed
    again: `first` seconds after the first, doubling with each attempt after it, at most
    `longest` (`FLEET_RETRY_BACKOFF_SECONDS`, `FLEET_RETRY_BACKOFF_MAX_SECONDS`); no wait
    for a `first` of 0."""
    if first <= 0 or attempts < 1:
        return timedelta(0)
    return timedelta(seconds=min(longest, first * 2 ** min(attempts - 1, 32)))


def moved_back(job: Job, now: datetime) -> Job | None:
    """A job whose retry wait has passed, claimable again; None if it no longer waits (an
    operator requeued, cancelled or shipped it) or its time has not come."""
    if not job.waiting or job.retry_at > now:
        return None
    return job.model_copy(update={"retry_at": None, "updated_at": now}).with_event(now, "retry_due")


_RESULT_OF = {
    Stage.SHIPPED: RunResult.SHIPPED,
    Stage.DONE: RunResult.DONE,
    Stage.FAILED: RunResult.FAILED,
    Stage.CANCELLED: RunResult.CANCELLED,
    Stage.DEAD_LETTER: RunResult.FAILED,
}


def awaits_review(job: Job) -> bool:
    """Whether the job's review gate is open: requested, and short of its quorum (a return to
    the queue clears its approvals, and a rejection leaves none). Its factory cannot ship it:
    only the quorum, or an operator's `ship`, can."""
    review = job.review
    return review is not None and len(review.get("approvals") or []) < int(review.get("required") or 0)


def parked(job: Job, now: datetime, **report: Any) -> Job:
    """Lease-free at `testing`, the latest run ended with no outcome yet: waiting for the
    review gate or an operator."""
    return end_run(job, now, None, **report).model_copy(update={"stage": Stage.TESTING, "lease": None})


def parked_for_review(job: Job, now: datetime, factory: str, asked: Stage, **report: Any) -> Job:
    """What the factory's move to `asked` (shipped, done) does to a job whose review gate is
    open (`awaits_review`): the gate ships it, not its factory, so it is parked for the
    reviewers instead, and the event says what was asked and why it was not done."""
    return parked(job, now, **report).with_event(
        now, "released", factory, stage=Stage.TESTING.value, asked=asked.value, reason="review gate open"
    )


def finished(job: Job, now: datetime, stage: Stage, result: RunResult | None = None, **report: Any) -> Job:
    """To a terminal stage: the lease ends and the latest run takes the outcome (`result`, or
    the stage's own): a run still open, or one parked for review (ended with no outcome yet).
    A run that already ended keeps how it ended, whatever the job comes to: a retried run stays
    `retry` when its job is later cancelled, and a run given back stays `released` when an
    operator ships the queued job (that factory did not ship it)."""
    assert stage in TERMINAL
    run = job.latest_run
    result = None if (run and run.result) else (result or _RESULT_OF[stage])
    return end_run(job, now, result, **report).model_copy(
        update={"stage": stage, "lease": None, "retry_at": None, "blocked_on": [], "updated_at": now}
    )
