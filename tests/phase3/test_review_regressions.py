"""Regressions of the independent review: each test pins one defect the review reproduced
(its script's name in the section heading) as the behaviour the fleet promises instead.

What other suites already pin is not repeated here: nested bodies and forged continuations
(`tests/api/test_bad_input.py`), the first heartbeat after an outage (`tests/api/test_jobs_api.py`),
SQLite query plans (`tests/conformance/test_sqlite_plans.py`) and the Cosmos indexing policy
(`tests/test_bicep.py`).
"""
from __future__ import annotations

import json
from typing import Any

import pytest

from fleet import claims, dag, errors, outage, store as store_port, submit, sweep, writes
from fleet.clock import SystemClock
from fleet.context import Context
from fleet.jobs import Job, job_id
from fleet.schemas import ChildSpec, JobSpec
from fleet.stages import Stage
from shared.stores.sqlite_store import SqliteStore

from .conftest import LEASE_SECONDS, PHASE3, PRODUCT, Fleet, opened, phase3


class Poisoned(store_port.CountingStore):
    """The real store, refusing every write of one job for good (as Cosmos refuses an item
    past its size limit): what a job that keeps failing looks like to the sweep."""

    def __init__(self, inner: store_port.Store, job_id: str) -> None:
        super().__init__(inner)
        self.job_id = job_id

    def _refuse(self, doc: dict[str, Any]) -> None:
        if doc.get("id") == self.job_id:
            raise errors.TooLarge(f"job {self.job_id} is poisoned")

    def create(self, container, doc):
        self._refuse(doc)
        return super().create(container, doc)

    def replace(self, container, doc, etag):
        self._refuse(doc)
        return super().replace(container, doc, etag)

    def upsert(self, container, doc):
        self._refuse(doc)
        return super().upsert(container, doc)


def poisoned(fleet: Fleet, job: Job) -> Context:
    """`fleet`'s context over a store on which every write of `job` fails."""
    return Context(Poisoned(fleet.store.inner, job.id), fleet.clock, fleet.ctx.settings)


# r01: a factory at its seat limit scanned the whole queue on every claim.


def job_queries_of_a_claim_at_the_seat_limit(queued: int) -> int:
    with opened() as fleet:
        # Given a factory holding its only seat, and `queued` normal jobs waiting
        fleet.running("held", factory="factory-1")
        for n in range(queued):
            fleet.submit(f"waiting-{n}")
        # When it claims again
        fleet.store.reset()
        claimed = fleet.claim("factory-1", seat_limit=1)
        # Then it is refused for its seat limit (only critical work may preempt)
        assert (claimed.job, claimed.reason) == (None, "seat_limit")
        return fleet.store.calls["query:jobs"]


def test_a_factory_at_its_seat_limit_reads_only_the_critical_buckets():
    shallow, deep = job_queries_of_a_claim_at_the_seat_limit(200), job_queries_of_a_claim_at_the_seat_limit(4000)
    # The same few queries however deep the queue: one per critical (priority, attempts)
    # bucket and one for the factory's running jobs, never a page of normal work.
    assert shallow == deep <= claims.MAX_ATTEMPTS + 1


# r02: a queue-state bump the store refused was never repaired.


def test_a_lost_queue_state_bump_is_repaired_by_the_next_sweep(fleet, clock, faulty):
    # Given the sweep has been running
    sweep.run(fleet.ctx)
    version = fleet.version()
    # When a job is queued but the store refuses its queue-state bump
    clock.advance(60)
    faulty.crash("increment", "jobs")
    job = fleet.submit("lost-bump")
    assert faulty.crashed == ["increment:jobs"]
    assert (fleet.job(job).stage, fleet.version()) == (Stage.QUEUED, version)  # the submit stands
    # Then the next sweep bumps the queue-state, so gated factories look again
    clock.advance(60)
    assert sweep.run(fleet.ctx)["bumped"] == 1
    assert fleet.version() == version + 1
    # and only once: the version is no longer behind its newest queued job
    clock.advance(60)
    assert sweep.run(fleet.ctx)["bumped"] == 0
    assert fleet.version() == version + 1


# r03: releasing dependents read every blocked job of the product, and skipped some.


