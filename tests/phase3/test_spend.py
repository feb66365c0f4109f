"""Spend: what a run cost is accrued to its product's budget exactly once, when the run ends —
shipped, done, failed, retried, expired, preempted or given back — whatever crashes between
the job's write and the budget's, and however ship, release, sweep and replays interleave."""
from __future__ import annotations

import pytest
from hypothesis import settings as hsettings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from fleet import errors, spend, store as store_port, sweep
from fleet.jobs import Job, job_id
from fleet.stages import RunResult, Stage

from tests.phase3.conftest import LEASE_SECONDS, PHASE3, PRODUCT, Fleet, opened


def spent(fleet: Fleet) -> float:
    budget = fleet.budget()
    return budget.spent_usd if budget else 0.0


def all_jobs(fleet: Fleet) -> list[Job]:
    query = store_port.Query("jobs", PRODUCT, (store_port.Filter("idempotencyKey", "!=", None),), limit=500)
    return [Job.from_doc(doc) for doc in store_port.query_all(fleet.store.inner, query)]


def cost_of_ended_runs(fleet: Fleet) -> float:
    """The truth the budget must agree with: every ended run's reported cost."""
    jobs = all_jobs(fleet)
    assert all(job.runs_dropped == 0 for job in jobs), "a run left the ring: the sum below would be short"
    return sum(float(run.insights.get("costUsd") or 0) for job in jobs for run in job.runs if run.ended_at)


def cost_marked_accrued(fleet: Fleet) -> float:
    return sum(float(run.insights.get("costUsd") or 0) for job in all_jobs(fleet) for run in job.runs if run.accrued)


def pending(fleet: Fleet) -> list[str]:
    return [job.id for job in all_jobs(fleet) if job.accrual_pending]


# Every way a run ends is spend


def ship_by_patch(fleet, job, cost):
    return fleet.patch(fleet.patch(job, "testing"), "shipped", insights={"costUsd": cost})


def release_as(result):
    def end(fleet, job, cost):
        return fleet.release(job, result=result, insights={"costUsd": cost})

    end.__name__ = f"release_{result}"
    return end


def expire(fleet, job, cost):
    fleet.patch(job, "building", insights={"costUsd": cost})
    fleet.clock.advance(LEASE_SECONDS + 1)
    sweep.run(fleet.ctx)
    return fleet.job(job)


def preempt(fleet, job, cost):
    fleet.patch(job, "building", insights={"costUsd": cost})
    fleet.heartbeat("factory-1", seat_limit=1, running=[job])
    fleet.submit("urgent", priority="critical")
    assert fleet.claim("factory-1").preempted == [job.id]
    return fleet.job(job)


def operator(action):
    def end(fleet, job, cost):
        fleet.patch(job, "building", insights={"costUsd": cost})
        return fleet.act(job, action)

    end.__name__ = action
    return end


