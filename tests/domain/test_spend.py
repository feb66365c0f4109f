"""Spend: what a run cost is accrued to its product's budget exactly once, when the run ends —
shipped, done, failed, retried, expired, preempted or given back — whatever crashes between
the job's write and the budget's, and however ship, release, sweep and replays interleave."""
from __future__ import annotations

import pytest
from hypothesis import settings as hsettings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from fleet import activity, errors, spend, store as store_port, sweep
from fleet.jobs import Job, job_id
from fleet.stages import RunResult, Stage

from fleet.testing import LEASE_SECONDS, PRODUCT, World, flags_on, open_world

#: Budgets and preemption on for every world here.
pytestmark = pytest.mark.settings(flags_on())


def spent(world: World) -> float:
    budget = world.budget()
    return budget.spent_usd if budget else 0.0


def all_jobs(world: World) -> list[Job]:
    query = store_port.Query("jobs", PRODUCT, (store_port.Filter("idempotencyKey", "!=", None),), limit=500)
    return [Job.from_doc(doc) for doc in store_port.query_all(world.store.inner, query)]


def cost_of_ended_runs(world: World) -> float:
    """The truth the budget must agree with: every ended run's reported cost (by its holder, or
    later by its lost lease: `Run.cost_usd`)."""
    jobs = all_jobs(world)
    assert all(job.runs_dropped == 0 for job in jobs), "a run left the ring: the sum below would be short"
    return sum(run.cost_usd or 0 for job in jobs for run in job.runs if run.ended_at)


def cost_marked_accrued(world: World) -> float:
    runs = [run for job in all_jobs(world) for run in job.runs]
    own = sum(float(run.insights.get("costUsd") or 0) for run in runs if run.accrued)
    return own + sum(run.late_usd for run in runs if run.late_report and run.late_report.accrued)


def pending(world: World) -> list[str]:
    return [job.id for job in all_jobs(world) if job.accrual_pending]


# Every way a run ends is spend


def ship_by_patch(world, job, cost):
    return world.patch(world.patch(job, "testing"), "shipped", insights={"costUsd": cost})


def release_as(result):
    def end(world, job, cost):
        return world.release(job, result=result, insights={"costUsd": cost})

    end.__name__ = f"release_{result}"
    return end


def expire(world, job, cost):
    world.patch(job, "building", insights={"costUsd": cost})
    world.clock.advance(LEASE_SECONDS + 1)
    sweep.run(world.ctx)
    return world.job(job)


def preempt(world, job, cost):
    world.patch(job, "building", insights={"costUsd": cost})
    world.heartbeat("factory-1", seat_limit=1, running=[job])
    world.submit_job("urgent", priority="critical")
    assert world.claim("factory-1").preempted == [job.id]
    return world.job(job)


def operator(action):
    def end(world, job, cost):
        world.patch(job, "building", insights={"costUsd": cost})
        return world.act(job, action)

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
def test_every_ended_run_is_accrued_once(world, end_run, stage, result):
    # Given a budget and a running job
    world.put_budget(100.0)
    job = world.running_job("work", priority="low")
    # When its run ends having cost 2.5
    ended = end_run(world, job, 2.5)
    # Then the run carries the outcome, and its cost is spent once
    run = world.job(job).runs[0]
    assert (world.job(ended).stage, run.result, run.accrued) == (stage, result, True)
    assert spent(world) == 2.5
    # and nothing is left for the sweep to replay
    assert pending(world) == []
    sweep.run(world.ctx)
    assert spent(world) == 2.5


def test_shipping_twice_counts_once(world):
    # Given a job shipped by its factory's PATCH, with a cost of 4
    world.put_budget(100.0)
    job = ship_by_patch(world, world.running_job("work"), 4.0)
    # When an operator ships it again, and again
    for _ in range(2):
        again = world.act(job, "ship")
        assert again.stage == Stage.SHIPPED
    # Then it was counted once, and the latest run says shipped
    assert spent(world) == 4.0
    assert (world.job(job).latest_run.result, world.job(job).latest_run.ended_at) == (RunResult.SHIPPED, job.updated_at)