def job_queries_to_ship_a_job_nobody_waits_on(unrelated_blocked: int) -> int:
    with opened() as fleet:
        # Given `unrelated_blocked` jobs waiting on a gate, and a running job nobody waits on
        fleet.submit("gate")
        for n in range(unrelated_blocked):
            fleet.submit(f"waiting-{n}", deps=["gate"])
        lonely = fleet.running("lonely")
        # When the lonely job ships
        fleet.store.reset()
        fleet.release(lonely, result="shipped")
        return fleet.store.calls["query:jobs"]


def test_releasing_dependents_costs_the_same_however_many_unrelated_jobs_are_blocked():
    # 1000 blocked jobs are five pages of 200 for a scan of the blocked jobs: none are read
    assert job_queries_to_ship_a_job_nobody_waits_on(0) == job_queries_to_ship_a_job_nobody_waits_on(1000)


def test_a_finished_job_unblocks_all_its_dependents_across_several_pages(fleet):
    # Given 450 jobs waiting on one dep: three pages of 200
    dep = fleet.running("dep")
    waiting = [fleet.submit(f"waiting-{n}", deps=["dep"]) for n in range(450)]
    assert {fleet.job(j).stage for j in waiting} == {Stage.BLOCKED}
    # When the dep ships
    fleet.release(dep, result="shipped")
    # Then every dependent is queued at once, none left for the sweep
    assert {fleet.job(j).stage for j in waiting} == {Stage.QUEUED}


# r03b: every sweep re-read every blocked job and each of its deps.


def job_reads_of_a_quiet_sweep(blocked: int) -> int:
    with opened() as fleet:
        # Given `blocked` jobs waiting on deps that have not moved, and a sweep every minute
        fleet.submit("dep")
        fleet.submit("dep-2")
        for n in range(blocked):
            fleet.submit(f"waiting-{n}", deps=["dep", "dep-2"])
        for _ in range(10):  # past the repair margin: nothing changed since the last sweeps
            fleet.clock.advance(60)
            sweep.run(fleet.ctx)
        # When the sweep runs again
        fleet.clock.advance(60)
        fleet.store.reset()
        sweep.run(fleet.ctx)
        return fleet.store.calls["read:jobs"]


def test_a_sweep_reads_only_what_changed_since_the_last_one():
    # 500 blocked jobs with two deps each cost 1500+ point reads a sweep when all were re-read
    assert job_reads_of_a_quiet_sweep(0) == job_reads_of_a_quiet_sweep(500)


# r04: a candidate too dear for the budget ended the claim; a released reservation told nobody.


def test_a_candidate_too_dear_for_the_budget_is_passed_over_for_an_affordable_one(fleet, clock):
    # Given a ceiling of 10, of which a running job has reserved its estimate of 8
    fleet.put_budget(10.0)
    fleet.submit("big", priority="high", estimated_cost_usd=8.0)
    clock.advance(1)
    fleet.submit("big-2", priority="high", estimated_cost_usd=8.0)
    clock.advance(1)
    small = fleet.submit("small", estimated_cost_usd=0.5)
    clock.advance(1)
    unestimated = fleet.submit("unestimated")
    assert fleet.claim("factory-1").job.idempotency_key == "big"
    # When other factories claim: big-2 ranks first but 8 + 8 > 10
    # Then they take the cheaper jobs that fit (8 + 0.5 <= 10; no estimate reserves nothing)
    assert fleet.claim("factory-2").job.id == small.id
    assert fleet.claim("factory-3").job.id == unestimated.id
    # and only when nothing queued fits is the claim refused for the budget
    refused = fleet.claim("factory-4")
    assert (refused.job, refused.reason) == (None, "budget_exceeded")


