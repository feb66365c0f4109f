"""Fenced factory writes: only the job's live lease may PATCH or release it, and only along the
allowed moves. A wrong, expired or superseded lease gets `LeaseLost` and changes nothing."""
from __future__ import annotations

from datetime import timedelta

import pydantic
import pytest

from fleet import actions, budget_rules, budgets, errors, leases, scoring, spend, store as store_port, sweep
from fleet.context import Context, Settings
from fleet.jobs import job_id
from fleet.schemas import PatchBody, ReleaseBody
from fleet.stages import RunResult, Stage

from fleet.testing import LEASE_SECONDS, PRODUCT, open_world


# PATCH: the moves a lease holder may make


@pytest.mark.parametrize(
    "current, target",
    [
        ("assigned", "building"),
        ("assigned", "review"),  # skipping ahead is allowed
        ("assigned", "testing"),
        ("building", "review"),
        ("building", "testing"),
        ("review", "testing"),
        ("review", "building"),  # rework
        ("testing", "shipped"),  # autoship
        ("building", "building"),  # a note on the same stage
        ("testing", "testing"),
    ],
)
def test_a_lease_holder_may_move_its_job_forward_or_back_to_rework(world, running_job, current, target):
    job = running_job(stage=current)
    moved = world.patch(job, target)
    assert moved.stage == Stage(target)
    assert moved.events[-1].type == "stage"
    assert world.job(job).stage == Stage(target)


@pytest.mark.parametrize(
    "current, target",
    [
        ("building", "assigned"),  # backwards
        ("review", "assigned"),
        ("testing", "review"),
        ("testing", "building"),
        ("assigned", "shipped"),  # ships only from testing
        ("building", "shipped"),
        ("review", "shipped"),
        ("building", "queued"),  # giving work back is a release, not a PATCH
        ("building", "done"),  # finishing is a release
        ("building", "failed"),
        ("assigned", "blocked"),
        ("testing", "dead_letter"),
        ("testing", "cancelled"),
    ],
)
def test_any_other_move_is_an_illegal_transition_that_changes_nothing(world, running_job, current, target):
    job = running_job(stage=current)
    with pytest.raises(errors.IllegalTransition):
        world.patch(job, target)
    after = world.job(job)
    assert (after.stage, after.updated_at, after.lease) == (job.stage, job.updated_at, job.lease)


def test_a_patch_records_its_note_and_insights_on_the_run(world, running_job):
    job = running_job(stage="building")
    world.patch(job, "building", note="halfway", insights={"costUsd": 0.5, "tokensIn": 100})
    moved = world.patch(job, "review", insights={"tokensOut": 7, "model": "m-1"})
    assert moved.events[-2].detail == {"stage": "building", "note": "halfway"}
    # insights merge across PATCHes; unknown keys are kept
    assert moved.latest_run.insights == {"costUsd": 0.5, "tokensIn": 100, "tokensOut": 7, "model": "m-1"}


def test_autoship_ends_the_lease_and_the_run(world, running_job, clock):
    job = running_job(stage="testing")
    clock.advance(60)
    shipped = world.patch(job, "shipped", insights={"costUsd": 1.25})
    assert shipped.stage == Stage.SHIPPED
    assert shipped.lease is None
    assert shipped.latest_run.result == RunResult.SHIPPED
    assert shipped.latest_run.ended_at == clock.now()
    assert shipped.latest_run.insights == {"costUsd": 1.25}


# PATCH: the fence


def test_a_wrong_lease_id_is_lease_lost_and_changes_nothing(world, running_job):
    job = running_job(stage="building")
    with pytest.raises(errors.LeaseLost):
        world.patch(job, "review", lease_id="not-the-lease")
    assert world.job(job).stage == Stage.BUILDING


