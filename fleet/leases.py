"""Fenced factory writes: a lease holder moves its job (PATCH) or ends its lease (release).

Every write names a `leaseId`; unless it is the job's current lease and live (`fleet.liveness`:
by the job's own expiry or its factory's heartbeat; or held for an outage, see `fleet.outage`)
the write is refused with `lease_lost` and nothing changes, so a
factory that lost its lease (expired, preempted, requeued) can never overwrite the job's newer
owner.

Retries are safe. A write that ends its own lease (every release, and the autoship PATCH to
`shipped`) is remembered on the run it ends (`Run.ended_by`: the lease and a digest of the
write). The same write repeated by the same lease — its answer was lost — is answered with the
job as it stands and changes nothing: no second attempt, accrual or run end. Any other write
by that lease is still `lease_lost`.

A lease taken from its holder (preempted, expired and requeued, given back by an operator) may
still report, once, what its run did (`report`): the run's cost would otherwise never reach the
budget, since a factory learns the cost as its command ends, after the lease is gone. The report
changes nothing of the job but that run's `lateReport`, and its cost beyond what the holder had
reported is accrued once, as its own accrual (`{runId}:late`). A lease past its expiry is lost
as soon as its writes are refused, before the sweep takes it off the job: it may report then.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from fleet import effects, errors, lifecycle, liveness, outage, weight_registry, writes
from fleet.context import Context
from fleet.jobs import Job, LateReport, LeaseEnd, product_of
from fleet.schemas import PatchBody, ReleaseBody, ReleaseResult, ReportBody
from fleet.stages import ACTIVE, TERMINAL, RunResult, Stage, check_factory_move


def request_digest(write: str, body: BaseModel) -> str:
    """What identifies a write for its retries: its kind and its body as sent (fields left at
    their defaults do not count, so a field added later does not tell a retry from its first)."""
    sent = body.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    text = json.dumps({"write": write, "body": sent}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _write(
    ctx: Context,
    id: str,
    lease_id: str,
    write: str,
    body: BaseModel,
    change,
    keyed_with: weight_registry.Snapshot | None = None,
) -> Job:
    """Apply `change(job, now) -> Job` if `lease_id` is the job's live lease (`fleet.liveness`:
    its own expiry, or its factory's heartbeat; once the job's own expiry has passed, its
    factory's document is read before deciding, and only then; past its effective expiry too,
    the outage record, for a lease held for an outage); answer a repeat of the write that ended
    that lease with the job as it stands. A write that keeps the lease refreshes the job's own
    expiry to a lease term from now in the same write, so the next write decides on the job
    alone. A factory principal writes only leases its own factory holds (`Forbidden` otherwise).

    The job this process last wrote or read is decided on first, without reading it
    (`writes.recall`): a decision on it is trusted only if it writes, so a refusal or a repeat
    found there, or a lost race, reads the job and decides again, its standing and all."""
    digest = request_digest(write, body)
    now = ctx.clock.now()
    term = timedelta(seconds=ctx.settings.lease_seconds)

    def fenced(job: Job, standing: outage.Standing, now) -> Job | None:
        # A lease that is not the job's (any more) is lost, whoever holds the job now: its
        # holder learns so, and a repeat of its own last write is answered (`_repeated`).
        if job.lease is not None and job.lease.lease_id == lease_id and not ctx.principal.holds(job.lease.factory_id):
            raise errors.Forbidden(f"job {id} is leased to another factory than this principal's")
        if outage.held(job, lease_id, now, standing):
            changed = change(job, now)
            if changed.lease is None:  # this write ends the lease: remember it on its run
                return changed.with_latest_run(ended_by=LeaseEnd(lease_id=lease_id, write=write, digest=digest))
            return _refreshed(job, changed, standing, now, term)
        if _repeated(ctx, job, lease_id, digest):
            return None  # already done: nothing to write, the job as it stands is the answer
        raise errors.LeaseLost(f"lease {lease_id} is not the live lease of job {id}")

    def decided_on(current: Job, recalled: bool) -> Job:
        standing = outage.grace_for(ctx, current, lease_id, now)
        try:
            return effects.change(
                ctx, id, fenced, standing, current=current, now=now, recalled=recalled, keyed_with=keyed_with
            ).job
        except errors.LeaseLost:
            outage.lost(ctx, standing, now)  # so no later outage gap holds this lease again
            raise

    remembered = writes.recall(ctx, id)
    if remembered is not None:
        try:
            return decided_on(remembered, True)
        except writes.Stale:
            pass  # this process's copy is out of date, or refused: decide on the job as stored
    return decided_on(writes.read(ctx, id), False)


def _refreshed(job: Job, changed: Job, standing: outage.Standing, now: datetime, term: timedelta) -> Job:
    """`changed` (by a write that keeps `job`'s lease) with the lease's own expiry a term from
    now, no longer `spared`; a lease that lived on only for an outage says so."""
    lease = changed.lease.model_copy(update={"expires_at": now + term, "spared": False})
    refreshed = changed.model_copy(update={"lease": lease})
    if not liveness.live(job.lease, standing.factory, now):
        refreshed = refreshed.with_event(now, "lease_renewed", job.lease.factory_id, reason="outage")
    return refreshed


def _repeated(ctx: Context, job: Job, lease_id: str, digest: str) -> bool:
    """Whether `lease_id` ended its own lease on this job with exactly this write. A different
    write by that lease is `LeaseLost`; a repeat by a principal of another factory than the
    run's, `Forbidden`."""
    run = next((run for run in reversed(job.runs) if run.ended_by and run.ended_by.lease_id == lease_id), None)
    if run is None:
        return False
    if not ctx.principal.holds(run.factory_id):
        raise errors.Forbidden(f"lease {lease_id} was another factory's than this principal's")
    ended = run.ended_by
    if ended.digest != digest:
        raise errors.LeaseLost(f"lease {lease_id} already ended with a different {ended.write} of job {job.id}")
    return True


def patch(ctx: Context, id: str, body: PatchBody) -> Job:
    """Move the job to `body.stage` (see `stages.check_factory_move`); record note/insights."""

    def change(job: Job, now) -> Job:
        factory = job.lease.factory_id
        check_factory_move(job.stage, body.stage)
        insights = body.insights.model_dump(exclude_none=True) if body.insights else None
        if body.stage == Stage.SHIPPED and lifecycle.awaits_review(job):
            return lifecycle.parked_for_review(job, now, factory, Stage.SHIPPED, insights=insights or {})
        if body.stage == Stage.SHIPPED:
            job = lifecycle.finished(job, now, Stage.SHIPPED, insights=insights)
        else:
            job = job.model_copy(update={"stage": body.stage})
            if insights:
                job = job.with_latest_run(insights={**job.latest_run.insights, **insights})
        detail = {"note": body.note} if body.note else {}
        return job.with_event(now, "stage", factory, stage=body.stage.value, **detail)

    return _write(ctx, id, body.lease_id, "patch", body, change)


def release(ctx: Context, id: str, body: ReleaseBody) -> Job:
    """End the lease. With a terminal `stage`/`result` the job finishes; `stage: testing` parks
    it lease-free for the review gate; `result: retry` counts an attempt, and the job waits its
    backoff (`lifecycle.retry_wait`) before a claim may take it; neither gives it back to the
    queue with its checkpoint, attempts unchanged, claimable at once."""
    target = _release_target(body)
    product_id = product_of(id)
    # Only a release that may queue the job keys it (and checks the key after its bump).
    queues = target not in TERMINAL and target != Stage.TESTING
    keyed_with = weight_registry.cached(ctx, product_id) if product_id and queues else None
    weights = keyed_with.weights if keyed_with else None
    report = _run_report(body)

    def change(job: Job, now) -> Job:
        factory = job.lease.factory_id
        if body.checkpoint is not None:
            job = job.model_copy(update={"checkpoint": body.checkpoint})
        if target in (Stage.SHIPPED, Stage.DONE) and lifecycle.awaits_review(job):
            return lifecycle.parked_for_review(job, now, factory, target, **report)
        if target in TERMINAL:
            job = lifecycle.finished(job, now, target, **report)
        elif target == Stage.TESTING:
            if job.stage not in ACTIVE:
                raise errors.IllegalTransition(f"cannot park a {job.stage.value} job at testing")
            job = lifecycle.parked(job, now, **report)
        elif target == "retry":
            settings = ctx.settings
            wait = lifecycle.retry_wait(job.attempts + 1, settings.retry_backoff_seconds, settings.retry_backoff_max_seconds)
            ended = lifecycle.end_run(job, now, None, **report)
            job = lifecycle.retried(ended, now, weights, RunResult.RETRY, factory, wait)
        else:
            job = lifecycle.requeued(lifecycle.end_run(job, now, RunResult.RELEASED, **report), now, weights)
        return job.with_event(now, "released", factory, stage=job.stage.value)

    return _write(ctx, id, body.lease_id, "release", body, change, keyed_with)


def report(ctx: Context, id: str, body: ReportBody) -> Job:
    """Record what the run held under `body.lease_id` did, reported after that lease was taken
    from its holder: on that run only, once (the same report again is answered with the job as
    it stands). Refused while the lease holds the job (PATCH or release it), for a run its
    holder ended itself (that write carried its report), and for a lease that ran no run the
    job keeps. A lease past its expiry that the sweep has not yet taken off the job is lost
    already (its writes are refused): its report waits on the open run, and is accrued once
    the sweep ends it."""
    digest = request_digest("report", body)
    reported = _run_report(body)
    now = ctx.clock.now()

    def change(job: Job, standing: outage.Standing, now: datetime) -> Job | None:
        at = _reported_run(job, body.lease_id, standing, now)
        run = job.runs[at]
        if not ctx.principal.holds(run.factory_id):
            raise errors.Forbidden(f"the run under lease {body.lease_id} was another factory's than this principal's")
        if run.late_report is not None:
            if run.late_report.digest == digest:
                return None  # a repeat: the job as it stands is the answer
            raise errors.IdempotencyConflict(f"run {run.run_id} was already reported, with a different body")
        if run.ended_by is not None:
            raise errors.IllegalTransition(f"run {run.run_id} was ended by its holder's own {run.ended_by.write}")
        late = run.model_copy(update={"late_report": LateReport(at=now, digest=digest, **reported)})
        changed = job
        if late.ended_at is not None and not late.late_usd:  # it adds nothing to the run's own accrual
            late = late.model_copy(update={"late_report": late.late_report.model_copy(update={"accrued": True})})
        elif late.ended_at is not None:  # an open run's end sets the flag (`lifecycle.end_run`)
            changed = job.model_copy(update={"accrual_pending": True})
        runs = [*job.runs[:at], late, *job.runs[at + 1:]]
        return changed.model_copy(update={"runs": runs}).with_event(now, "run_reported", run.factory_id, runId=run.run_id)

    current = writes.read(ctx, id)
    standing = outage.grace_for(ctx, current, body.lease_id, now)
    reported_job = effects.change(ctx, id, change, standing, current=current, now=now).job
    outage.lost(ctx, standing, now)  # the lease is taken for lost: no later gap holds it again
    return reported_job


def _reported_run(job: Job, lease_id: str, standing: outage.Standing, now: datetime) -> int:
    """The index of the run `lease_id` held: an ended one that names it, or the open run of
    the job's own lease once that lease no longer holds (`outage.held`)."""
    if job.lease is not None and job.lease.lease_id == lease_id:
        if outage.held(job, lease_id, now, standing):
            raise errors.IllegalTransition(f"lease {lease_id} still holds job {job.id}: PATCH or release it")
        run = job.latest_run
        if run is not None and run.ended_at is None:
            return len(job.runs) - 1
    at = next((n for n in range(len(job.runs) - 1, -1, -1) if job.runs[n].lease_id == lease_id), None)
    if at is None:
        raise errors.NotFound(f"job {job.id} keeps no run held under lease {lease_id}")
    return at


def _run_report(body: ReleaseBody | ReportBody) -> dict[str, Any]:
    """What a release or a late report says of its run, as a run keeps it."""
    return {
        "insights": body.insights.model_dump(exclude_none=True) if body.insights else {},
        "pr_url": body.pr_url,
        "branch": body.branch,
        "artifacts": [a if isinstance(a, str) else a.model_dump(exclude_none=True) for a in body.artifacts],
    }


def _release_target(body: ReleaseBody) -> Stage | ReleaseResult | None:
    """What the release asks for: a terminal stage, `testing` (park), `retry`, or None (give back)."""
    by_result = {
        ReleaseResult.SHIPPED: Stage.SHIPPED,
        ReleaseResult.DONE: Stage.DONE,
        ReleaseResult.FAILED: Stage.FAILED,
        ReleaseResult.RETRY: ReleaseResult.RETRY,
        ReleaseResult.RELEASED: None,
    }
    from_result = by_result[body.result] if body.result else None
    if body.stage is not None:
        if body.stage not in TERMINAL | {Stage.TESTING} or body.stage in (Stage.DEAD_LETTER, Stage.CANCELLED):
            raise errors.ValidationFailed(
                f"a release may name stage shipped, done, failed or testing, not {body.stage.value}",
                [{"field": "stage", "message": "not a stage a release can end in"}],
            )
        if body.result and from_result != body.stage:
            raise errors.ValidationFailed(
                f"stage {body.stage.value} and result {body.result.value} disagree",
                [{"field": "result", "message": "disagrees with stage"}],
            )
        return body.stage
    return from_result
