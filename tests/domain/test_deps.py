"""Dependencies: a job waits `blocked` until every dep is shipped or done; `blockedOn` says on
what; the write that finishes the last dep queues it, and the sweep repairs a missed unblock."""
from __future__ import annotations

import pytest

from fleet import actions, errors, store as store_port, sweep
from fleet.jobs import BlockedOn, job_id
from fleet.stages import Stage

from fleet.testing import PRODUCT, flags_on, open_world


def finish_directly(store, key: str, stage: str = "shipped") -> None:
    """Move a job without any of the follow-up writes: what a crash between two writes leaves."""
    store_port.update(store, "jobs", PRODUCT, job_id(PRODUCT, key), lambda doc: {**doc, "stage": stage, "lease": None})


@pytest.mark.parametrize(
    "dep_stage, blocked",
    [
        ("queued", True),
        ("assigned", True),
        ("testing", True),
        ("failed", True),  # a failed dep keeps its dependents waiting
        ("cancelled", True),
        ("dead_letter", True),
        ("shipped", False),
        ("done", False),
    ],
)
def test_a_job_is_blocked_until_every_dep_is_shipped_or_done(make_job, submit_job, dep_stage, blocked):
    make_job("dep", stage=dep_stage)
    job = submit_job("job", deps=["dep"])
    assert job.stage == (Stage.BLOCKED if blocked else Stage.QUEUED)


def test_blocked_on_lists_each_unfinished_dep_with_its_stage(make_job, submit_job):
    make_job("a", stage="shipped")
    make_job("b", stage="building")
    make_job("c", stage="failed")
    job = submit_job("job", deps=["a", "b", "c"])
    assert job.blocked_on == [
        BlockedOn(idempotency_key="b", job_id=job_id(PRODUCT, "b"), stage=Stage.BUILDING),
        BlockedOn(idempotency_key="c", job_id=job_id(PRODUCT, "c"), stage=Stage.FAILED),
    ]
    assert job.to_doc()["blockedOn"][0] == {"idempotencyKey": "b", "jobId": job_id(PRODUCT, "b"), "stage": "building"}


def test_reading_a_blocked_job_shows_its_deps_current_stages(world, submit_job, running_job):
    dep = running_job("dep")
    job = submit_job("job", deps=["dep"])
    world.patch(dep, "review")
    assert [b.stage for b in world.job(job).blocked_on] == [Stage.REVIEW]


def test_a_dep_never_submitted_is_a_validation_error_and_nothing_is_written(world, submit_job, store):
    submit_job("known")
    with pytest.raises(errors.ValidationFailed) as raised:
        submit_job("job", deps=["known", "ghost"])
    assert "ghost" in str(raised.value)
    with pytest.raises(errors.NotFound):
        store.read("jobs", PRODUCT, job_id(PRODUCT, "job"))


def test_a_job_cannot_depend_on_itself(submit_job, store):
    with pytest.raises(errors.ValidationFailed):
        submit_job("job", deps=["job"])
    with pytest.raises(errors.NotFound):
        store.read("jobs", PRODUCT, job_id(PRODUCT, "job"))


def test_deps_are_per_product(make_job, submit_job):
    make_job("dep", product_id="other-product", stage="shipped")
    with pytest.raises(errors.ValidationFailed):
        submit_job("job", deps=["dep"])


@pytest.mark.parametrize("finish", ["patch_shipped", "release_done", "release_shipped", "ship_action"])
def test_finishing_the_last_dep_queues_the_dependent_and_bumps_queue_state(world, ctx, running_job, submit_job, finish):
    # Given a job waiting on two deps
    first = running_job("first", stage="testing")
    last = running_job("last", stage="testing")
    job = submit_job("job", deps=["first", "last"])
    # When the first ships, Then it still waits, on the last only
    world.patch(first, "shipped")
    assert [b.idempotency_key for b in world.job(job).blocked_on] == ["last"]
    assert world.job(job).stage == Stage.BLOCKED
    # When the last finishes
    version = world.version()
    if finish == "patch_shipped":
        world.patch(last, "shipped")
    elif finish == "release_done":
        world.release(last, stage="done")
    elif finish == "release_shipped":
        world.release(last, result="shipped")
    else:
        actions.apply(ctx, last.id, actions.Action.SHIP)
    # Then it is queued, claimable, and idle factories hear of it
    unblocked = world.job(job)
    assert unblocked.stage == Stage.QUEUED
    assert unblocked.blocked_on == []
    assert unblocked.events[-1].type == "unblocked"
    assert world.version() == version + 1
    assert world.claim().job.id == job.id