@pytest.mark.parametrize(
    "seconds_later, live",
    [
        (0, True),
        (LEASE_SECONDS - 1, True),  # 299 s: still live
        (LEASE_SECONDS, False),  # at expiresAt the lease is over
        (LEASE_SECONDS + 1, False),
    ],
)
def test_an_expired_lease_is_fenced_before_any_sweep(world, running_job, clock, seconds_later, live):
    # Given a factory that stopped renewing its lease, and no sweep has run
    job = running_job(stage="building")
    clock.advance(seconds_later)
    # When it PATCHes, Then only a live lease may write
    if live:
        assert world.patch(job, "review").stage == Stage.REVIEW
    else:
        with pytest.raises(errors.LeaseLost):
            world.patch(job, "review")
        with pytest.raises(errors.LeaseLost):
            world.release(job, stage="shipped")
        assert world.job(job).stage == Stage.BUILDING


def test_a_superseded_lease_is_lease_lost(world, running_job, ctx, claim):
    # Given factory-1's job was requeued by an operator and factory-2 claimed it
    old = running_job(stage="building", factory="factory-1")
    actions.apply(ctx, old.id, actions.Action.REQUEUE)
    new = claim("factory-2").job
    assert new.id == old.id
    # When the zombie factory-1 writes with its old lease, Then it is fenced
    with pytest.raises(errors.LeaseLost):
        world.patch(old, "review")
    with pytest.raises(errors.LeaseLost):
        world.release(old, result="retry")
    # and the new owner is untouched
    after = world.job(new)
    assert (after.stage, after.lease, after.attempts) == (Stage.ASSIGNED, new.lease, 0)


def test_a_released_lease_cannot_write_anything_else(world, running_job):
    job = running_job(stage="building")
    world.release(job)
    with pytest.raises(errors.LeaseLost):
        world.patch(job, "review")
    with pytest.raises(errors.LeaseLost):
        world.release(job, result="retry")


@pytest.mark.parametrize("id", ["nonsense", "acme:short", "bad product:abcdefghijklmnopqrst", job_id(PRODUCT, "never")])
def test_writing_an_unknown_or_malformed_job_is_not_found(ctx, id):
    with pytest.raises(errors.NotFound):
        leases.patch(ctx, id, PatchBody(lease_id="lease", stage="building"))
    with pytest.raises(errors.NotFound):
        leases.release(ctx, id, ReleaseBody(lease_id="lease"))


# Release


@pytest.mark.parametrize(
    "body, stage, result",
    [
        ({"stage": "shipped"}, Stage.SHIPPED, RunResult.SHIPPED),
        ({"result": "shipped"}, Stage.SHIPPED, RunResult.SHIPPED),
        ({"stage": "shipped", "result": "shipped"}, Stage.SHIPPED, RunResult.SHIPPED),
        ({"stage": "done"}, Stage.DONE, RunResult.DONE),
        ({"result": "done"}, Stage.DONE, RunResult.DONE),
        ({"stage": "failed"}, Stage.FAILED, RunResult.FAILED),
        ({"result": "failed"}, Stage.FAILED, RunResult.FAILED),
    ],
)
@pytest.mark.parametrize("from_stage", ["assigned", "building", "review", "testing"])
def test_a_terminal_release_finishes_the_job_from_any_active_stage(world, running_job, clock, body, stage, result, from_stage):
    job = running_job(stage=from_stage)
    clock.advance(90)
    released = world.release(job, **body)
    assert released.stage == stage
    assert released.lease is None
    assert (released.latest_run.result, released.latest_run.ended_at) == (result, clock.now())
    assert released.attempts == 0


def test_releasing_at_testing_parks_the_job_lease_free(world, running_job, clock, ctx):
    # Given a factory with autoship off finishes its checks
    job = running_job(stage="building")
    clock.advance(120)
    # When it releases with stage testing
    parked = world.release(job, stage="testing", pr_url="https://example.com/pr/7")
    # Then the job rests at testing with no lease and its run ended, awaiting review or a ship
    assert parked.stage == Stage.TESTING
    assert parked.lease is None
    assert parked.latest_run.ended_at == clock.now()
    assert parked.latest_run.result is None
    assert parked.latest_run.pr_url == "https://example.com/pr/7"
    # and the sweep leaves it alone, however long it waits
    clock.advance(days=3)
    sweep.run(ctx)
    assert world.job(job).stage == Stage.TESTING


