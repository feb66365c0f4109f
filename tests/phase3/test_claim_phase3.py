"""Claiming with both phase-3 flags on: the budget is checked before anything else, then the
seat limit (where only a critical job may be taken, by preemption), then the candidates; an
estimated cost is reserved before the job is taken. With the flags off, a claim is Phase 2."""
from __future__ import annotations

import pytest

from fleet import budget_rules, budgets, claims, store as store_port
from fleet.context import Context
from fleet.stages import RunResult, Stage

from tests.phase3.conftest import PRODUCT, Fleet, opened, phase3


def live_leases(fleet: Fleet, factory: str) -> list[str]:
    query = store_port.Query("jobs", None, (store_port.Filter("lease.factoryId", "=", factory),), limit=100)
    return sorted(doc["idempotencyKey"] for doc in store_port.query_all(fleet.store.inner, query))


def at_its_limit(fleet: Fleet, factory: str = "factory-1", key: str = "low"):
    """`factory` (one seat, by heartbeat) running one low job."""
    low = fleet.running(key, factory=factory, priority="low")
    fleet.heartbeat(factory, seat_limit=1, running=[low])
    return low


@pytest.mark.parametrize(
    "refuse, reason",
    [
        (lambda fleet: budgets.pause(fleet.ctx, PRODUCT), "budget_paused"),
        (lambda fleet: budgets.put(fleet.ctx, PRODUCT, 0.0, budget_rules.Window.MONTHLY), "budget_paused"),  # 0 >= 0
    ],
)
def test_the_budget_is_checked_before_the_seat_limit_and_nothing_is_evicted(fleet, refuse, reason):
    # Given a factory at its limit, a critical job waiting, and a budget that refuses
    low = at_its_limit(fleet)
    fleet.put_budget(10.0)
    fleet.submit("urgent", priority="critical")
    refuse(fleet)
    counting = store_port.CountingStore(fleet.store.inner)
    # When the factory claims
    claimed = claims.claim_next(Context(counting, fleet.clock, fleet.ctx.settings), claims.ClaimRequest("factory-1", PRODUCT))
    # Then the budget answers, with one point read: no seat count, no job scan, no eviction
    assert (claimed.job, claimed.reason) == (None, reason)
    assert dict(counting.calls) == {"read:budgets": 1}
    assert fleet.job(low).stage == Stage.ASSIGNED


def test_no_job_is_evicted_for_a_critical_job_the_budget_cannot_start(fleet):
    # Given a factory at its limit and a critical job whose estimate (8) does not fit (5 + 8 > 10)
    fleet.put_budget(10.0)
    low = at_its_limit(fleet)
    fleet.release(low, result="retry", insights={"costUsd": 5.0})
    low = fleet.claim_job(fleet.job(low), "factory-1").job
    fleet.submit("urgent", priority="critical", estimated_cost_usd=8.0)
    # When the factory claims, Then no job, and its running job keeps its seat
    claimed = fleet.claim("factory-1")
    assert (claimed.job, claimed.reason) == (None, "budget_exceeded")
    assert fleet.job(low).stage == Stage.ASSIGNED


def test_the_preemptors_estimate_is_reserved(fleet):
    fleet.put_budget(10.0)
    low = at_its_limit(fleet)
    urgent = fleet.submit("urgent", priority="critical", estimated_cost_usd=4.0)
    claimed = fleet.claim("factory-1")
    assert (claimed.job.id, claimed.preempted) == (urgent.id, [low.id])
    assert fleet.budget().reserved_usd == 4.0