@pytest.mark.parametrize("outcome", [{"stage": "failed"}, {"result": "retry"}, {}])
def test_a_dep_that_does_not_finish_keeps_the_dependent_blocked(world, running_job, submit_job, outcome):
    dep = running_job("dep", stage="building")
    job = submit_job("job", deps=["dep"])
    world.release(dep, **outcome)
    assert world.job(job).stage == Stage.BLOCKED


def test_the_sweep_repairs_an_unblock_a_crash_missed(world, ctx, submit_job, running_job, store):
    # Given a dependent whose dep reached shipped without the follow-up write (a crash)
    running_job("dep")
    job = submit_job("job", deps=["dep"])
    finish_directly(store, "dep")
    assert world.job(job).stage == Stage.BLOCKED
    version = world.version()
    # When the sweep runs
    released = sweep.blocked_jobs(ctx)
    # Then the job is queued and idle factories hear of it
    assert released == 1
    assert world.job(job).stage == Stage.QUEUED
    assert world.version() == version + 1
    # and a second sweep finds nothing to do
    assert sweep.blocked_jobs(ctx) == 0
    assert world.version() == version + 1


def test_the_sweep_refreshes_blocked_on_of_jobs_still_waiting(world, ctx, submit_job, running_job, store):
    running_job("a")
    running_job("b")
    job = submit_job("job", deps=["a", "b"])
    finish_directly(store, "a")
    assert sweep.blocked_jobs(ctx) == 0
    stored = store.read("jobs", PRODUCT, job.id)
    assert [b["idempotencyKey"] for b in stored["blockedOn"]] == ["b"]


def test_a_requeued_dep_that_then_ships_releases_its_dependents(world, ctx, submit_job, running_job, claim):
    # Given a dep that failed, keeping its dependent blocked
    dep = running_job("dep", stage="building")
    job = submit_job("job", deps=["dep"])
    world.release(dep, stage="failed")
    # When an operator requeues it and it ships
    actions.apply(ctx, dep.id, actions.Action.REQUEUE)
    again = claim().job
    assert again.id == dep.id
    world.release(again, stage="shipped")
    # Then the dependent is queued
    assert world.job(job).stage == Stage.QUEUED


# Regression: releasing dependents used to read every blocked job of the product, and skip some.


def job_queries_to_ship_a_job_nobody_waits_on(unrelated_blocked: int) -> int:
    with open_world(flags_on()) as world:
        # Given `unrelated_blocked` jobs waiting on a gate, and a running job nobody waits on
        world.submit_job("gate")
        for n in range(unrelated_blocked):
            world.submit_job(f"waiting-{n}", deps=["gate"])
        lonely = world.running_job("lonely")
        # When the lonely job ships
        world.store.reset()
        world.release(lonely, result="shipped")
        return world.store.calls["query:jobs"]


def test_releasing_dependents_costs_the_same_however_many_unrelated_jobs_are_blocked():
    # 1000 blocked jobs are five pages of 200 for a scan of the blocked jobs: none are read
    assert job_queries_to_ship_a_job_nobody_waits_on(0) == job_queries_to_ship_a_job_nobody_waits_on(1000)


@pytest.mark.settings(flags_on())
def test_a_finished_job_unblocks_all_its_dependents_across_several_pages(world):
    # Given 450 jobs waiting on one dep: three pages of 200
    dep = world.running_job("dep")
    waiting = [world.submit_job(f"waiting-{n}", deps=["dep"]) for n in range(450)]
    assert {world.job(j).stage for j in waiting} == {Stage.BLOCKED}
    # When the dep ships
    world.release(dep, result="shipped")
    # Then every dependent is queued at once, none left for the sweep
    assert {world.job(j).stage for j in waiting} == {Stage.QUEUED}


# Regression: every sweep used to re-read every blocked job and each of its deps.


def job_reads_of_a_quiet_sweep(blocked: int) -> int:
    with open_world(flags_on()) as world:
        # Given `blocked` jobs waiting on deps that have not moved, and a sweep every minute
        world.submit_job("dep")
        world.submit_job("dep-2")
        for n in range(blocked):
            world.submit_job(f"waiting-{n}", deps=["dep", "dep-2"])
        for _ in range(10):  # past the repair margin: nothing changed since the last sweeps
            world.clock.advance(60)
            sweep.run(world.ctx)
        # When the sweep runs again
        world.clock.advance(60)
        world.store.reset()
        sweep.run(world.ctx)
        return world.store.calls["read:jobs"]


def test_a_sweep_reads_only_what_changed_since_the_last_one():
    # 500 blocked jobs with two deps each cost 1500+ point reads a sweep when all were re-read
    assert job_reads_of_a_quiet_sweep(0) == job_reads_of_a_quiet_sweep(500)