@pytest.mark.parametrize(
    "max_attempts, attempts_before, stage_after, attempts_after",
    [
        (3, 0, Stage.QUEUED, 1),  # 0 + 1 < 3: back to the queue
        (3, 1, Stage.QUEUED, 2),  # 1 + 1 < 3
        (3, 2, Stage.DEAD_LETTER, 3),  # 2 + 1 = 3: out of attempts
        (1, 0, Stage.DEAD_LETTER, 1),  # a single shot
        (10, 8, Stage.QUEUED, 9),
        (10, 9, Stage.DEAD_LETTER, 10),
    ],
)
def test_a_retry_release_counts_an_attempt_and_dead_letters_at_max_attempts(
    world, make_job, claim, max_attempts, attempts_before, stage_after, attempts_after
):
    make_job("job", attempts=attempts_before, max_attempts=max_attempts)
    job = claim().job
    released = world.release(job, result="retry")
    assert (released.stage, released.attempts, released.lease) == (stage_after, attempts_after, None)
    assert released.latest_run.result == RunResult.RETRY
    if stage_after == Stage.QUEUED:
        # its rank key carries the retry penalty: 10*1 - 2*attempts - createdAtMinutes
        assert released.rank_key == scoring.rank_key(1, attempts_after, job.created_at, scoring.DEFAULTS)


def test_a_release_with_neither_stage_nor_result_gives_the_job_back(world, running_job, clock):
    job = running_job(stage="review")
    released = world.release(job, checkpoint={"step": 3, "notes": ["tests pass"]})
    assert released.stage == Stage.QUEUED
    assert released.lease is None
    assert released.attempts == job.attempts == 0
    assert released.checkpoint == {"step": 3, "notes": ["tests pass"]}
    assert released.latest_run.result == RunResult.RELEASED
    assert released.rank_key == job.rank_key


def test_result_released_is_a_give_back_too(world, running_job):
    assert world.release(running_job(), result="released").stage == Stage.QUEUED


@pytest.mark.parametrize(
    "body",
    [
        {"stage": "shipped", "result": "failed"},  # stage and result disagree
        {"stage": "done", "result": "retry"},
        {"stage": "testing", "result": "shipped"},
        {"stage": "testing", "result": "released"},
        {"stage": "queued"},  # not a stage a release ends in
        {"stage": "building"},
        {"stage": "cancelled"},
        {"stage": "dead_letter"},
    ],
)
def test_a_release_that_contradicts_itself_is_a_validation_error_and_changes_nothing(world, running_job, body):
    job = running_job(stage="building")
    with pytest.raises(errors.ValidationFailed):
        world.release(job, **body)
    after = world.job(job)
    assert (after.stage, after.lease) == (Stage.BUILDING, job.lease)


def test_a_release_records_what_the_factory_reports_on_the_run(world, running_job):
    job = running_job(stage="testing")
    world.patch(job, "testing", insights={"tokensIn": 10})
    released = world.release(
        job,
        stage="shipped",
        insights={"costUsd": 2.5, "tokensOut": 99},
        pr_url="https://github.com/acme/app/pull/42",
        branch="fleet/job-42",
        artifacts=["build.log", {"name": "report", "url": "https://example.com/r.html"}],
    )
    run = released.latest_run
    assert run.insights == {"tokensIn": 10, "costUsd": 2.5, "tokensOut": 99}
    assert run.pr_url == "https://github.com/acme/app/pull/42"
    assert run.branch == "fleet/job-42"
    assert run.artifacts == ["build.log", {"name": "report", "url": "https://example.com/r.html"}]


