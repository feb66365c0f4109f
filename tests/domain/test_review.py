"""The human review gate: a job resting at `testing` ships on a quorum of approvals by distinct
reviewers (only the named ones, if named); one rejection sends it back to the queue for
rework, the comment in its events."""
from __future__ import annotations

import pytest

from fleet import errors, review
from fleet.stages import RunResult, Stage

from fleet.testing import World, flags_on

#: Budgets and preemption on for every world here.
pytestmark = pytest.mark.settings(flags_on())


def request(world: World, job, required: int = 1, reviewers: list[str] | None = None):
    return review.request(world.ctx, job.id, required, reviewers, actor="lead")


def approve(world: World, job, reviewer: str, comment: str | None = None):
    return review.decide(world.ctx, job.id, reviewer, True, comment)


def reject(world: World, job, reviewer: str, comment: str | None = None):
    return review.decide(world.ctx, job.id, reviewer, False, comment)


# Opening the gate


def test_a_review_opens_on_a_parked_testing_job(world):
    job = world.parked_job("work")
    opened = request(world, job, required=2, reviewers=["bob", "alice", "bob"])
    assert opened.stage == Stage.TESTING
    assert opened.review == {
        "required": 2,
        "reviewers": ["alice", "bob"],  # distinct, sorted
        "approvals": [],
        "requestedAt": "2026-01-05T09:00:00.000Z",
    }
    assert (opened.events[-1].type, opened.events[-1].actor, opened.events[-1].detail) == (
        "review_requested",
        "lead",
        {"required": 2},
    )


@pytest.mark.parametrize("stage", ["queued", "assigned", "building", "review"])
def test_a_review_opens_only_on_a_testing_job(world, stage):
    job = world.submit_job("work") if stage == "queued" else world.running_job("work", stage=stage)
    with pytest.raises(errors.IllegalTransition):
        request(world, job)
    assert world.job(job).review is None


def test_a_shipped_job_cannot_be_reviewed(world):
    job = world.act(world.parked_job("work"), "ship")
    with pytest.raises(errors.IllegalTransition):
        request(world, job)


@pytest.mark.parametrize(
    "reviewers, required",
    [
        (["alice"], 2),  # 1 named < 2 required
        (["alice", "alice"], 2),  # the same reviewer named twice is one reviewer
        (["alice", "bob"], 3),
    ],
)
def test_requiring_more_approvals_than_reviewers_named_is_invalid(world, reviewers, required):
    job = world.parked_job("work")
    with pytest.raises(errors.ValidationFailed) as refused:
        request(world, job, required=required, reviewers=reviewers)
    assert refused.value.errors[0]["field"] == "required"
    assert world.job(job).review is None


def test_deciding_without_an_open_review_is_refused(world):
    job = world.parked_job("work")
    with pytest.raises(errors.IllegalTransition):
        approve(world, job, "alice")


# Deciding


def test_a_quorum_of_distinct_approvals_ships_the_job(world):
    # Given a parked job whose run cost 3, under a budget, needing two approvals
    world.put_budget(100.0)
    job = world.parked_job("work", cost=3.0)
    request(world, job, required=2)
    # When alice approves twice, Then it counts once and the job still waits
    approve(world, job, "alice")
    waiting = approve(world, job, "alice")
    assert (waiting.stage, waiting.review["approvals"]) == (Stage.TESTING, ["alice"])
    # When bob approves, Then the quorum ships it
    world.clock.advance(60)
    shipped = approve(world, job, "bob", comment="lgtm")
    assert shipped.stage == Stage.SHIPPED
    assert shipped.review["approvals"] == ["alice", "bob"]
    # and its latest run says shipped (ended when it was parked), its cost spent once
    run = shipped.latest_run
    assert (run.result, run.ended_at, run.accrued) == (RunResult.SHIPPED, job.latest_run.ended_at, True)
    assert world.budget().spent_usd == 3.0
    assert [e.type for e in shipped.events[-2:]] == ["review_approved", "shipped"]
    assert shipped.events[-2].detail == {"approvals": 2, "comment": "lgtm"}
    assert (shipped.events[-1].actor, shipped.events[-1].detail) == ("bob", {"by": "review"})


def test_a_quorum_ships_a_job_whose_factory_still_holds_it(world):
    # Given a job at testing whose factory kept its lease
    held = world.running_job("work", stage="testing")
    request(world, held)
    shipped = approve(world, held, "alice")
    # Then the quorum ships it and ends the lease and the run
    assert (shipped.stage, shipped.lease, shipped.latest_run.result) == (Stage.SHIPPED, None, RunResult.SHIPPED)
    with pytest.raises(errors.LeaseLost):
        world.patch(held, "testing")