def test_a_released_reservation_bumps_the_queue_state_so_gated_factories_look_again(fleet, clock):
    # Given "big" reserved 8 of a ceiling of 10, so "big-2" (also 8) does not fit
    fleet.put_budget(10.0)
    fleet.submit("big", priority="high", estimated_cost_usd=8.0)
    clock.advance(1)
    big_2 = fleet.submit("big-2", priority="high", estimated_cost_usd=8.0)
    big = fleet.claim("factory-1").job
    assert fleet.claim("factory-2").reason == "budget_exceeded"
    version = fleet.version()
    # When "big" ships having really cost 0.1, giving back its reservation
    fleet.release(big, result="shipped", insights={"costUsd": 0.1})
    # Then the queue-state moves, and the gated factory now fits big-2: 0.1 + 8 <= 10
    assert fleet.version() > version
    assert fleet.budget().reserved_usd == 0.0
    assert fleet.claim("factory-2").job.id == big_2.id


# r05: turning FLEET_BUDGETS on charged the whole history to the current window.


def test_runs_that_ended_while_budgets_were_off_are_not_charged_to_the_current_window():
    with opened(phase3(budgets=False)) as off:
        # Given three months of runs costing 5 each while budgets were off: 12 x 5 = 60
        for month in range(3):
            for n in range(4):
                off.release(off.running(f"m{month}-{n}"), result="shipped", insights={"costUsd": 5.0})
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
        on.submit("this-month")
        assert on.claim().job.idempotency_key == "this-month"


# r06: a job could grow without bound, and one failing job stopped the whole sweep.