@pytest.mark.parametrize(
    "body",
    [
        {"leaseId": "l", "prUrl": "ftp://example.com/x"},
        {"leaseId": "l", "branch": "bad..branch"},
        {"leaseId": "l", "result": "shipped!"},
        {"leaseId": "l", "insights": {"costUsd": -1}},
        {"leaseId": "l", "surprise": True},
        {"stage": "shipped"},  # no lease named
    ],
)
def test_release_bodies_are_validated(body):
    with pytest.raises(pydantic.ValidationError):
        ReleaseBody.model_validate(body)


# Retries: a write repeated after a lost answer gets the answer it would have had

#: Every write that ends its own lease, from a building job.
ENDING_RELEASES = [
    pytest.param({"stage": "shipped", "insights": {"costUsd": 1.5}}, id="ship"),
    pytest.param({"result": "done"}, id="done"),
    pytest.param({"stage": "failed", "insights": {"costUsd": 0.5}}, id="fail"),
    pytest.param({"result": "retry", "insights": {"costUsd": 0.25}}, id="retry"),
    pytest.param({"stage": "testing", "prUrl": "https://example.com/pr/1"}, id="park"),
    pytest.param({"checkpoint": {"step": 2}}, id="give-back"),
]


@pytest.mark.parametrize("body", ENDING_RELEASES)
def test_a_repeated_release_is_answered_with_the_job_and_applied_once(world, running_job, clock, body):
    # Given a factory whose release was applied but whose answer was lost
    job = running_job(stage="building")
    clock.advance(30)
    first = world.release(job, **body)
    # When it sends the same release again, later
    clock.advance(30)
    again = world.release(job, **body)
    # Then it gets the job as the first release left it: nothing written twice
    assert again == first
    assert again.etag == first.etag
    assert (again.attempts, len(again.runs), len(again.events)) == (first.attempts, 1, len(first.events))
    assert again.latest_run.ended_at == first.latest_run.ended_at == clock.now() - timedelta(seconds=30)


def test_the_run_remembers_which_lease_ended_it_and_with_what(world, running_job):
    job = running_job(stage="building")
    body = ReleaseBody(lease_id=job.lease.lease_id, result="retry")
    ended = leases.release(world.ctx, job.id, body).runs[0].ended_by
    assert (ended.lease_id, ended.write, ended.digest) == (job.lease.lease_id, "release", leases.request_digest("release", body))


def test_a_repeated_autoship_patch_is_answered_with_the_shipped_job(world, running_job):
    job = running_job(stage="testing")
    shipped = world.patch(job, "shipped", insights={"costUsd": 2.0})
    again = world.patch(job, "shipped", insights={"costUsd": 2.0})
    assert (again.stage, again.etag, again.latest_run.result) == (Stage.SHIPPED, shipped.etag, RunResult.SHIPPED)


@pytest.mark.parametrize(
    "first, then",
    [
        ({"stage": "shipped"}, {"stage": "failed"}),  # a different outcome
        ({"stage": "shipped"}, {"result": "shipped"}),  # the same outcome, asked for otherwise
        ({"stage": "shipped", "insights": {"costUsd": 1}}, {"stage": "shipped", "insights": {"costUsd": 2}}),
        ({"result": "retry"}, {"result": "retry", "checkpoint": {"step": 1}}),
        ({"stage": "testing"}, {}),
    ],
)
def test_a_different_write_by_a_lease_that_ended_itself_is_lease_lost(world, running_job, first, then):
    job = running_job(stage="testing")
    ended = world.release(job, **first)
    with pytest.raises(errors.LeaseLost):
        world.release(job, **then)
    with pytest.raises(errors.LeaseLost):
        world.patch(job, "shipped")
    assert world.job(job).etag == ended.etag


