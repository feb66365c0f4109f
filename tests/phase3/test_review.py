"""The human review gate: a job resting at `testing` ships on a quorum of approvals by distinct
reviewers (only the named ones, if named); one rejection sends it back to the queue for
rework, the comment in its events."""
from __future__ import annotations

import pytest

from fleet import errors, review
from fleet.stages import RunResult, Stage

from tests.phase3.conftest import Fleet


def request(fleet: Fleet, job, required: int = 1, reviewers: list[str] | None = None):
    return review.request(fleet.ctx, job.id, required, reviewers, actor="lead")


def approve(fleet: Fleet, job, reviewer: str, comment: str | None = None):
    return review.decide(fleet.ctx, job.id, reviewer, True, comment)


def reject(fleet: Fleet, job, reviewer: str, comment: str | None = None):
    return review.decide(fleet.ctx, job.id, reviewer, False, comment)


# Opening the gate


def test_a_review_opens_on_a_parked_testing_job(fleet):
    job = fleet.parked("work")
    opened = request(fleet, job, required=2, reviewers=["bob", "alice", "bob"])
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
def test_a_review_opens_only_on_a_testing_job(fleet, stage):
    job = fleet.submit("work") if stage == "queued" else fleet.running("work", stage=stage)
    with pytest.raises(errors.IllegalTransition):
        request(fleet, job)
    assert fleet.job(job).review is None


def test_a_shipped_job_cannot_be_reviewed(fleet):
    job = fleet.act(fleet.parked("work"), "ship")
    with pytest.raises(errors.IllegalTransition):
        request(fleet, job)


@pytest.mark.parametrize(
    "reviewers, required",
    [
        (["alice"], 2),  # 1 named < 2 required
        (["alice", "alice"], 2),  # the same reviewer named twice is one reviewer
        (["alice", "bob"], 3),
    ],
)
def test_requiring_more_approvals_than_reviewers_named_is_invalid(fleet, reviewers, required):
    job = fleet.parked("work")
    with pytest.raises(errors.ValidationFailed) as refused:
        request(fleet, job, required=required, reviewers=reviewers)
    assert refused.value.errors[0]["field"] == "required"
    assert fleet.job(job).review is None


def test_deciding_without_an_open_review_is_refused(fleet):
    job = fleet.parked("work")
    with pytest.raises(errors.IllegalTransition):
        approve(fleet, job, "alice")


# Deciding


def test_a_quorum_of_distinct_approvals_ships_the_job(fleet):
    # Given a parked job whose run cost 3, under a budget, needing two approvals
    fleet.put_budget(100.0)
    job = fleet.parked("work", cost=3.0)
    request(fleet, job, required=2)
    # When alice approves twice, Then it counts once and the job still waits
    approve(fleet, job, "alice")
    waiting = approve(fleet, job, "alice")
    assert (waiting.stage, waiting.review["approvals"]) == (Stage.TESTING, ["alice"])
    # When bob approves, Then the quorum ships it
    fleet.clock.advance(60)
    shipped = approve(fleet, job, "bob", comment="lgtm")
    assert shipped.stage == Stage.SHIPPED
    assert shipped.review["approvals"] == ["alice", "bob"]
    # and its latest run says shipped (ended when it was parked), its cost spent once
    run = shipped.latest_run
    assert (run.result, run.ended_at, run.accrued) == (RunResult.SHIPPED, job.latest_run.ended_at, True)
    assert fleet.budget().spent_usd == 3.0
    assert [e.type for e in shipped.events[-2:]] == ["review_approved", "shipped"]
    assert shipped.events[-2].detail == {"approvals": 2, "comment": "lgtm"}
    assert (shipped.events[-1].actor, shipped.events[-1].detail) == ("bob", {"by": "review"})


def test_a_quorum_ships_a_job_whose_factory_still_holds_it(fleet):
    # Given a job at testing whose factory kept its lease
    held = fleet.running("work", stage="testing")
    request(fleet, held)
    shipped = approve(fleet, held, "alice")
    # Then the quorum ships it and ends the lease and the run
    assert (shipped.stage, shipped.lease, shipped.latest_run.result) == (Stage.SHIPPED, None, RunResult.SHIPPED)
    with pytest.raises(errors.LeaseLost):
        fleet.patch(held, "testing")


def test_only_named_reviewers_may_decide(fleet):
    job = fleet.parked("work")
    request(fleet, job, required=1, reviewers=["alice"])
    for decide in (approve, reject):
        with pytest.raises(errors.Forbidden):
            decide(fleet, job, "mallory")
    assert (fleet.job(job).stage, fleet.job(job).review["approvals"]) == (Stage.TESTING, [])
    assert approve(fleet, job, "alice").stage == Stage.SHIPPED


def test_a_rejection_sends_the_job_back_for_rework(fleet):
    # Given a parked job under review
    job = fleet.parked("work")
    request(fleet, job, required=2)
    approve(fleet, job, "alice")
    version = fleet.version()
    # When bob rejects it with a comment
    rejected = reject(fleet, job, "bob", comment="tests are flaky")
    # Then it is queued for rework, attempts unchanged, the comment in its events
    assert (rejected.stage, rejected.lease, rejected.attempts) == (Stage.QUEUED, None, 0)
    event = rejected.events[-1]
    assert (event.type, event.actor, event.detail) == ("review_rejected", "bob", {"comment": "tests are flaky"})
    assert rejected.review["rejectedBy"] == "bob"
    # and idle factories hear of it; a factory can claim it again
    assert fleet.version() == version + 1
    assert fleet.claim().job.id == job.id
    # and the review is over: no more decisions on it
    with pytest.raises(errors.IllegalTransition):
        approve(fleet, job, "carol")


def test_a_rejected_parked_run_is_marked_released(fleet):
    job = fleet.parked("work")
    request(fleet, job)
    rejected = reject(fleet, job, "bob")
    assert rejected.latest_run.result == RunResult.RELEASED  # as when a factory holding it is rejected


def test_a_rejected_held_run_is_marked_released(fleet):
    held = fleet.running("work", stage="testing")
    request(fleet, held)
    rejected = reject(fleet, held, "bob")
    assert (rejected.latest_run.result, rejected.latest_run.ended_at) == (RunResult.RELEASED, fleet.clock.now())


def test_approvals_before_a_rework_do_not_count_after_it(fleet):
    # Given alice approved (1 of 2), then bob rejected: the job went back for rework
    job = fleet.parked("work")
    request(fleet, job, required=2)
    approve(fleet, job, "alice")
    reject(fleet, job, "bob")
    # When the reworked job is parked at testing again
    again = fleet.claim().job
    fleet.release(fleet.patch(again, "testing"), stage="testing")
    # Then carol's approval alone does not ship it: the old review's approval is spent
    try:
        after = approve(fleet, job, "carol")
    except errors.IllegalTransition:
        after = fleet.job(job)  # or the reworked job needs a new review request
    assert after.stage == Stage.TESTING


def test_a_new_request_after_rework_starts_counting_afresh(fleet):
    job = fleet.parked("work")
    request(fleet, job, required=2)
    approve(fleet, job, "alice")
    reject(fleet, job, "bob")
    again = fleet.claim().job
    fleet.release(fleet.patch(again, "testing"), stage="testing")
    reopened = request(fleet, job, required=2)
    assert reopened.review["approvals"] == []
    assert approve(fleet, job, "carol").stage == Stage.TESTING
    assert approve(fleet, job, "dave").stage == Stage.SHIPPED