def test_if_the_preemptor_is_taken_by_a_rival_the_freed_seat_is_simply_free(fleet, faulty):
    # Given factory-1 at its limit and a critical job; a rival will take that job just after
    # factory-1 evicts its victim
    low = at_its_limit(fleet)
    urgent = fleet.submit("urgent", priority="critical")
    rival = fleet.with_settings()

    def rival_claims():
        request = claims.ClaimRequest("factory-2", PRODUCT)
        claims.claim_job(rival.observer, urgent.id, PRODUCT, request)

    # (replace #1 on jobs is the eviction; the rival then takes the critical job)
    faulty.meanwhile("replace", "jobs", rival_claims)
    claimed = fleet.claim("factory-1")
    # Then the rival holds the critical job; the victim was evicted once, and the freed seat
    # is simply free: the same claim, no longer at the limit, takes the best job left (the
    # victim itself) without preempting anything
    assert fleet.job(urgent).lease.factory_id == "factory-2"
    assert (claimed.job.id, claimed.preempted) == (low.id, [])
    victim = fleet.job(low)
    assert victim.runs[-2].result == RunResult.PREEMPTED and victim.lease.factory_id == "factory-1"
    assert [e.type for e in victim.events].count("preempted") == 1


def test_a_lost_race_falls_through_releasing_only_its_own_reservation(fleet, faulty):
    # Given two queued jobs estimated at 4 (the older first in line) and a 20-dollar ceiling
    fleet.put_budget(20.0)
    first = fleet.submit("first", estimated_cost_usd=4.0)
    fleet.clock.advance(60)
    second = fleet.submit("second", estimated_cost_usd=4.0)
    rival = fleet.with_settings()

    def rival_takes_first():
        claims.claim_job(rival.observer, first.id, PRODUCT, claims.ClaimRequest("factory-2", PRODUCT))

    # When a rival takes the first job right after factory-1 reserved for it
    faulty.meanwhile("replace", "budgets", rival_takes_first)
    claimed = fleet.claim("factory-1")
    # Then factory-1 falls through to the second job
    assert claimed.job.id == second.id
    # and both running claims hold their estimate: 4 + 4
    winner = fleet.job(first)
    held = fleet.budget().reservations
    assert held.keys() == {winner.latest_run.reservation, claimed.job.latest_run.reservation}
    assert fleet.budget().reserved_usd == 8.0


def test_a_critical_job_may_evict_a_job_of_another_product(fleet):
    # Seats belong to the factory, not the product
    other = fleet.running("other-work", priority="normal", product_id="beta")
    fleet.heartbeat("factory-1", seat_limit=1, running=[other])
    urgent = fleet.submit("urgent", priority="critical")
    claimed = fleet.claim("factory-1")
    assert (claimed.job.id, claimed.preempted) == (urgent.id, [other.id])
    assert live_leases(fleet, "factory-1") == ["urgent"]


def test_at_the_limit_only_critical_jobs_are_considered(fleet):
    # Given a one-seat factory running a low job, an older normal job and a newer critical one
    at_its_limit(fleet)
    fleet.submit("normal")  # would win on score with a free seat
    urgent = fleet.submit("urgent", priority="critical")
    claimed = fleet.claim("factory-1")
    assert claimed.job.id == urgent.id
    assert live_leases(fleet, "factory-1") == ["urgent"]


@pytest.mark.parametrize(
    "flags",
    [
        {"budgets": False, "preemption": False},
        {"budgets": False, "preemption": True},
        {"budgets": True, "preemption": False},
    ],
)
def test_each_flag_switches_only_its_own_rule(flags):
    with opened(phase3(**flags)) as fleet:
        # Given a paused product, a factory at its one-seat limit, and a normal job waiting
        fleet.put_budget(10.0)
        low = at_its_limit(fleet)
        budgets.pause(fleet.ctx, PRODUCT)
        waiting = fleet.submit("waiting")
        claimed = fleet.claim("factory-1")
        if flags["budgets"]:
            assert claimed.reason == "budget_paused"
        elif flags["preemption"]:
            assert claimed.reason == "seat_limit"
        else:
            # Phase 2: the seat limit is advisory and the budget is not enforced
            assert claimed.job.id == waiting.id
        assert fleet.job(low).stage == Stage.ASSIGNED


def test_a_claim_reports_what_it_preempted(fleet):
    low = at_its_limit(fleet)
    fleet.submit("urgent", priority="critical")
    doc = fleet.claim("factory-1").to_doc()
    assert doc["preempted"] == [low.id]
    assert doc["lease"]["factoryId"] == "factory-1"
    assert doc["runId"] == doc["job"]["runs"][-1]["runId"]