def test_a_release_cannot_repeat_as_a_patch_nor_a_patch_as_a_release(world, running_job):
    shipped_by_patch = running_job("a", stage="testing")
    world.patch(shipped_by_patch, "shipped")
    with pytest.raises(errors.LeaseLost):
        world.release(shipped_by_patch, stage="shipped")
    shipped_by_release = running_job("b", stage="testing")
    world.release(shipped_by_release, stage="shipped")
    with pytest.raises(errors.LeaseLost):
        world.patch(shipped_by_release, "shipped")


def test_a_repeated_retry_release_after_another_factory_claimed_the_job_changes_nothing(world, running_job, claim):
    # Given factory-1 released its job for a retry, and factory-2 claimed it
    old = running_job(stage="building", factory="factory-1")
    world.release(old, result="retry")
    world.wait_out_retry(old)
    new = claim("factory-2").job
    # When factory-1's release arrives again
    again = world.release(old, result="retry")
    # Then it is answered, and the new owner's lease, run and attempts are untouched
    assert (again.lease, again.attempts, len(again.runs)) == (new.lease, 1, 2)
    assert world.job(new).etag == new.etag
    # while any other write by the old lease is still fenced
    with pytest.raises(errors.LeaseLost):
        world.patch(old, "building")
    with pytest.raises(errors.LeaseLost):
        world.release(old, stage="shipped")


def test_a_lease_ended_by_anyone_else_is_not_taken_for_a_retry(world, running_job, ctx, clock):
    # An operator's requeue, a preemption or an expiry ends a run without the holder's write.
    requeued = running_job("requeued", stage="building")
    actions.apply(ctx, requeued.id, actions.Action.REQUEUE)
    expired = running_job("expired", stage="building")
    clock.advance(LEASE_SECONDS + 1)
    sweep.expired_leases(ctx)
    for job in (requeued, expired):
        with pytest.raises(errors.LeaseLost):
            world.release(job, result="retry")
        assert world.job(job).latest_run.ended_by is None


class BudgetsDown(store_port.CountingStore):
    """The store, except that every budget write fails as if the store had gone away."""

    def replace(self, container, doc, etag):
        if container == "budgets":
            raise errors.StoreBusy("budgets unreachable")
        return super().replace(container, doc, etag)

    def patch(self, container, partition_key, id, ops, etag, answer=False):
        if container == "budgets":
            raise errors.StoreBusy("budgets unreachable")
        return super().patch(container, partition_key, id, ops, etag, answer)

    def create(self, container, doc):
        if container == "budgets":
            raise errors.StoreBusy("budgets unreachable")
        return super().create(container, doc)


def test_a_retried_release_finishes_the_accrual_its_first_attempt_left_and_counts_it_once():
    with open_world(Settings(lease_seconds=LEASE_SECONDS, budgets=True)) as world:
        budgets.put(world.ctx, PRODUCT, 100.0, budget_rules.Window.MONTHLY)
        job = world.running_job(stage="building")
        # Given a release whose job write landed but whose accrual could not be applied
        body = ReleaseBody(lease_id=job.lease.lease_id, stage="shipped", insights={"costUsd": 3.0})
        down = Context(BudgetsDown(world.store), world.clock, world.ctx.settings)
        first = leases.release(down, job.id, body)
        assert (first.stage, first.accrual_pending, budgets.find(world.ctx, PRODUCT).spent_usd) == (Stage.SHIPPED, True, 0.0)
        # When the factory, not knowing, sends it again; and the sweep replays accruals too
        again = leases.release(world.ctx, job.id, body)
        spend.replay_pending(world.ctx)
        leases.release(world.ctx, job.id, body)
        # Then the cost is counted once, and the run ended once
        assert budgets.find(world.ctx, PRODUCT).spent_usd == 3.0
        assert (again.stage, again.accrual_pending, again.latest_run.accrued) == (Stage.SHIPPED, False, True)
        assert again.latest_run.ended_at == first.latest_run.ended_at