def test_a_job_refuses_to_grow_past_its_bound(fleet):
    # Given a running job whose factory reports 15 KiB of insights on every PATCH
    job = fleet.running("chatty")
    accepted = fleet.job(job)
    # When it keeps reporting: MAX_JOB_BYTES // 15 KiB + 1 reports are more than the bound
    with pytest.raises(errors.TooLarge):
        for n in range(writes.MAX_JOB_BYTES // (15 * 1024) + 1):
            fleet.patch(job, "building", insights={f"log-{n}": "x" * (15 * 1024)})
            accepted = fleet.job(job)
    # Then the report that would cross the bound is refused and nothing of it is written
    stored = fleet.job(job)
    assert stored.etag == accepted.etag
    assert len(json.dumps(fleet.store.inner.read("jobs", PRODUCT, job.id), separators=(",", ":"))) <= writes.MAX_JOB_BYTES
    # and the job can still finish
    assert fleet.release(job, result="shipped").stage == Stage.SHIPPED


def test_one_job_that_keeps_failing_does_not_stop_the_sweep(fleet, clock):
    # Given the sweep running every minute, and three jobs claimed, the poisoned one first
    # (its lease expires first, so the sweep meets it before the others)
    sweep.run(fleet.ctx)
    poison = fleet.running("poisoned", factory="factory-1")
    clock.advance(1)
    healthy = [fleet.running(f"healthy-{n}", factory=f"factory-{n + 2}") for n in range(2)]
    swept = poisoned(fleet, poison)
    # When every factory dies and the sweep runs on, failing every write of the poisoned job
    for _ in range(LEASE_SECONDS // 60 + 1):
        clock.advance(60)
        counts = sweep.run(swept)
    # Then the other expired leases went back to the queue with an attempt counted
    assert [(fleet.job(j).stage, fleet.job(j).attempts) for j in healthy] == [(Stage.QUEUED, 1)] * 2
    # the poisoned job was passed over, as it stands, and counted as failed
    assert fleet.job(poison).stage == Stage.ASSIGNED
    assert counts["failed"] == 1
    # and the sweep recorded its run, so no outage grace spares leases that merely expired
    assert outage.last_sweep(fleet.observer) == clock.now()


def test_one_job_that_keeps_failing_does_not_stop_the_accruals_of_the_others():
    with opened(phase3(budgets=False)) as off:
        # Given three runs of this month, 2 each, left to accrue (budgets were off)
        shipped = [off.release(off.running(f"run-{n}"), result="shipped", insights={"costUsd": 2.0}) for n in range(3)]
        # the poisoned one first in the sweep's read (the smallest id)
        poison = min(shipped, key=lambda job: job.id)
        on = off.with_settings(budgets=True)
        # When budgets are on and the sweep replays accruals, failing every write of the poisoned job
        on.clock.advance(60)
        sweep.run(poisoned(on, poison))
        # Then the healthy jobs are settled and charged (2 + 2; the poisoned run is charged
        # once too, its mark is what fails), and only the poisoned job stays pending
        assert [on.job(job).accrual_pending for job in sorted(shipped, key=lambda j: j.id)] == [True, False, False]
        assert on.budget().spent_usd == 6.0


# r07: add_children wrote the children first; a claim in between stranded them.


def a_rival_claims(fleet: Fleet, parent: Job, outcome: dict[str, str]):
    """Another factory claiming `parent`; `outcome["rival"]` says how it went."""

    def claim() -> None:
        request = claims.ClaimRequest("factory-rival", PRODUCT)
        try:
            claims.claim_job(fleet.observer, parent.id, PRODUCT, request)
            outcome["rival"] = "claimed"
        except errors.FleetError as refused:
            outcome["rival"] = refused.code

    return claim


@pytest.mark.parametrize(
    "op, nth, rival, add_children, children",
    [
        # right after add_children read the parent: the rival wins, nothing is added
        ("read", 1, "claimed", "illegal_transition", 0),
        # while the first child is written: the parent already waits on it, the rival loses
        ("create", 1, "not_claimable", "added", 2),
        # between the first and the second child: likewise
        ("create", 2, "not_claimable", "added", 2),
    ],
)
def test_a_claim_racing_add_children_leaves_no_orphan_children(fleet, faulty, op, nth, rival, add_children, children):
    # Given a queued parent, and a rival factory that claims it at a chosen point
    parent = fleet.submit("parent")
    outcome: dict[str, str] = {}
    faulty.meanwhile(op, "jobs", a_rival_claims(fleet, parent, outcome), nth=nth)
    # When two children are added
    try:
        dag.add_children(fleet.ctx, parent.id, [ChildSpec(idempotency_key="child-1"), ChildSpec(idempotency_key="child-2")])
        outcome["add_children"] = "added"
    except errors.FleetError as refused:
        outcome["add_children"] = refused.code
    # Then one of the two wins
    assert outcome == {"rival": rival, "add_children": add_children}
    # and every child that exists is listed by its parent, which waits on it instead of running
    after = fleet.job(parent)
    existing = []
    for key in ("child-1", "child-2"):
        try:
            existing.append(fleet.job(job_id(PRODUCT, key)))
        except errors.NotFound:
            continue
    assert len(existing) == children
    for child in existing:
        assert child.parent_id == parent.id
        assert child.id in after.children and child.idempotency_key in after.deps
        assert (after.stage, after.lease) == (Stage.BLOCKED, None)


# r08: with a real clock a submit wrote its job twice.


def test_a_submit_with_the_system_clock_writes_its_job_once():
    real = SqliteStore(":memory:")
    try:
        counted = store_port.CountingStore(real)
        ctx = Context(counted, SystemClock(), PHASE3)
        for n in range(20):  # the system clock is hardly ever on a whole millisecond
            counted.reset()
            submit.submit(ctx, JobSpec(product_id=PRODUCT, idempotency_key=f"job-{n}"))
            assert (counted.calls["create:jobs"], counted.calls["replace:jobs"]) == (1, 0)
    finally:
        real.close()


# r13: a change of window kept the old window's spend.


def ship(fleet: Fleet, key: str, cost: float) -> None:
    fleet.release(fleet.running(key), result="shipped", insights={"costUsd": cost})


@pytest.mark.parametrize(
    "before, after, spent",
    [
        ("monthly", "daily", 30.0),  # only today's 30; the 50 + 50 of three days ago is another day
        ("daily", "monthly", 130.0),  # this month's 50 + 50 + 30, not just today's
    ],
)
def test_changing_the_window_recomputes_spend_from_the_ledger(fleet, clock, before, after, spent):
    # Given runs that cost 50 + 50 on Monday and 30 on Thursday of the same month
    fleet.put_budget(1000.0, before)
    ship(fleet, "monday-1", 50.0)
    ship(fleet, "monday-2", 50.0)
    clock.advance(days=3)
    ship(fleet, "thursday", 30.0)
    # When the window changes (under a ceiling of 100)
    budget = fleet.put_budget(100.0, after)
    # Then the new window's spend is what was accrued within it
    assert (budget.window.value, budget.spent_usd, budget.paused) == (after, spent, spent >= 100.0)
    assert fleet.budget().spent_usd == spent
