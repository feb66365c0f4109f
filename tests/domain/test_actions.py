"""Operator actions: `ship`, `requeue`, `reject`, `cancel`. Lease-free: they work whatever holds
the job, and revoke its lease, so the old holder's next write is `LeaseLost`."""
from __future__ import annotations

import pytest

from fleet import actions, errors
from fleet.jobs import job_id
from fleet.stages import RunResult, Stage

from fleet.testing import PRODUCT, interleaved

Action = actions.Action


def act(ctx, job, action, **kw):
    return actions.apply(ctx, job.id, action, **kw)


# ship


def test_ship_a_parked_job_mirrors_the_outcome_onto_its_run(world, ctx, running_job, clock):
    # Given a job parked at testing: its run ended without a result
    job = running_job(stage="testing")
    parked = world.release(job, stage="testing")
    ended_at = parked.latest_run.ended_at
    clock.advance(3600)
    # When an operator ships it
    shipped = act(ctx, job, Action.SHIP, actor="alice", reason="looks good")
    # Then it is shipped, and its run says so, keeping the time the run ended
    assert shipped.stage == Stage.SHIPPED
    assert (shipped.latest_run.result, shipped.latest_run.ended_at) == (RunResult.SHIPPED, ended_at)
    assert (shipped.events[-1].type, shipped.events[-1].actor, shipped.events[-1].detail) == (
        "ship",
        "alice",
        {"reason": "looks good"},
    )


def test_ship_a_running_job_revokes_its_lease(world, ctx, running_job, clock):
    job = running_job(stage="building")
    shipped = act(ctx, job, Action.SHIP)
    assert (shipped.stage, shipped.lease) == (Stage.SHIPPED, None)
    assert (shipped.latest_run.result, shipped.latest_run.ended_at) == (RunResult.SHIPPED, clock.now())
    with pytest.raises(errors.LeaseLost):
        world.patch(job, "review")


def test_a_blocked_job_is_not_shipped_past_its_deps(world, ctx):
    # Regression: an operator's ship shipped a job still waiting on its deps (a composite on
    # its unfinished children), releasing whatever waited on it
    world.submit_job("dep")
    job = world.submit_job("waiting", deps=["dep"])
    assert job.stage == Stage.BLOCKED and Action.SHIP not in actions.available(job)
    with pytest.raises(errors.IllegalTransition, match=r"blocked on dep \(queued\); ship those first"):
        act(ctx, job, Action.SHIP)
    assert world.job(job).stage == Stage.BLOCKED
    # a dep cancelled since is named as it stands: the job stays blocked on it
    act(ctx, world.job(job_id(job.product_id, "dep")), Action.CANCEL)
    with pytest.raises(errors.IllegalTransition, match=r"blocked on dep \(cancelled\)"):
        act(ctx, job, Action.SHIP)


def test_ship_on_a_shipped_job_is_a_no_op(world, ctx, running_job, clock):
    job = running_job(stage="testing")
    first = world.patch(job, "shipped")
    clock.advance(60)
    again = act(ctx, job, Action.SHIP)
    assert again == first
    assert again.updated_at == first.updated_at
    assert len(again.events) == len(first.events)


@pytest.mark.parametrize("terminal", ["done", "failed", "dead_letter", "cancelled"])
def test_ship_on_another_terminal_stage_is_illegal(world, ctx, make_job, terminal):
    job = make_job("job", stage=terminal)
    with pytest.raises(errors.IllegalTransition):
        act(ctx, job, Action.SHIP)
    assert world.job(job).stage == Stage(terminal)


# requeue


def test_requeue_revokes_the_lease_and_resets_attempts(world, ctx, make_job, claim, clock):
    # Given a job on its third attempt, being built
    make_job("job", attempts=2)
    job = claim().job
    job = world.patch(job, "building")
    version = world.version()
    # When an operator requeues it
    requeued = act(ctx, job, Action.REQUEUE)
    # Then it is queued afresh: no lease, attempts reset, the run released
    assert (requeued.stage, requeued.lease, requeued.attempts) == (Stage.QUEUED, None, 0)
    assert (requeued.latest_run.result, requeued.latest_run.ended_at) == (RunResult.RELEASED, clock.now())
    # and the old holder is fenced out
    with pytest.raises(errors.LeaseLost):
        world.patch(job, "review")
    with pytest.raises(errors.LeaseLost):
        world.release(job, stage="shipped")
    # and idle factories hear of it
    assert world.version() == version + 1


@pytest.mark.parametrize("terminal", ["shipped", "done", "failed", "dead_letter", "cancelled"])
def test_requeue_brings_back_a_terminal_job(world, ctx, make_job, terminal):
    job = make_job("job", stage=terminal, attempts=3)
    requeued = act(ctx, job, Action.REQUEUE)
    assert (requeued.stage, requeued.attempts) == (Stage.QUEUED, 0)
    assert world.claim().job.id == job.id