def test_a_parked_run_is_counted_when_parked_not_again_when_shipped(world):
    world.put_budget(100.0)
    parked = world.parked_job("work", cost=3.0)
    assert (parked.stage, parked.lease, spent(world)) == (Stage.TESTING, None, 3.0)
    shipped = world.act(parked, "ship")
    assert (shipped.latest_run.result, spent(world)) == (RunResult.SHIPPED, 3.0)


def test_each_run_of_a_job_counts(world):
    # Given a job that failed once (cost 1.25), then shipped (cost 2.5)
    world.put_budget(100.0)
    job = world.running_job("work")
    world.release(job, result="retry", insights={"costUsd": 1.25})
    again = world.claim_job(world.wait_out_retry(job)).job
    ship_by_patch(world, again, 2.5)
    # Then both runs are spend: 1.25 + 2.5 = 3.75
    assert spent(world) == 3.75
    assert [r.accrued for r in world.job(job).runs] == [True, True]


def test_with_the_flag_off_nothing_is_accrued(world):
    off = world.with_settings(budgets=False)
    job = off.running_job("work")
    ship_by_patch(off, job, 4.0)
    assert off.budget() is None
    assert spend.replay_pending(off.ctx) == 0


def test_runs_that_ended_while_budgets_were_off_are_not_charged_to_the_current_window():
    # Regression: turning FLEET_BUDGETS on used to charge the whole history to the current window.
    with open_world(flags_on(budgets=False)) as off:
        # Given three months of runs costing 5 each while budgets were off: 12 x 5 = 60
        for month in range(3):
            for n in range(4):
                off.release(off.running_job(f"m{month}-{n}"), result="shipped", insights={"costUsd": 5.0})
            off.clock.advance(days=31)
        history = [off.job(job_id(PRODUCT, f"m{month}-{n}")) for month in range(3) for n in range(4)]
        assert all(job.accrual_pending for job in history)
        # When budgets are turned on (another coordinator, the same store), a ceiling of 50
        # is put on this month and the sweep replays the pending accruals
        on = off.with_settings(budgets=True)
        on.put_budget(50.0)
        assert sweep.run(on.ctx)["accrued"] == 12
        # Then the history is settled but not charged: this month has spent nothing
        budget = on.budget()
        assert (budget.spent_usd, budget.paused) == (0.0, False)
        assert not any(on.job(job).accrual_pending for job in history)
        on.submit_job("this-month")
        assert on.claim().job.idempotency_key == "this-month"


# A run reported late by the lease taken from it


def _taken(world, ended_by: str, cost_so_far: float | None):
    """A running job whose run `ended_by` ends (expire, preempt, an operator's action), its
    holder having PATCHed `cost_so_far` (None: nothing): the job, and the lease it lost."""
    job = world.running_job("work", priority="low")
    end = {"expire": expire, "preempt": preempt}.get(ended_by) or operator(ended_by)
    return world.job(end(world, job, cost_so_far)), job.lease.lease_id


@pytest.mark.parametrize("ended_by", ["expire", "preempt", "requeue", "cancel"])
@pytest.mark.parametrize("cost_so_far, reported, counted", [(None, 2.5, 2.5), (1.0, 2.5, 2.5), (3.0, 2.5, 3.0)],
                         ids=["nothing-before", "part-before", "more-before"])
def test_a_late_report_counts_what_the_run_cost_once(world, ended_by, cost_so_far, reported, counted):
    # Given a budget, and a run taken from its factory (which may have PATCHed a cost before)
    world.put_budget(100.0)
    job, lease = _taken(world, ended_by, cost_so_far)
    assert job.lease is None or job.lease.lease_id != lease
    assert spent(world) == (cost_so_far or 0.0)
    # When its lost lease reports the run's whole cost, and repeats the report
    reported_job = world.report(job, lease, insights={"costUsd": reported})
    world.report(job, lease, insights={"costUsd": reported})
    # Then the budget holds the run's cost once (a lower late figure adds nothing)
    run = next(r for r in world.job(job).runs if r.lease_id == lease)
    assert (run.late_report.accrued, run.cost_usd, spent(world)) == (True, counted, counted)
    assert reported_job.stage == job.stage and pending(world) == []
    sweep.run(world.ctx)
    assert spent(world) == counted


