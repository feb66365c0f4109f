"""The lifecycle: pure stage changes (`lifecycle`), and a hypothesis state machine that drives
claims, PATCHes, releases, operator actions, heartbeats, the clock and the sweep in any order,
checking after every step the invariants the design rests on."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fleet import actions, clock as clock_mod, errors, factories, lifecycle, outage, scoring, store as store_port, sweep, writes
from fleet.context import Settings
from fleet.jobs import EVENT_RING, RUN_RING, WAITING, Job, Lease, Run, job_id
from fleet.stages import ACTIVE, TERMINAL, RunResult, Stage, check_factory_move
from fleet.clock import FixedClock
from shared.stores.sqlite_store import SqliteStore

from fleet.testing import LEASE_SECONDS, PRODUCT, T0, World, flags_on

NOW = clock_mod.parse(T0)


def a_job(**fields) -> Job:
    defaults = dict(id="acme:aaaaaaaaaaaaaaaaaaaa", product_id=PRODUCT, idempotency_key="k", created_at=NOW, updated_at=NOW)
    return Job(**{**defaults, **fields})


def a_running_job(**fields) -> Job:
    lease = Lease(lease_id="lease-1", factory_id="f", epoch=1, expires_at=NOW + timedelta(seconds=300))
    return a_job(stage=Stage.BUILDING, lease=lease, lease_epoch=1, **fields).with_run(
        Run(run_id="acme:aaaaaaaaaaaaaaaaaaaa#1", factory_id="f", started_at=NOW)
    )


# Pure rules


@pytest.mark.parametrize(
    "current, target, allowed",
    [
        (Stage.ASSIGNED, Stage.BUILDING, True),
        (Stage.ASSIGNED, Stage.TESTING, True),  # skipping ahead
        (Stage.REVIEW, Stage.BUILDING, True),  # rework
        (Stage.TESTING, Stage.SHIPPED, True),  # autoship
        (Stage.REVIEW, Stage.REVIEW, True),  # a note
        (Stage.TESTING, Stage.REVIEW, False),
        (Stage.BUILDING, Stage.ASSIGNED, False),
        (Stage.REVIEW, Stage.SHIPPED, False),
        (Stage.QUEUED, Stage.BUILDING, False),  # no lease holder's stage to change
        (Stage.SHIPPED, Stage.SHIPPED, False),
    ],
)
def test_the_moves_a_factory_may_make(current, target, allowed):
    if allowed:
        check_factory_move(current, target)
    else:
        with pytest.raises(errors.IllegalTransition):
            check_factory_move(current, target)


@pytest.mark.parametrize(
    "offset_seconds, holds",
    [(-1, True), (0, False), (1, False)],  # a lease is live strictly before its expiresAt
)
def test_a_lease_is_held_until_it_expires(offset_seconds, holds):
    job = a_running_job()
    at = job.lease.expires_at + timedelta(seconds=offset_seconds)
    assert job.holds("lease-1", at) is holds
    assert job.holds("another-lease", NOW) is False


def test_end_run_closes_the_run_once_and_merges_the_report():
    job = a_running_job()
    later = NOW + timedelta(minutes=5)
    ended = lifecycle.end_run(job, later, None, insights={"tokensIn": 3}, branch="b", artifacts=["x"])
    assert (ended.latest_run.ended_at, ended.latest_run.result) == (later, None)
    # a later outcome keeps the end time and sets the result
    shipped = lifecycle.end_run(ended, later + timedelta(hours=1), RunResult.SHIPPED, artifacts=["y"])
    assert (shipped.latest_run.ended_at, shipped.latest_run.result) == (later, RunResult.SHIPPED)
    assert shipped.latest_run.artifacts == ["x", "y"]
    assert shipped.latest_run.branch == "b"


def test_end_run_of_a_job_never_run_changes_nothing():
    job = a_job()
    assert lifecycle.end_run(job, NOW, RunResult.RELEASED) == job


@pytest.mark.parametrize(
    "attempts, max_attempts, stage",
    [(0, 3, Stage.QUEUED), (1, 3, Stage.QUEUED), (2, 3, Stage.DEAD_LETTER), (0, 1, Stage.DEAD_LETTER)],
)
def test_retried_counts_an_attempt_until_max_attempts(attempts, max_attempts, stage):
    job = a_running_job(attempts=attempts, max_attempts=max_attempts)
    retried = lifecycle.retried(job, NOW, scoring.DEFAULTS, RunResult.EXPIRED)
    assert (retried.stage, retried.attempts, retried.lease) == (stage, attempts + 1, None)
    assert retried.latest_run.result == RunResult.EXPIRED


def test_requeued_recomputes_the_rank_key():
    job = a_running_job(attempts=2, rank_key=123.0)
    weights = scoring.Weights(retries=-9)
    requeued = lifecycle.requeued(job, NOW, weights)
    assert requeued.rank_key == scoring.rank_key(1, 2, NOW, weights)  # 10*1 - 9*2 - createdAtMinutes


@pytest.mark.parametrize(
    "stage, result",
    [
        (Stage.SHIPPED, RunResult.SHIPPED),
        (Stage.DONE, RunResult.DONE),
        (Stage.FAILED, RunResult.FAILED),
        (Stage.CANCELLED, RunResult.CANCELLED),
    ],
)
def test_finished_ends_the_lease_and_the_open_run_with_the_outcome(stage, result):
    done = lifecycle.finished(a_running_job(), NOW, stage)
    assert (done.stage, done.lease, done.latest_run.result, done.latest_run.ended_at) == (stage, None, result, NOW)


@pytest.mark.parametrize("stage", [Stage.CANCELLED, Stage.SHIPPED, Stage.DONE])
@pytest.mark.parametrize("ended", [RunResult.RETRY, RunResult.RELEASED, RunResult.EXPIRED])
def test_a_run_that_ended_keeps_how_it_ended_whatever_its_job_comes_to(stage, ended):
    # An operator ships or cancels the queued job: the run that gave it back did not ship it.
    gone = lifecycle.end_run(a_running_job(), NOW, ended).model_copy(update={"lease": None})
    assert lifecycle.finished(gone, NOW, stage).latest_run.result == ended


@pytest.mark.parametrize("stage,result", [(Stage.SHIPPED, RunResult.SHIPPED), (Stage.DONE, RunResult.DONE)])
def test_a_run_parked_for_review_takes_the_outcome(stage, result):
    parked = lifecycle.parked(a_running_job(), NOW)
    assert lifecycle.finished(parked, NOW, stage).latest_run.result == result


def test_a_job_keeps_its_last_events_and_runs_and_counts_the_rest():
    job = a_job()
    for n in range(EVENT_RING + 7):
        job = job.with_event(NOW, "note", n=n)
    for n in range(RUN_RING + 3):
        job = job.with_run(Run(run_id=f"r{n}", factory_id="f", started_at=NOW))
    assert (len(job.events), job.events_dropped, job.events[0].detail["n"]) == (EVENT_RING, 7, 7)
    assert (len(job.runs), job.runs_dropped, job.runs[0].run_id) == (RUN_RING, 3, "r3")


@pytest.mark.settings(flags_on())
def test_a_job_refuses_to_grow_past_its_bound(world):
    # Regression: a job used to grow without bound.
    # Given a running job whose factory reports 15 KiB of insights on every PATCH
    job = world.running_job("chatty")
    accepted = world.job(job)
    # When it keeps reporting: MAX_JOB_BYTES // 15 KiB + 1 reports are more than the bound
    with pytest.raises(errors.TooLarge):
        for n in range(writes.MAX_JOB_BYTES // (15 * 1024) + 1):
            world.patch(job, "building", insights={f"log-{n}": "x" * (15 * 1024)})
            accepted = world.job(job)
    # Then the report that would cross the bound is refused and nothing of it is written
    stored = world.job(job)
    assert stored.etag == accepted.etag
    assert len(json.dumps(world.store.inner.read("jobs", PRODUCT, job.id), separators=(",", ":"))) <= writes.MAX_JOB_BYTES
    # and the job can still finish
    assert world.release(job, result="shipped").stage == Stage.SHIPPED


# The state machine

KEYS = ["k0", "k1", "k2"]
FACTORIES = ["f1", "f2"]


class Lifecycle(RuleBasedStateMachine):
    """Factories and operators act in any order; the clock moves; the sweep runs."""

    def __init__(self) -> None:
        super().__init__()
        self.sqlite = SqliteStore(":memory:")
        self.world = World(self.sqlite, FixedClock(T0), Settings(lease_seconds=LEASE_SECONDS))
        #: Every lease ever issued: (job id, lease id).
        self.leases: list[tuple[str, str]] = []
        self.claims: dict[str, int] = {}
        #: The write with which a lease ended itself: a repeat of it is answered, unchanged.
        self.ended: dict[str, tuple[str, object]] = {}

    def teardown(self) -> None:
        self.sqlite.close()

    def jobs(self) -> list[Job]:
        query = store_port.Query("jobs", PRODUCT, (store_port.Filter("stage", "!=", None),), limit=100)
        return [Job.from_doc(d) for d in store_port.query_all(self.sqlite, query)]

    def live(self, job_id: str, lease_id: str) -> bool:
        # Live: the current, unexpired lease, or one that expired during an outage (the sweep
        # has not run for longer than the grace; see fleet/outage.py).
        job = self.world.job(job_id)
        return outage.holds(self.world.ctx, job, lease_id, self.world.clock.now())

    # steps

    @rule(key=st.sampled_from(KEYS))
    def submit(self, key):
        # k0: critical, one attempt; k1: normal, two; k2: low, three (a repeat is a no-op)
        n = KEYS.index(key)
        self.world.submit(key, priority=["critical", "normal", "low"][n], max_attempts=n + 1)

    @rule(factory=st.sampled_from(FACTORIES))
    def claim(self, factory):
        waiting = {j.id for j in self.jobs() if j.waiting}
        job = self.world.claim(factory).job
        if job is not None:
            assert job.id not in waiting  # a job waiting to retry is no claim's
            self.leases.append((job.id, job.lease.lease_id))
            self.claims[job.id] = self.claims.get(job.id, 0) + 1
            assert job.lease.epoch == self.claims[job.id]

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), stage=st.sampled_from([Stage.BUILDING, Stage.REVIEW, Stage.TESTING, Stage.SHIPPED, Stage.ASSIGNED]))
    def patch(self, data, stage):
        job_id, lease_id = data.draw(st.sampled_from(self.leases))
        before = self.world.job(job_id)
        live = self.live(job_id, lease_id)
        repeat = self.ended.get(lease_id) == ("patch", stage)
        try:
            after = self.world.patch(before, stage.value, lease_id=lease_id)
        except errors.LeaseLost:
            assert not live and not repeat
        except errors.IllegalTransition:
            assert live
            with pytest.raises(errors.IllegalTransition):
                check_factory_move(before.stage, stage)
        else:
            if not live:  # a repeat of the autoship that ended this lease: nothing changes
                assert repeat and after.etag == before.etag
                return
            assert after.stage == stage
            if after.lease is None:
                self.ended[lease_id] = ("patch", stage)

    @precondition(lambda self: self.leases)
    @rule(
        data=st.data(),
        body=st.sampled_from(
            [{}, {"result": "retry"}, {"stage": "testing"}, {"stage": "shipped"}, {"stage": "failed"}, {"result": "done"}]
        ),
    )
    def release(self, data, body):
        job_id, lease_id = data.draw(st.sampled_from(self.leases))
        before = self.world.job(job_id)
        live = self.live(job_id, lease_id)
        repeat = self.ended.get(lease_id) == ("release", body)
        try:
            after = self.world.release(before, lease_id=lease_id, **body)
        except errors.LeaseLost:
            assert not live and not repeat
        else:
            if not live:  # a repeat of the release that ended this lease: nothing changes
                assert repeat and after.etag == before.etag
                return
            assert after.lease is None
            self.ended[lease_id] = ("release", body)
            if body.get("result") == "retry":
                assert after.attempts == before.attempts + 1

    @rule(key=st.sampled_from(KEYS), action=st.sampled_from(list(actions.Action)))
    def operator(self, key, action):
        try:
            after = actions.apply(self.world.ctx, job_id(PRODUCT, key), action)
        except (errors.NotFound, errors.IllegalTransition):
            return
        assert after.lease is None  # every action revokes the lease

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def heartbeat(self, data):
        job_id, lease_id = data.draw(st.sampled_from(self.leases))
        factory = data.draw(st.sampled_from(["f1", "f2"]))
        job = self.world.job(job_id)
        # Renewed only for the factory that holds the live lease.
        live = self.live(job_id, lease_id) and job.lease.factory_id == factory
        beat = factories.heartbeat(self.world.ctx, factory, [PRODUCT], [], None, [(job_id, lease_id)])
        [answer] = beat.to_doc()["leases"]
        assert answer["status"] == ("renewed" if live else "revoked")

    @rule(seconds=st.sampled_from([1, 60, LEASE_SECONDS - 1, LEASE_SECONDS, LEASE_SECONDS + 1]))
    def time_passes(self, seconds):
        self.world.clock.advance(seconds)

    @rule()
    def sweep_runs(self):
        sweep.run(self.world.ctx)

    # invariants

    @invariant()
    def a_job_waiting_to_retry_is_queued_without_a_lease(self):
        for job in self.jobs():
            if job.retry_at is not None:
                assert job.stage == Stage.QUEUED and job.lease is None and job.to_doc()["capKey"] == WAITING

    @invariant()
    def a_lease_is_held_only_in_a_work_stage_with_an_open_run(self):
        for job in self.jobs():
            run = job.latest_run
            if job.lease is not None:
                assert job.stage in ACTIVE
                assert run is not None and run.ended_at is None
                assert job.lease.epoch == job.lease_epoch == len(job.runs) + job.runs_dropped
            else:
                assert run is None or run.ended_at is not None
            if job.stage in {Stage.ASSIGNED, Stage.BUILDING, Stage.REVIEW}:
                assert job.lease is not None
            if job.stage in TERMINAL or job.stage in (Stage.QUEUED, Stage.BLOCKED):
                assert job.lease is None

    @invariant()
    def epochs_count_claims(self):
        for job in self.jobs():
            assert job.lease_epoch == self.claims.get(job.id, 0)

    @invariant()
    def attempts_stay_within_bounds(self):
        for job in self.jobs():
            assert 0 <= job.attempts <= job.max_attempts
            if job.stage == Stage.DEAD_LETTER:
                assert job.attempts == job.max_attempts

    @invariant()
    def a_queued_job_carries_the_rank_key_of_its_fields(self):
        for job in self.jobs():
            if job.stage == Stage.QUEUED:
                expected = scoring.rank_key(job.priority.order, job.attempts, job.created_at, scoring.DEFAULTS)
                assert job.rank_key == expected

    @invariant()
    def earlier_runs_have_ended_and_a_finished_job_says_so_on_its_run(self):
        for job in self.jobs():
            for run in job.runs[:-1]:
                assert run.ended_at is not None
            if job.stage in (Stage.SHIPPED, Stage.DONE) and job.latest_run is not None:
                # the run that shipped it says so; one that had ended before (given back,
                # retried, expired) keeps how it ended: an operator shipped the queued job
                assert job.latest_run.ended_at is not None and job.latest_run.result is not None


Lifecycle.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestLifecycle = Lifecycle.TestCase