def test_requeue_of_a_job_with_unmet_deps_blocks_it(world, ctx, running_job, submit_job, make_job):
    # Given a job that ran once its dep shipped, and the dep was later requeued
    dep = running_job("dep", stage="testing")
    job = submit_job("job", deps=["dep"])
    world.patch(dep, "shipped")
    act(ctx, dep, Action.REQUEUE)
    version = world.version()
    # When the operator requeues the dependent
    requeued = act(ctx, job, Action.REQUEUE)
    # Then it waits for its dep again, and nothing new is claimable on its account
    assert requeued.stage == Stage.BLOCKED
    assert [(b.idempotency_key, b.stage) for b in requeued.blocked_on] == [("dep", Stage.QUEUED)]
    assert world.version() == version


# reject and cancel


@pytest.mark.parametrize("action, stage", [(Action.REJECT, Stage.FAILED), (Action.CANCEL, Stage.CANCELLED)])
@pytest.mark.parametrize("from_stage", ["queued", "blocked", "testing"])
def test_reject_fails_and_cancel_cancels_a_waiting_job(world, ctx, make_job, action, stage, from_stage):
    job = make_job("job", stage=from_stage)
    after = act(ctx, job, action, reason="not needed", actor="bob")
    assert after.stage == stage
    assert (after.events[-1].type, after.events[-1].actor) == (action.value, "bob")
    assert world.claim().job is None


def test_cancel_a_running_job_ends_its_run_as_cancelled(world, ctx, running_job, clock):
    job = running_job(stage="building")
    cancelled = act(ctx, job, Action.CANCEL)
    assert (cancelled.stage, cancelled.lease) == (Stage.CANCELLED, None)
    assert (cancelled.latest_run.result, cancelled.latest_run.ended_at) == (RunResult.CANCELLED, clock.now())
    with pytest.raises(errors.LeaseLost):
        world.patch(job, "review")


def test_reject_a_running_job_ends_its_run_as_cancelled(world, ctx, running_job):
    job = running_job(stage="building")
    rejected = act(ctx, job, Action.REJECT)
    assert rejected.stage == Stage.FAILED
    assert rejected.latest_run.result == RunResult.CANCELLED


def test_a_retried_run_keeps_its_result_when_the_job_is_cancelled(world, ctx, running_job):
    job = running_job(stage="building")
    world.release(job, result="retry")
    cancelled = act(ctx, job, Action.CANCEL)
    assert cancelled.latest_run.result == RunResult.RETRY


@pytest.mark.parametrize("action, stage", [(Action.REJECT, "failed"), (Action.CANCEL, "cancelled")])
def test_reject_and_cancel_are_idempotent(world, ctx, make_job, action, stage):
    job = make_job("job", stage=stage)
    assert act(ctx, job, action) == world.job(job)


@pytest.mark.parametrize(
    "action, terminal",
    [(Action.REJECT, "shipped"), (Action.REJECT, "cancelled"), (Action.CANCEL, "shipped"), (Action.CANCEL, "done")],
)
def test_reject_and_cancel_of_another_terminal_stage_are_illegal(ctx, make_job, action, terminal):
    job = make_job("job", stage=terminal)
    with pytest.raises(errors.IllegalTransition):
        act(ctx, job, action)


@pytest.mark.parametrize("id", [job_id(PRODUCT, "never"), "not-an-id"])
@pytest.mark.parametrize("action", list(Action))
def test_an_action_on_an_unknown_job_is_not_found(ctx, id, action):
    with pytest.raises(errors.NotFound):
        actions.apply(ctx, id, action)


def test_requeue_of_a_parked_job_gives_its_run_a_result(world, ctx, running_job):
    # Given a job parked at testing (its run ended, awaiting review)
    job = running_job(stage="testing")
    world.release(job, stage="testing")
    # When an operator sends it back to the queue instead of shipping it
    requeued = act(ctx, job, Action.REQUEUE)
    # Then its run says how it ended
    assert requeued.stage == Stage.QUEUED
    assert requeued.latest_run.result == RunResult.RELEASED


def test_an_action_that_loses_a_race_re_reads_and_still_applies(world, running_job):
    # Given a factory that writes a note right after the operator's ship read the job
    job = running_job(stage="testing")
    note = lambda: world.patch(job, "testing", note="still verifying")  # noqa: E731
    ctx = interleaved(world, "read", note, when=lambda container, pk, id: id == job.id)
    # When the ship's conditional write fails on the changed job
    shipped = actions.apply(ctx, job.id, Action.SHIP)
    # Then it decides again on the job as it now is, and ships it
    assert (shipped.stage, shipped.lease) == (Stage.SHIPPED, None)
    assert ctx.store.calls["patch:jobs"] == 2