def test_a_late_report_after_the_window_turned_is_charged_to_the_window_it_came_in(world):
    # Given a daily budget, and a run that expired just before midnight, its holder having
    # PATCHed part of its cost
    world.clock.advance(hours=14, minutes=50)
    world.put_budget(100.0, window="daily")
    job, lease = _taken(world, "expire", 0.5)
    assert world.clock.now().date() == world.job(job).runs[0].ended_at.date() and spent(world) == 0.5
    # When its lost lease reports the run's whole cost after midnight
    world.clock.advance(minutes=15)
    world.report(job, lease, insights={"costUsd": 5.0})
    # Then today's window holds what the report added, and the day's rollup agrees with it
    assert spent(world) == 4.5
    assert activity.days(world.observer, 1)[0].spent_usd == 4.5


def test_a_late_report_landing_while_the_runs_own_accrual_is_in_flight_counts_both_once(world, faulty):
    # Given a job with an estimate (its run's end has an accrual to make even without a cost)
    world.put_budget(100.0)
    job = world.running_job("work", priority="low", estimated_cost_usd=1.0)
    lease = job.lease.lease_id
    other_process = world.with_settings()
    # When the run is preempted, and its lost lease's report lands just as the preemption's
    # follow-up writes the budget
    reports = []
    faulty.meanwhile("patch", "budgets", lambda: reports.append(
        other_process.report(job, lease, insights={"costUsd": 2.0})))
    world.heartbeat("factory-1", seat_limit=1, running=[job])
    world.submit_job("urgent", priority="critical")
    assert world.claim("factory-1").preempted == [job.id]
    assert len(reports) == 1
    # Then the run's own accrual (nothing reported by its holder) and its late one are each
    # counted once, and marked
    sweep.run(world.ctx)
    run = world.job(job).runs[0]
    assert (spent(world), run.accrued, run.late_report.accrued, pending(world)) == (2.0, True, True, [])
    assert world.budget().reserved_usd == 0


def test_a_crash_after_a_late_reports_write_is_finished_by_the_sweep(world, faulty):
    world.put_budget(100.0)
    job, lease = _taken(world, "requeue", 0.5)
    faulty.crash("patch", "budgets")
    world.report(job, lease, insights={"costUsd": 2.0})
    assert (spent(world), pending(world)) == (0.5, [job.id])
    assert sweep.run(world.ctx)["accrued"] == 1
    sweep.run(world.ctx)
    assert (spent(world), pending(world)) == (2.0, [])


# Crashes between the job's write and the budget's


@pytest.mark.parametrize(
    "op, container, nth, after, counted_before_sweep",
    [
        # the budget write never happened: nothing counted until the sweep
        ("read", "budgets", 1, False, 0.0),
        ("patch", "budgets", 1, False, 0.0),
        # the budget write happened but the process died before hearing of it
        ("patch", "budgets", 1, True, 4.0),
        # the budget counted it; the job's `accrued` mark (its 2nd write) never happened
        # (the mark writes on the ETag the PATCH's own write returned: it reads nothing first)
        ("patch", "jobs", 2, False, 4.0),
    ],
)
def test_a_crash_after_the_job_write_neither_loses_nor_double_counts(world, faulty, op, container, nth, after, counted_before_sweep):
    # Given a budget and a job at testing
    world.put_budget(100.0)
    job = world.patch(world.running_job("work"), "testing")
    # When the factory ships it (cost 4) and the coordinator crashes at the chosen call
    faulty.crash(op, container, nth, after)
    shipped = world.patch(job, "shipped", insights={"costUsd": 4.0})
    assert faulty.crashed == [f"{op}:{container}"]
    # Then the job's write stood: shipped, its run ended shipped, the accrual still pending
    stored = world.job(job)
    assert (shipped.stage, stored.stage, stored.latest_run.result) == (Stage.SHIPPED, Stage.SHIPPED, RunResult.SHIPPED)
    assert stored.accrual_pending is True
    assert spent(world) == counted_before_sweep
    # When the sweep runs (twice, for good measure)
    assert sweep.run(world.ctx)["accrued"] == 1
    sweep.run(world.ctx)
    # Then the run is counted exactly once, and marked so
    assert spent(world) == 4.0
    assert (world.job(job).accrual_pending, world.job(job).latest_run.accrued) == (False, True)