def test_only_named_reviewers_may_decide(world):
    job = world.parked_job("work")
    request(world, job, required=1, reviewers=["alice"])
    for decide in (approve, reject):
        with pytest.raises(errors.Forbidden):
            decide(world, job, "mallory")
    assert (world.job(job).stage, world.job(job).review["approvals"]) == (Stage.TESTING, [])
    assert approve(world, job, "alice").stage == Stage.SHIPPED


def test_a_rejection_sends_the_job_back_for_rework(world):
    # Given a parked job under review
    job = world.parked_job("work")
    request(world, job, required=2)
    approve(world, job, "alice")
    version = world.version()
    # When bob rejects it with a comment
    rejected = reject(world, job, "bob", comment="tests are flaky")
    # Then it is queued for rework, attempts unchanged, the comment in its events
    assert (rejected.stage, rejected.lease, rejected.attempts) == (Stage.QUEUED, None, 0)
    event = rejected.events[-1]
    assert (event.type, event.actor, event.detail) == ("review_rejected", "bob", {"comment": "tests are flaky"})
    assert rejected.review["rejectedBy"] == "bob"
    # and idle factories hear of it; a factory can claim it again
    assert world.version() == version + 1
    assert world.claim().job.id == job.id
    # and the review is over: no more decisions on it
    with pytest.raises(errors.IllegalTransition):
        approve(world, job, "carol")


def test_a_rejected_parked_run_is_marked_released(world):
    job = world.parked_job("work")
    request(world, job)
    rejected = reject(world, job, "bob")
    assert rejected.latest_run.result == RunResult.RELEASED  # as when a factory holding it is rejected


def test_a_rejected_held_run_is_marked_released(world):
    held = world.running_job("work", stage="testing")
    request(world, held)
    rejected = reject(world, held, "bob")
    assert (rejected.latest_run.result, rejected.latest_run.ended_at) == (RunResult.RELEASED, world.clock.now())


def test_approvals_before_a_rework_do_not_count_after_it(world):
    # Given alice approved (1 of 2), then bob rejected: the job went back for rework
    job = world.parked_job("work")
    request(world, job, required=2)
    approve(world, job, "alice")
    reject(world, job, "bob")
    # When the reworked job is parked at testing again
    again = world.claim().job
    world.release(world.patch(again, "testing"), stage="testing")
    # Then carol's approval alone does not ship it: the old review's approval is spent
    try:
        after = approve(world, job, "carol")
    except errors.IllegalTransition:
        after = world.job(job)  # or the reworked job needs a new review request
    assert after.stage == Stage.TESTING


def test_a_new_request_after_rework_starts_counting_afresh(world):
    job = world.parked_job("work")
    request(world, job, required=2)
    approve(world, job, "alice")
    reject(world, job, "bob")
    again = world.claim().job
    world.release(world.patch(again, "testing"), stage="testing")
    reopened = request(world, job, required=2)
    assert reopened.review["approvals"] == []
    assert approve(world, job, "carol").stage == Stage.TESTING
    assert approve(world, job, "dave").stage == Stage.SHIPPED


# The gate ships a reworked job, not its factory


@pytest.mark.parametrize("finish", ["release shipped", "release done", "patch shipped"])
def test_a_factory_finishing_a_job_whose_gate_is_open_parks_it_for_the_reviewers(world, finish):
    # Given a job rejected at review, and reworked by a factory
    job = world.parked_job("work")
    request(world, job, required=2, reviewers=["alice", "bob"])
    reject(world, job, "bob")
    again = world.claim().job
    world.patch(again, "testing")
    # When its factory finishes it as if no gate were open
    if finish == "patch shipped":
        after = world.patch(again, "shipped", insights={"costUsd": 0.5})
    else:
        after = world.release(again, stage=finish.split()[1], insights={"costUsd": 0.5})
    # Then it is parked lease-free at testing for the gate, the run's report kept
    assert (after.stage, after.lease, after.review["approvals"]) == (Stage.TESTING, None, [])
    assert after.latest_run.insights == {"costUsd": 0.5} and after.latest_run.result is None
    event = after.events[-1]
    assert (event.type, event.detail["asked"], event.detail["stage"]) == ("released", finish.split()[1], "testing")
    # and only the quorum ships it
    assert approve(world, job, "alice").stage == Stage.TESTING
    assert approve(world, job, "bob").stage == Stage.SHIPPED


def test_a_job_shipped_by_its_quorum_and_requeued_needs_the_quorum_again(world):
    job = world.parked_job("work")
    request(world, job, required=1)
    approve(world, job, "alice")
    world.act(job, "requeue")
    again = world.claim().job
    assert world.release(again, stage="shipped").stage == Stage.TESTING
    assert approve(world, job, "alice").stage == Stage.SHIPPED