@pytest.mark.parametrize(
    "end_run, stage, result",
    [
        (ship_by_patch, Stage.SHIPPED, RunResult.SHIPPED),  # factory autoship
        (release_as("shipped"), Stage.SHIPPED, RunResult.SHIPPED),
        (release_as("done"), Stage.DONE, RunResult.DONE),
        (release_as("failed"), Stage.FAILED, RunResult.FAILED),
        (release_as("retry"), Stage.QUEUED, RunResult.RETRY),
        (release_as("released"), Stage.QUEUED, RunResult.RELEASED),  # give back
        (expire, Stage.QUEUED, RunResult.EXPIRED),
        (preempt, Stage.QUEUED, RunResult.PREEMPTED),
        (operator("requeue"), Stage.QUEUED, RunResult.RELEASED),
        (operator("cancel"), Stage.CANCELLED, RunResult.CANCELLED),
        (operator("reject"), Stage.FAILED, RunResult.CANCELLED),  # withdrawn while the run held it
        (operator("ship"), Stage.SHIPPED, RunResult.SHIPPED),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_every_ended_run_is_accrued_once(fleet, end_run, stage, result):
    # Given a budget and a running job
    fleet.put_budget(100.0)
    job = fleet.running("work", priority="low")
    # When its run ends having cost 2.5
    ended = end_run(fleet, job, 2.5)
    # Then the run carries the outcome, and its cost is spent once
    run = fleet.job(job).runs[0]
    assert (fleet.job(ended).stage, run.result, run.accrued) == (stage, result, True)
    assert spent(fleet) == 2.5
    # and nothing is left for the sweep to replay
    assert pending(fleet) == []
    sweep.run(fleet.ctx)
    assert spent(fleet) == 2.5


def test_shipping_twice_counts_once(fleet):
    # Given a job shipped by its factory's PATCH, with a cost of 4
    fleet.put_budget(100.0)
    job = ship_by_patch(fleet, fleet.running("work"), 4.0)
    # When an operator ships it again, and again
    for _ in range(2):
        again = fleet.act(job, "ship")
        assert again.stage == Stage.SHIPPED
    # Then it was counted once, and the latest run says shipped
    assert spent(fleet) == 4.0
    assert (fleet.job(job).latest_run.result, fleet.job(job).latest_run.ended_at) == (RunResult.SHIPPED, job.updated_at)


def test_a_parked_run_is_counted_when_parked_not_again_when_shipped(fleet):
    fleet.put_budget(100.0)
    parked = fleet.parked("work", cost=3.0)
    assert (parked.stage, parked.lease, spent(fleet)) == (Stage.TESTING, None, 3.0)
    shipped = fleet.act(parked, "ship")
    assert (shipped.latest_run.result, spent(fleet)) == (RunResult.SHIPPED, 3.0)


def test_each_run_of_a_job_counts(fleet):
    # Given a job that failed once (cost 1.25), then shipped (cost 2.5)
    fleet.put_budget(100.0)
    job = fleet.running("work")
    fleet.release(job, result="retry", insights={"costUsd": 1.25})
    again = fleet.claim_job(job).job
    ship_by_patch(fleet, again, 2.5)
    # Then both runs are spend: 1.25 + 2.5 = 3.75
    assert spent(fleet) == 3.75
    assert [r.accrued for r in fleet.job(job).runs] == [True, True]


def test_with_the_flag_off_nothing_is_accrued(fleet):
    off = fleet.with_settings(budgets=False)
    job = off.running("work")
    ship_by_patch(off, job, 4.0)
    assert off.budget() is None
    assert spend.replay_pending(off.ctx) == 0


# Crashes between the job's write and the budget's


@pytest.mark.parametrize(
    "op, container, nth, after, counted_before_sweep",
    [
        # the budget write never happened: nothing counted until the sweep
        ("read", "budgets", 1, False, 0.0),
        ("replace", "budgets", 1, False, 0.0),
        # the budget write happened but the process died before hearing of it
        ("replace", "budgets", 1, True, 4.0),
        # the budget counted it; the job's `accrued` mark (its 2nd write) never happened
        # (the mark writes on the ETag the PATCH's own write returned: it reads nothing first)
        ("replace", "jobs", 2, False, 4.0),
    ],
)
def test_a_crash_after_the_job_write_neither_loses_nor_double_counts(fleet, faulty, op, container, nth, after, counted_before_sweep):
    # Given a budget and a job at testing
    fleet.put_budget(100.0)
    job = fleet.patch(fleet.running("work"), "testing")
    # When the factory ships it (cost 4) and the coordinator crashes at the chosen call
    faulty.crash(op, container, nth, after)
    shipped = fleet.patch(job, "shipped", insights={"costUsd": 4.0})
    assert faulty.crashed == [f"{op}:{container}"]
    # Then the job's write stood: shipped, its run ended shipped, the accrual still pending
    stored = fleet.job(job)
    assert (shipped.stage, stored.stage, stored.latest_run.result) == (Stage.SHIPPED, Stage.SHIPPED, RunResult.SHIPPED)
    assert stored.accrual_pending is True
    assert spent(fleet) == counted_before_sweep
    # When the sweep runs (twice, for good measure)
    assert sweep.run(fleet.ctx)["accrued"] == 1
    sweep.run(fleet.ctx)
    # Then the run is counted exactly once, and marked so
    assert spent(fleet) == 4.0
    assert (fleet.job(job).accrual_pending, fleet.job(job).latest_run.accrued) == (False, True)


def test_a_crash_creating_the_first_budget_document_is_repaired(fleet, faulty):
    # Given a product with no budget yet (spend is tracked anyway)
    job = fleet.patch(fleet.running("work"), "testing")
    faulty.crash("create", "budgets")
    fleet.patch(job, "shipped", insights={"costUsd": 4.0})
    assert fleet.budget() is None
    spend.replay_pending(fleet.ctx)
    assert spent(fleet) == 4.0


def test_a_crash_on_the_job_write_itself_changes_nothing(fleet, faulty):
    fleet.put_budget(100.0)
    job = fleet.patch(fleet.running("work"), "testing")
    faulty.crash("replace", "jobs")
    with pytest.raises(errors.StoreBusy):
        fleet.patch(job, "shipped", insights={"costUsd": 4.0})
    assert (fleet.job(job).stage, spent(fleet)) == (Stage.TESTING, 0.0)
    # and the factory's retry ships it, counted once
    fleet.patch(job, "shipped", insights={"costUsd": 4.0})
    sweep.run(fleet.ctx)
    assert spent(fleet) == 4.0


def test_a_crash_after_the_job_write_before_any_follow_up_is_repaired(fleet, faulty):
    # Given the coordinator died right after writing the shipped job (the factory saw an error)
    fleet.put_budget(100.0)
    job = fleet.patch(fleet.running("work"), "testing")
    faulty.crash("replace", "jobs", after=True)
    with pytest.raises(errors.StoreBusy):
        fleet.patch(job, "shipped", insights={"costUsd": 4.0})
    # When the factory retries, Then its lease is gone (the job shipped), and nothing changes
    with pytest.raises(errors.LeaseLost):
        fleet.patch(job, "shipped", insights={"costUsd": 4.0})
    assert (fleet.job(job).stage, spent(fleet)) == (Stage.SHIPPED, 0.0)
    # and the sweep counts it once
    sweep.run(fleet.ctx)
    sweep.run(fleet.ctx)
    assert spent(fleet) == 4.0


def test_concurrent_replays_count_once(fleet, faulty):
    # Given an accrual interrupted after the budget write
    fleet.put_budget(100.0)
    job = fleet.patch(fleet.running("work"), "testing")
    faulty.crash("replace", "jobs", nth=2)
    fleet.patch(job, "shipped", insights={"costUsd": 4.0})
    stale = fleet.job(job)
    assert (stale.accrual_pending, spent(fleet)) == (True, 4.0)
    # When two processes replay it from the same read
    spend.settle(fleet.ctx, stale)
    spend.settle(fleet.ctx, stale)
    # Then it is counted once
    assert spent(fleet) == 4.0
    assert pending(fleet) == []


def test_a_sweep_replaying_between_the_budget_write_and_the_mark_counts_once(fleet, faulty):
    # Given an accrual in flight: the budget was just written, the job not yet marked
    fleet.put_budget(100.0)
    job = fleet.patch(fleet.running("work"), "testing")
    other_process = fleet.with_settings()  # (same store and settings)
    sweeps = []
    faulty.meanwhile("replace", "budgets", lambda: sweeps.append(spend.replay_pending(other_process.observer)))
    # When the sweep replays it at exactly that moment, and then the original finishes
    fleet.patch(job, "shipped", insights={"costUsd": 4.0})
    # Then the sweep found it pending, and yet it was counted once
    assert sweeps == [1]
    assert spent(fleet) == 4.0
    assert (fleet.job(job).accrual_pending, fleet.job(job).latest_run.accrued) == (False, True)


# The property: under any interleaving, the budget agrees with the runs


COSTS = st.one_of(st.none(), st.integers(0, 20).map(lambda quarters: quarters / 4))  # exact in binary
CRASHES = st.sampled_from(
    [
        ("replace", "budgets"),
        ("read", "budgets"),
        ("replace", "jobs"),
        ("read", "jobs"),
        ("query", "jobs"),
        ("increment", "jobs"),
    ]
)
FACTORIES = st.sampled_from(["factory-1", "factory-2"])


class SpendLedger(RuleBasedStateMachine):
    """Jobs (some with estimated costs) are claimed, report costs, ship, park, retry, give back,
    expire, get preempted, shipped and requeued by operators, swept and replayed — while the
    store crashes at random calls. Invariants: spend never exceeds what ended runs cost and
    never falls below what runs are marked as counted; with nothing pending, it is exactly what
    ended runs cost; every live claim holds its estimate, and none is held once all have ended."""

    def __init__(self) -> None:
        super().__init__()
        self._world = opened(PHASE3)
        self.fleet: Fleet = self._world.__enter__()
        self.keys: list[str] = []
        self.old_leases: list[tuple[str, str]] = []

    def teardown(self) -> None:
        try:
            # With the crashes over, the sweep finishes every interrupted accrual
            self.fleet.store.disarm()
            sweep.run(self.fleet.ctx)
            assert pending(self.fleet) == []
            assert spent(self.fleet) == cost_of_ended_runs(self.fleet)
            # and once every lease has run out (swept every minute: no outage grace), no
            # estimate is held any more
            for _ in range(LEASE_SECONDS // 60 + 1):
                self.fleet.clock.advance(60)
                sweep.run(self.fleet.ctx)
            assert all(job.lease is None for job in all_jobs(self.fleet))
            assert spent(self.fleet) == cost_of_ended_runs(self.fleet)
            assert self.fleet.budget() is None or self.fleet.budget().reservations == {}
        finally:
            self._world.__exit__(None, None, None)

    @initialize(ceiling=st.sampled_from([None, 1e6]))
    def setup(self, ceiling):
        if ceiling is not None:
            self.fleet.put_budget(ceiling)
        for i, estimate in enumerate([None, 1.5, 0.25]):
            self.keys.append(self.fleet.submit(f"job-{i}", max_attempts=10, estimated_cost_usd=estimate).idempotency_key)

    # helpers

    def _job(self, pick: int) -> Job:
        return self.fleet.job(job_id(PRODUCT, self.keys[pick % len(self.keys)]))

    def _attempt(self, act) -> None:
        """Run one request; a crash, a lost lease or an illegal move is an answer, not a failure."""
        try:
            act()
        except (errors.StoreBusy, errors.LeaseLost, errors.IllegalTransition, errors.NotClaimable):
            pass
        finally:
            self.fleet.store.disarm()

    def _held(self, pick: int) -> Job | None:
        job = self._job(pick)
        if job.lease is None:
            return None
        self.old_leases.append((job.id, job.lease.lease_id))
        return job

    # rules

    @rule(op=CRASHES, nth=st.integers(1, 3), after=st.booleans())
    def arm_a_crash(self, op, nth, after):
        # It stays armed for the next request only (`_attempt` disarms)
        self.fleet.store.crash(op[0], op[1], nth, after)

    @rule(factory=FACTORIES)
    def claim(self, factory):
        self._attempt(lambda: self.fleet.claim(factory))

    @rule(pick=st.integers(0, 9), cost=COSTS)
    def report(self, pick, cost):
        job = self._held(pick)
        if job is not None and cost is not None:
            self._attempt(lambda: self.fleet.patch(job, job.stage.value, insights={"costUsd": cost}))

    @rule(pick=st.integers(0, 9), cost=COSTS)
    def autoship(self, pick, cost):
        job = self._held(pick)
        if job is not None:
            insights = {"costUsd": cost} if cost is not None else None

            def ship():
                tested = self.fleet.patch(job, "testing")
                self.fleet.patch(tested, "shipped", insights=insights)

            self._attempt(ship)

    @rule(
        pick=st.integers(0, 9),
        cost=COSTS,
        how=st.sampled_from(["shipped", "done", "failed", "retry", "released", "park"]),
    )
    def release(self, pick, cost, how):
        job = self._held(pick)
        if job is None:
            return
        body = {"insights": {"costUsd": cost}} if cost is not None else {}
        if how == "park":
            self._attempt(lambda: self.fleet.release(self.fleet.patch(job, "testing"), stage="testing", **body))
        else:
            self._attempt(lambda: self.fleet.release(job, result=how, **body))

    @rule(pick=st.integers(0, 9), action=st.sampled_from(["ship", "requeue", "cancel"]))
    def operator(self, pick, action):
        job = self._job(pick)
        self._attempt(lambda: self.fleet.act(job, action))

    @rule(factory=FACTORIES)
    def a_critical_job_preempts(self, factory):
        key = f"critical-{len(self.keys)}"
        self._attempt(lambda: self.fleet.submit(key, priority="critical", max_attempts=10))
        try:
            self.fleet.job(job_id(PRODUCT, key))
            self.keys.append(key)
        except errors.NotFound:
            pass  # the submit crashed before its write
        self._attempt(lambda: self.fleet.claim(factory, seat_limit=1))

    @rule(seconds=st.sampled_from([60, LEASE_SECONDS + 1]))
    def time_passes_and_the_sweep_runs(self, seconds):
        self.fleet.clock.advance(seconds)
        self._attempt(lambda: sweep.run(self.fleet.ctx))

    @rule()
    def replay(self):
        self._attempt(lambda: spend.replay_pending(self.fleet.ctx))

    @rule(pick=st.integers(0, 50))
    def a_zombie_writes_with_an_old_lease(self, pick):
        self.fleet.store.disarm()  # (this one is about fencing, not crashes)
        if not self.old_leases:
            return
        job_id, lease_id = self.old_leases[pick % len(self.old_leases)]
        job = self.fleet.job(job_id)
        if job.lease is not None and job.lease.lease_id == lease_id:
            return  # still its live lease: not a zombie
        before = job.to_doc()
        try:
            self.fleet.release(job, lease_id=lease_id, result="shipped", insights={"costUsd": 5.0})
        except errors.LeaseLost:
            pass
        else:
            raise AssertionError("a stale lease wrote")
        assert self.fleet.job(job_id).to_doc() == before

    # invariants

    @invariant()
    def spend_agrees_with_the_runs(self):
        if not self.keys:
            return
        counted, truth, marked = spent(self.fleet), cost_of_ended_runs(self.fleet), cost_marked_accrued(self.fleet)
        assert marked <= counted <= truth  # never double-counted; never forgets a marked run
        if not pending(self.fleet):
            assert counted == truth

    @invariant()
    def every_live_claim_holds_its_estimate(self):
        budget = self.fleet.budget()
        held = budget.reservations.keys() if budget else set()
        for job in all_jobs(self.fleet):
            run = job.latest_run
            if run is not None and run.ended_at is None and run.reservation is not None:
                assert run.reservation in held


def test_property_spend_never_double_counts_under_any_interleaving():
    run_state_machine_as_test(
        SpendLedger, settings=hsettings(max_examples=40, stateful_step_count=25, deadline=None)
    )