def test_a_crash_creating_the_first_budget_document_is_repaired(world, faulty):
    # Given a product with no budget yet (spend is tracked anyway)
    job = world.patch(world.running_job("work"), "testing")
    faulty.crash("create", "budgets")
    world.patch(job, "shipped", insights={"costUsd": 4.0})
    assert world.budget() is None
    spend.replay_pending(world.ctx)
    assert spent(world) == 4.0


def test_a_crash_on_the_job_write_itself_changes_nothing(world, faulty):
    world.put_budget(100.0)
    job = world.patch(world.running_job("work"), "testing")
    faulty.crash("patch", "jobs")
    with pytest.raises(errors.StoreBusy):
        world.patch(job, "shipped", insights={"costUsd": 4.0})
    assert (world.job(job).stage, spent(world)) == (Stage.TESTING, 0.0)
    # and the factory's retry ships it, counted once
    world.patch(job, "shipped", insights={"costUsd": 4.0})
    sweep.run(world.ctx)
    assert spent(world) == 4.0


def test_a_crash_after_the_job_write_before_any_follow_up_is_repaired(world, faulty):
    # Given the coordinator died right after writing the shipped job (the factory saw an error)
    world.put_budget(100.0)
    job = world.patch(world.running_job("work"), "testing")
    faulty.crash("patch", "jobs", after=True)
    with pytest.raises(errors.StoreBusy):
        world.patch(job, "shipped", insights={"costUsd": 4.0})
    # When the factory retries, Then it is answered with the shipped job (its own write), and
    # the accrual the crash interrupted is finished
    retried = world.patch(job, "shipped", insights={"costUsd": 4.0})
    assert (retried.stage, world.job(job).stage, spent(world)) == (Stage.SHIPPED, Stage.SHIPPED, 4.0)
    # and the sweep counts it no more
    sweep.run(world.ctx)
    sweep.run(world.ctx)
    assert spent(world) == 4.0


def test_concurrent_replays_count_once(world, faulty):
    # Given an accrual interrupted after the budget write
    world.put_budget(100.0)
    job = world.patch(world.running_job("work"), "testing")
    faulty.crash("patch", "jobs", nth=2)
    world.patch(job, "shipped", insights={"costUsd": 4.0})
    stale = world.job(job)
    assert (stale.accrual_pending, spent(world)) == (True, 4.0)
    # When two processes replay it from the same read
    spend.settle(world.ctx, stale)
    spend.settle(world.ctx, stale)
    # Then it is counted once
    assert spent(world) == 4.0
    assert pending(world) == []


def test_a_sweep_replaying_between_the_budget_write_and_the_mark_counts_once(world, faulty):
    # Given an accrual in flight: the budget was just written, the job not yet marked
    world.put_budget(100.0)
    job = world.patch(world.running_job("work"), "testing")
    other_process = world.with_settings()  # (same store and settings)
    sweeps = []
    faulty.meanwhile("patch", "budgets", lambda: sweeps.append(spend.replay_pending(other_process.observer)))
    # When the sweep replays it at exactly that moment, and then the original finishes
    world.patch(job, "shipped", insights={"costUsd": 4.0})
    # Then the sweep found it pending, and yet it was counted once
    assert sweeps == [1]
    assert spent(world) == 4.0
    assert (world.job(job).accrual_pending, world.job(job).latest_run.accrued) == (False, True)


def test_one_job_that_keeps_failing_does_not_stop_the_accruals_of_the_others():
    with open_world(flags_on(budgets=False)) as off:
        # Given three runs of this month, 2 each, left to accrue (budgets were off)
        shipped = [off.release(off.running_job(f"run-{n}"), result="shipped", insights={"costUsd": 2.0}) for n in range(3)]
        # the poisoned one first in the sweep's read (the smallest id)
        poison = min(shipped, key=lambda job: job.id)
        on = off.with_settings(budgets=True)
        on.store.refuse_writes(poison.id)
        # When budgets are on and the sweep replays accruals, failing every write of the poisoned job
        on.clock.advance(60)
        sweep.run(on.ctx)
        # Then the healthy jobs are settled and charged (2 + 2; the poisoned run is charged
        # once too, its mark is what fails), and only the poisoned job stays pending
        assert [on.job(job).accrual_pending for job in sorted(shipped, key=lambda j: j.id)] == [True, False, False]
        assert on.budget().spent_usd == 6.0


# The property: under any interleaving, the budget agrees with the runs


COSTS = st.one_of(st.none(), st.integers(0, 20).map(lambda quarters: quarters / 4))  # exact in binary
CRASHES = st.sampled_from(
    [
        ("patch", "budgets"),
        ("read", "budgets"),
        ("replace", "jobs"),
        ("patch", "jobs"),
        ("read", "jobs"),
        ("query", "jobs"),
        ("increment", "jobs"),
    ]
)
FACTORIES = st.sampled_from(["factory-1", "factory-2"])


class SpendLedger(RuleBasedStateMachine):
    """Jobs (some with estimated costs) are claimed, report costs, ship, park, retry, give back,
    expire, get preempted, shipped, requeued and cancelled by operators, swept and replayed,
    reported late by the leases taken from them — while the
    store crashes at random calls. Invariants: spend never exceeds what ended runs cost and
    never falls below what runs are marked as counted; with nothing pending, it is exactly what
    ended runs cost; every live claim holds its estimate, and none is held once all have ended."""

    def __init__(self) -> None:
        super().__init__()
        self._world = open_world(flags_on())
        self.world: World = self._world.__enter__()
        self.keys: list[str] = []
        self.old_leases: list[tuple[str, str]] = []

    def teardown(self) -> None:
        try:
            # With the crashes over, the sweep finishes every interrupted accrual
            self.world.store.disarm()
            sweep.run(self.world.ctx)
            assert pending(self.world) == []
            assert spent(self.world) == cost_of_ended_runs(self.world)
            # and once every lease has run out (swept every minute: no outage grace), and what
            # an expired run held for its late report has lapsed (a term later), no estimate is
            # held any more
            for _ in range(2 * (LEASE_SECONDS // 60 + 1)):
                self.world.clock.advance(60)
                sweep.run(self.world.ctx)
            assert all(job.lease is None for job in all_jobs(self.world))
            assert spent(self.world) == cost_of_ended_runs(self.world)
            assert self.world.budget() is None or self.world.budget().reservations == {}
        finally:
            self._world.__exit__(None, None, None)

    @initialize(ceiling=st.sampled_from([None, 1e6]))
    def setup(self, ceiling):
        if ceiling is not None:
            self.world.put_budget(ceiling)
        for i, estimate in enumerate([None, 1.5, 0.25]):
            self.keys.append(self.world.submit_job(f"job-{i}", max_attempts=10, estimated_cost_usd=estimate).idempotency_key)

    # helpers

    def _job(self, pick: int) -> Job:
        return self.world.job(job_id(PRODUCT, self.keys[pick % len(self.keys)]))

    def _attempt(self, act) -> None:
        """Run one request; a crash, a lost lease or an illegal move is an answer, not a failure."""
        try:
            act()
        except (errors.StoreBusy, errors.LeaseLost, errors.IllegalTransition, errors.NotClaimable):
            pass
        finally:
            self.world.store.disarm()

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
        self.world.store.crash(op[0], op[1], nth, after)

    @rule(factory=FACTORIES)
    def claim(self, factory):
        self._attempt(lambda: self.world.claim(factory))

    @rule(pick=st.integers(0, 9), cost=COSTS)
    def report(self, pick, cost):
        job = self._held(pick)
        if job is not None and cost is not None:
            self._attempt(lambda: self.world.patch(job, job.stage.value, insights={"costUsd": cost}))

    @rule(pick=st.integers(0, 9), cost=COSTS)
    def autoship(self, pick, cost):
        job = self._held(pick)
        if job is not None:
            insights = {"costUsd": cost} if cost is not None else None

            def ship():
                tested = self.world.patch(job, "testing")
                self.world.patch(tested, "shipped", insights=insights)

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
            self._attempt(lambda: self.world.release(self.world.patch(job, "testing"), stage="testing", **body))
        else:
            self._attempt(lambda: self.world.release(job, result=how, **body))

    @rule(pick=st.integers(0, 9), action=st.sampled_from(["ship", "requeue", "cancel"]))
    def operator(self, pick, action):
        job = self._job(pick)
        self._attempt(lambda: self.world.act(job, action))

    @rule(factory=FACTORIES)
    def a_critical_job_preempts(self, factory):
        key = f"critical-{len(self.keys)}"
        self._attempt(lambda: self.world.submit_job(key, priority="critical", max_attempts=10))
        try:
            self.world.job(job_id(PRODUCT, key))
            self.keys.append(key)
        except errors.NotFound:
            pass  # the submit crashed before its write
        self._attempt(lambda: self.world.claim(factory, seat_limit=1))

    @rule(seconds=st.sampled_from([60, LEASE_SECONDS + 1]))
    def time_passes_and_the_sweep_runs(self, seconds):
        self.world.clock.advance(seconds)
        self._attempt(lambda: sweep.run(self.world.ctx))

    @rule()
    def replay(self):
        self._attempt(lambda: spend.replay_pending(self.world.ctx))

    @rule(pick=st.integers(0, 50))
    def a_zombie_writes_with_an_old_lease(self, pick):
        self.world.store.disarm()  # (this one is about fencing, not crashes)
        if not self.old_leases:
            return
        job_id, lease_id = self.old_leases[pick % len(self.old_leases)]
        job = self.world.job(job_id)
        if job.lease is not None and job.lease.lease_id == lease_id:
            return  # still its live lease: not a zombie
        before = job.to_doc()
        try:
            self.world.release(job, lease_id=lease_id, result="shipped", insights={"costUsd": 5.0})
        except errors.LeaseLost:
            pass
        else:
            raise AssertionError("a stale lease wrote")
        assert self.world.job(job_id).to_doc() == before

    @rule(pick=st.integers(0, 50), cost=COSTS, any_old=st.booleans())
    def a_lost_lease_reports_its_run_late(self, pick, cost, any_old):
        # mostly a run that was taken from its lease (expired, preempted, an operator's), else
        # any old lease (whose report may be refused)
        taken = [(job.id, run.lease_id) for job in all_jobs(self.world) for run in job.runs
                 if run.ended_at and run.ended_by is None and run.lease_id]
        leases = self.old_leases if any_old or not taken else taken
        if not leases or cost is None:
            return
        job_id, lease_id = leases[pick % len(leases)]

        def report():
            try:
                self.world.report(self.world.job(job_id), lease_id, insights={"costUsd": cost})
            except (errors.NotFound, errors.IdempotencyConflict):
                pass  # its run ended by its own write is IllegalTransition, caught by `_attempt`

        self._attempt(report)

    @rule(pick=st.integers(0, 9), action=st.sampled_from(["requeue", "cancel"]), cost=COSTS)
    def an_operator_takes_a_run_and_its_factory_reports_it_late(self, pick, action, cost):
        # the case a late report is for, made directly: the random rules above reach it rarely
        job = self._held(pick)
        if job is None or cost is None:
            return
        lease_id = job.lease.lease_id
        self._attempt(lambda: self.world.act(job, action))

        def report():
            try:
                self.world.report(self.world.job(job.id), lease_id, insights={"costUsd": cost})
            except errors.IdempotencyConflict:
                pass  # reported before, with another cost

        self._attempt(report)

    # invariants

    @invariant()
    def spend_agrees_with_the_runs(self):
        if not self.keys:
            return
        counted, truth, marked = spent(self.world), cost_of_ended_runs(self.world), cost_marked_accrued(self.world)
        assert marked <= counted <= truth  # never double-counted; never forgets a marked run
        if not pending(self.world):
            assert counted == truth

    @invariant()
    def every_live_claim_holds_its_estimate(self):
        budget = self.world.budget()
        held = budget.reservations.keys() if budget else set()
        for job in all_jobs(self.world):
            run = job.latest_run
            if run is not None and run.ended_at is None and run.reservation is not None:
                assert run.reservation in held


def test_property_spend_never_double_counts_under_any_interleaving():
    run_state_machine_as_test(
        SpendLedger, settings=hsettings(max_examples=40, stateful_step_count=25, deadline=None)
    )

