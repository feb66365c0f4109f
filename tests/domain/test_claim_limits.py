"""What limits a claim, with budgets and preemption on: the budget is checked before anything
else, then the seat limit (where only a critical job may be taken, by preemption), then the
candidates; an estimated cost is reserved before the job is taken. With the flags off, seat
limits are advisory and budgets are not enforced."""
from __future__ import annotations

import pytest

from fleet import budget_rules, budgets, claims, errors, store as store_port
from fleet.context import Context
from fleet.stages import ClaimReason, RunResult, Stage

from fleet.testing import PRODUCT, World, flags_on, interleaved, open_world

#: Budgets and preemption on for every world here.
pytestmark = pytest.mark.settings(flags_on())


def live_leases(world: World, factory: str) -> list[str]:
    query = store_port.Query("jobs", None, (store_port.Filter("lease.factoryId", "=", factory),), limit=100)
    return sorted(doc["idempotencyKey"] for doc in store_port.query_all(world.store.inner, query))


def at_its_limit(world: World, factory: str = "factory-1", key: str = "low"):
    """`factory` (one seat, by heartbeat) running one low job."""
    low = world.running_job(key, factory=factory, priority="low")
    world.heartbeat(factory, seat_limit=1, running=[low])
    return low


@pytest.mark.parametrize(
    "refuse, reason",
    [
        (lambda world: budgets.pause(world.ctx, PRODUCT), "budget_paused"),
        (lambda world: budgets.put(world.ctx, PRODUCT, 0.0, budget_rules.Window.MONTHLY), "budget_paused"),  # 0 >= 0
    ],
)
def test_the_budget_is_checked_before_the_seat_limit_and_nothing_is_evicted(world, refuse, reason):
    # Given a factory at its limit, a critical job waiting, and a budget that refuses
    low = at_its_limit(world)
    world.put_budget(10.0)
    world.submit_job("urgent", priority="critical")
    refuse(world)
    counting = store_port.CountingStore(world.store.inner)
    # When the factory claims
    claimed = claims.claim_next(Context(counting, world.clock, world.ctx.settings), claims.ClaimRequest("factory-1", PRODUCT))
    # Then the budget answers, with one point read: no seat count, no job scan, no eviction
    assert (claimed.job, claimed.reason) == (None, reason)
    assert dict(counting.calls) == {"read:budgets": 1}
    assert world.job(low).stage == Stage.ASSIGNED


def test_no_job_is_evicted_for_a_critical_job_the_budget_cannot_start(world):
    # Given a factory at its limit and a critical job whose estimate (8) does not fit (5 + 8 > 10)
    world.put_budget(10.0)
    low = at_its_limit(world)
    world.release(low, result="retry", insights={"costUsd": 5.0})
    low = world.claim_job(world.wait_out_retry(low), "factory-1").job
    world.submit_job("urgent", priority="critical", estimated_cost_usd=8.0)
    # When the factory claims, Then no job, and its running job keeps its seat
    claimed = world.claim("factory-1")
    assert (claimed.job, claimed.reason) == (None, "budget_exceeded")
    assert world.job(low).stage == Stage.ASSIGNED


def test_the_preemptors_estimate_is_reserved(world):
    world.put_budget(10.0)
    low = at_its_limit(world)
    urgent = world.submit_job("urgent", priority="critical", estimated_cost_usd=4.0)
    claimed = world.claim("factory-1")
    assert (claimed.job.id, claimed.preempted) == (urgent.id, [low.id])
    assert world.budget().reserved_usd == 4.0


def test_if_the_preemptor_is_taken_by_a_rival_the_freed_seat_is_simply_free(world, faulty):
    # Given factory-1 at its limit and a critical job; a rival will take that job just after
    # factory-1 evicts its victim
    low = at_its_limit(world)
    urgent = world.submit_job("urgent", priority="critical")
    rival = world.with_settings()

    def rival_claims():
        request = claims.ClaimRequest("factory-2", PRODUCT)
        claims.claim_job(rival.observer, urgent.id, PRODUCT, request)

    # (patch #1 on jobs is the eviction; the rival then takes the critical job)
    faulty.meanwhile("patch", "jobs", rival_claims)
    claimed = world.claim("factory-1")
    # Then the rival holds the critical job; the victim was evicted once, and the freed seat
    # is simply free: the same claim, no longer at the limit, takes the best job left (the
    # victim itself, under a new lease), and its answer names the eviction, so the factory
    # stops the command still running under the lease it lost (regression: it said nothing,
    # and a runner ran the victim twice until a heartbeat said the old lease was revoked)
    assert world.job(urgent).lease.factory_id == "factory-2"
    assert (claimed.job.id, claimed.preempted) == (low.id, [low.id])
    assert claimed.lease.lease_id != low.lease.lease_id
    victim = world.job(low)
    assert victim.runs[-2].result == RunResult.PREEMPTED and victim.lease.factory_id == "factory-1"
    assert [e.type for e in victim.events].count("preempted") == 1


def test_an_eviction_for_a_critical_job_lost_to_a_rival_is_named_when_nothing_else_is_taken(world, faulty):
    # Given factory-1 at its limit of one, running the only other job, and a critical job a
    # rival takes just after factory-1 evicts its victim; and a third factory that takes the
    # victim as soon as it is requeued
    low = at_its_limit(world)
    urgent = world.submit_job("urgent", priority="critical")
    rival = world.with_settings()

    def rivals_take_both():
        claims.claim_job(rival.observer, urgent.id, PRODUCT, claims.ClaimRequest("factory-2", PRODUCT))
        claims.claim_job(rival.observer, low.id, PRODUCT, claims.ClaimRequest("factory-3", PRODUCT))

    faulty.meanwhile("patch", "jobs", rivals_take_both)
    # When factory-1 claims, Then it gets no job, but learns that its running job was evicted
    claimed = world.claim("factory-1")
    assert (claimed.job, claimed.preempted) == (None, [low.id])
    assert claimed.to_doc() == {"job": None, "reason": "no_job", "preempted": [low.id]}
    assert world.job(low).lease.factory_id == "factory-3"


def test_a_claim_whose_take_fails_after_evicting_names_the_eviction_in_its_error(world, faulty):
    # Given factory-1 at its limit and a critical job, and a store that fails the take (patch
    # #2 on jobs; #1 is the eviction)
    low = at_its_limit(world)
    world.submit_job("urgent", priority="critical")
    faulty.crash("patch", "jobs", nth=2)
    # When it claims, Then the store's failure is the answer, naming the job it evicted
    with pytest.raises(errors.StoreBusy) as failed:
        world.claim("factory-1")
    assert failed.value.extra["preempted"] == [low.id]
    assert world.job(low).stage == Stage.QUEUED


def test_an_eviction_is_named_though_the_reservation_cannot_be_given_back(world, faulty):
    # Given factory-1 at its limit, a critical job with an estimate, a rival that takes it right
    # after the eviction, and a store that refuses the give-back of the reservation
    world.put_budget(100.0)
    low = at_its_limit(world)
    urgent = world.submit_job("urgent", priority="critical", estimated_cost_usd=5.0)
    rival = world.with_settings()
    faulty.meanwhile(
        "patch", "jobs", lambda: claims.claim_job(rival.observer, urgent.id, PRODUCT, claims.ClaimRequest("factory-2", PRODUCT))
    )
    faulty.crash("patch", "budgets", nth=2)  # #1 its reservation, #2 its give-back (the rival's is unseen)
    # When it claims, Then the claim goes on, taking its victim back under a new lease, and
    # names the eviction; the reservation it could not give back is left to the sweep
    claimed = world.claim("factory-1")
    assert (claimed.job.id, claimed.preempted) == (low.id, [low.id])
    assert world.job(urgent).lease.factory_id == "factory-2"
    held = world.budget().reservations
    assert len(held) == 2 and world.budget().reserved_usd == 10.0  # the rival's 5, and its own 5 left over
    shown = world.budget().public().reservations  # both, though they name one run
    assert len(shown) == 2 and sum(r["amountUsd"] for r in shown.values()) == 10.0
    assert faulty.crashed == ["patch:budgets"]


def test_a_claim_refused_for_a_seat_does_not_move_the_queue_state(world):
    # Given budgets with a default estimate, factory-1 at its limit running a critical job,
    # and another critical job queued: nothing may be evicted for it
    world.put_budget(100.0, default_estimate=1.0)
    running = world.running_job("running", factory="factory-1", priority="critical")
    world.heartbeat("factory-1", seat_limit=1, running=[running])
    world.submit_job("waiting", priority="critical")
    version = world.version()
    # When it polls, again and again, Then it is refused for its seat, and the version the
    # gated factories of the product watch stays where it was (its reservation was held for a
    # moment only)
    for _ in range(3):
        assert world.claim("factory-1").reason == "seat_limit"
    assert world.version() == version
    assert world.budget().reservations.keys() == {running.latest_run.reservation}


def test_a_claim_with_no_one_to_evict_reserves_nothing_so_refuses_no_one(world, faulty):
    # Given a ceiling of 10; factory-1 full, running a critical job estimated at 4; and a
    # critical and a normal job queued, estimated at 4 each
    world.put_budget(10.0)
    running = world.running_job("running", factory="factory-1", priority="critical", estimated_cost_usd=4.0)
    world.heartbeat("factory-1", seat_limit=1, running=[running])
    world.submit_job("critical", priority="critical", estimated_cost_usd=4.0)
    world.submit_job("normal", estimated_cost_usd=4.0)
    # When factory-1 polls, and is refused for its seat, Then it wrote nothing to the budget
    # (regression: it reserved 4 before finding no one to evict, so for that moment a claim of
    # factory-2 was refused for room (10 - 4 - 4 < 4), and the give-back moved no version)
    writes = lambda: sum(n for call, n in faulty.calls.items() if call.endswith(":budgets") and not call.startswith("read"))  # noqa: E731
    before = writes()
    assert world.claim("factory-1").reason == "seat_limit"
    assert writes() == before
    assert world.claim("factory-2").job is not None


def test_a_named_claim_lost_after_evicting_names_the_eviction(world, faulty):
    low = at_its_limit(world)
    urgent = world.submit_job("urgent", priority="critical")
    rival = world.with_settings()
    faulty.meanwhile(
        "patch", "jobs", lambda: claims.claim_job(rival.observer, urgent.id, PRODUCT, claims.ClaimRequest("factory-2", PRODUCT))
    )
    with pytest.raises(errors.NotClaimable) as refused:
        claims.claim_job(world.ctx, urgent.id, PRODUCT, claims.ClaimRequest("factory-1", PRODUCT))
    assert refused.value.extra == {"reason": "lost_race", "preempted": [low.id]}
    assert world.job(low).stage == Stage.QUEUED


def two_estimated_jobs(world, faulty, ceiling: float, estimate: float, rival_takes: int, second_estimate=None):
    """Two queued jobs estimated at `estimate` (the second at `second_estimate`, if given; the
    older first in line) under `ceiling`, and a rival factory that claims the `rival_takes`-th
    (0 or 1) right after the next claim reads the queue (so that claim read the budget before
    the rival's reservation)."""
    world.put_budget(ceiling)
    first = world.submit_job("first", estimated_cost_usd=estimate)
    world.clock.advance(60)
    second = world.submit_job("second", estimated_cost_usd=second_estimate or estimate)
    rival, taken = world.with_settings(), (first, second)[rival_takes]
    faulty.meanwhile("query", "jobs", lambda: claims.claim_job(
        rival.observer, taken.id, PRODUCT, claims.ClaimRequest("factory-2", PRODUCT)))
    return first, second


def test_a_lost_race_falls_through_having_written_nothing_to_the_budget(world, faulty):
    # Given two queued jobs estimated at 4 under a 20-dollar ceiling, and a rival that takes
    # the first right after factory-1 read the queue
    first, second = two_estimated_jobs(world, faulty, 20.0, 4.0, rival_takes=0)
    version = world.version()
    faulty.calls.clear()  # factory-1's calls (the rival's go to the store beneath)
    claimed = world.claim("factory-1")
    # Then factory-1 falls through to the second job
    assert claimed.job.id == second.id
    # having reserved only once it held its job: the race it lost wrote nothing, neither to the
    # queue-state nor to the budget, whose only write is its reservation for the second job (a
    # first try on the budget as the claim read it, made stale by the rival's reservation, and
    # the write)
    assert world.version() == version
    assert faulty.calls["replace:budgets"] == 0 and faulty.calls["patch:budgets"] == 2
    # and both running claims hold their estimate: 4 + 4
    winner = world.job(first)
    held = world.budget().reservations
    assert held.keys() == {winner.latest_run.reservation, claimed.job.latest_run.reservation}
    assert world.budget().reserved_usd == 8.0


def test_a_claim_whose_room_was_taken_after_it_read_the_budget_gives_its_job_back(world, faulty):
    # Given a ceiling of 40, a job estimated at 10 and one at 35, and a rival that claims the
    # second right after factory-1 read the queue (so factory-1 read the budget with 40 left:
    # ample for 10, so it reserves after its take)
    first, second = two_estimated_jobs(world, faulty, 40.0, 10.0, rival_takes=1, second_estimate=35.0)
    version = world.version()
    # When factory-1 takes the first job, whose reservation then no longer fits (35 + 10 > 40)
    claimed = world.claim("factory-1")
    # Then it is refused for the budget, holding nothing: the first job is back in the queue,
    # attempts unchanged, and only the rival's estimate is reserved
    assert (claimed.job, claimed.reason) == (None, "budget_exceeded")
    back = world.job(first)
    assert (back.stage, back.attempts, back.lease) == (Stage.QUEUED, 0, None)
    assert world.budget().reserved_usd == 35.0
    assert world.budget().reservations.keys() == {world.job(second).latest_run.reservation}
    # and the give-back moved the queue-state, so the factories it refused look again
    assert world.version() > version


def test_near_the_ceiling_a_claim_reserves_first_so_room_taken_meanwhile_takes_no_job(world, faulty):
    # Given a ceiling of 10, a job estimated at 4 and one at 8, and a rival that claims the
    # second right after factory-1 read the queue (10 left is not ample for 4: factory-1
    # reserves before its take)
    first, second = two_estimated_jobs(world, faulty, 10.0, 4.0, rival_takes=1, second_estimate=8.0)
    # When factory-1 claims, Then its reservation no longer fits (8 + 4 > 10), and it is refused
    claimed = world.claim("factory-1")
    assert (claimed.job, claimed.reason) == (None, "budget_exceeded")
    # having taken nothing: the first job has no run to show for it, and only the rival's 8 is held
    assert world.job(first).runs == [] and world.job(first).stage == Stage.QUEUED
    assert world.budget().reserved_usd == 8.0


def test_a_candidate_too_dear_for_the_budget_is_passed_over_for_an_affordable_one(world, clock):
    # Regression: a candidate too dear for the budget used to end the claim.
    # Given a ceiling of 10, of which a running job has reserved its estimate of 8
    world.put_budget(10.0)
    world.submit_job("big", priority="high", estimated_cost_usd=8.0)
    clock.advance(1)
    world.submit_job("big-2", priority="high", estimated_cost_usd=8.0)
    clock.advance(1)
    small = world.submit_job("small", estimated_cost_usd=0.5)
    clock.advance(1)
    unestimated = world.submit_job("unestimated")
    assert world.claim("factory-1").job.idempotency_key == "big"
    # When other factories claim: big-2 ranks first but 8 + 8 > 10
    # Then they take the cheaper jobs that fit (8 + 0.5 <= 10; no estimate reserves nothing)
    assert world.claim("factory-2").job.id == small.id
    assert world.claim("factory-3").job.id == unestimated.id
    # and only when nothing queued fits is the claim refused for the budget
    refused = world.claim("factory-4")
    assert (refused.job, refused.reason) == (None, "budget_exceeded")


@pytest.mark.parametrize("too_dear, cheap_taken", [(15, True), (16, False)])
def test_a_claim_looks_past_at_most_15_jobs_too_dear_for_the_room_left(world, clock, too_dear, cheap_taken):
    # Given a ceiling of 10 with 8 reserved, and a cheap job ranked behind jobs estimated at 8
    world.put_budget(10.0)
    world.submit_job("running", priority="critical", estimated_cost_usd=8.0)
    for n in range(too_dear):
        clock.advance(1)
        world.submit_job(f"dear-{n}", priority="high", estimated_cost_usd=8.0)
    clock.advance(1)
    cheap = world.submit_job("cheap", estimated_cost_usd=0.5)
    assert world.claim("factory-1").job.idempotency_key == "running"
    # When another factory claims: the README's bound, the 16th too dear ends the search
    claimed = world.claim("factory-2")
    assert (claimed.job.id if claimed.job else claimed.reason) == (cheap.id if cheap_taken else "budget_exceeded")


def test_jobs_estimated_above_the_ceiling_itself_do_not_stop_the_products_claims(world, clock):
    # Regression: 16 jobs estimated above the ceiling (no room can ever fit them) ranked first
    # ended every claim of the product with budget_exceeded, for good.
    # Given a ceiling of 10, twenty high-priority jobs estimated at 11, then a cheap one
    world.put_budget(10.0)
    for n in range(20):
        clock.advance(1)
        world.submit_job(f"never-{n}", priority="high", estimated_cost_usd=11.0)
    clock.advance(1)
    cheap = world.submit_job("cheap", estimated_cost_usd=1.0)
    # When a factory claims, Then it passes over them, uncounted, and takes the cheap job
    assert world.claim("factory-1").job.id == cheap.id
    # and with nothing else queued, the answer is budget_exceeded (they wait for a higher ceiling)
    assert world.claim("factory-2").reason == "budget_exceeded"


def test_a_rescan_after_a_lost_race_does_not_count_the_same_dear_jobs_again(world, clock, faulty):
    # Given a ceiling of 10 with 8 reserved, ten jobs too dear for the 2 left, then a cheap one
    world.put_budget(10.0)
    world.submit_job("running", priority="critical", estimated_cost_usd=8.0)
    for n in range(10):
        clock.advance(1)
        world.submit_job(f"dear-{n}", priority="high", estimated_cost_usd=8.0)
    clock.advance(1)
    cheap = world.submit_job("cheap", estimated_cost_usd=0.5)
    assert world.claim("factory-1").job.idempotency_key == "running"
    rival = world.with_settings()
    later: list = []

    def rival_takes_cheap_and_another_arrives():
        claims.claim_job(rival.observer, cheap.id, PRODUCT, claims.ClaimRequest("factory-3", PRODUCT))
        clock.advance(1)
        later.append(world.submit_job("cheap-later", estimated_cost_usd=0.5))

    # When a rival takes the cheap job right after factory-2 read the queue, and another cheap
    # job arrives meanwhile: its scan ends lost, and it rescans
    faulty.meanwhile("query", "jobs", rival_takes_cheap_and_another_arrives)
    claimed = world.claim("factory-2")
    # Then the rescan passes the ten dear jobs again, counting them once (20 would end it at 16)
    assert claimed.job is not None and claimed.job.id == later[0].id


def test_a_critical_job_may_evict_a_job_of_another_product(world):
    # Seats belong to the factory, not the product
    other = world.running_job("other-work", priority="normal", product_id="beta")
    world.heartbeat("factory-1", seat_limit=1, running=[other])
    urgent = world.submit_job("urgent", priority="critical")
    claimed = world.claim("factory-1")
    assert (claimed.job.id, claimed.preempted) == (urgent.id, [other.id])
    assert live_leases(world, "factory-1") == ["urgent"]


def test_at_the_limit_only_critical_jobs_are_considered(world):
    # Given a one-seat factory running a low job, an older normal job and a newer critical one
    at_its_limit(world)
    world.submit_job("normal")  # would win on score with a free seat
    urgent = world.submit_job("urgent", priority="critical")
    claimed = world.claim("factory-1")
    assert claimed.job.id == urgent.id
    assert live_leases(world, "factory-1") == ["urgent"]


# Regression: a factory at its seat limit used to scan the whole queue on every claim.


def job_queries_of_a_claim_at_the_seat_limit(queued: int) -> int:
    with open_world(flags_on()) as world:
        # Given a factory holding its only seat, and `queued` normal jobs waiting
        world.running_job("held", factory="factory-1")
        for n in range(queued):
            world.submit_job(f"waiting-{n}")
        # When it claims again
        world.store.reset()
        claimed = world.claim("factory-1", seat_limit=1)
        # Then it is refused for its seat limit (only critical work may preempt)
        assert (claimed.job, claimed.reason) == (None, "seat_limit")
        return world.store.calls["query:jobs"]


def test_a_factory_at_its_seat_limit_reads_only_the_critical_buckets():
    shallow, deep = job_queries_of_a_claim_at_the_seat_limit(200), job_queries_of_a_claim_at_the_seat_limit(4000)
    # The same few queries however deep the queue: one per critical (priority, attempts)
    # bucket and one for the factory's running jobs, never a page of normal work.
    assert shallow == deep <= claims.MAX_ATTEMPTS + 1


@pytest.mark.parametrize(
    "flags",
    [
        {"budgets": False, "preemption": False},
        {"budgets": False, "preemption": True},
        {"budgets": True, "preemption": False},
    ],
)
def test_each_flag_switches_only_its_own_rule(flags):
    with open_world(flags_on(**flags)) as world:
        # Given a paused product, a factory at its one-seat limit, and a normal job waiting
        world.put_budget(10.0)
        low = at_its_limit(world)
        budgets.pause(world.ctx, PRODUCT)
        waiting = world.submit_job("waiting")
        claimed = world.claim("factory-1")
        if flags["budgets"]:
            assert claimed.reason == "budget_paused"
        elif flags["preemption"]:
            assert claimed.reason == "seat_limit"
        else:
            # Both off: the seat limit is advisory and the budget is not enforced
            assert claimed.job.id == waiting.id
        assert world.job(low).stage == Stage.ASSIGNED


def test_a_claim_reports_what_it_preempted(world):
    low = at_its_limit(world)
    world.submit_job("urgent", priority="critical")
    doc = world.claim("factory-1").to_doc()
    assert doc["preempted"] == [low.id]
    assert doc["lease"]["factoryId"] == "factory-1"
    assert doc["runId"] == doc["job"]["runs"][-1]["runId"]


# Racing claims of one factory (`claims._over_seats`)


def test_a_take_evicted_before_its_seat_recount_gives_back_nothing_and_answers_seat_limit(world):
    # Given a free seat, a normal job, and the same factory's critical claim landing right after
    # the first claim's take (it evicts that take and holds the seat)
    world.submit_job("normal")
    world.heartbeat("factory-1", seat_limit=1)
    rival = {}

    def critical_claim():
        world.submit_job("urgent", priority="critical")
        rival["answer"] = claims.claim_next(world.ctx, claims.ClaimRequest("factory-1", PRODUCT, [], None, 1))

    racing = interleaved(world, "patch", critical_claim, when=lambda container, *args: container == "jobs")
    first = claims.claim_next(racing, claims.ClaimRequest("factory-1", PRODUCT, [], None, 1))
    # Then the first claim does not answer the job evicted from it, and the factory holds one
    assert (first.job, first.reason) == (None, ClaimReason.SEAT_LIMIT)
    assert rival["answer"].job.idempotency_key == "urgent"
    normal = world.job(rival["answer"].preempted[0])
    assert (normal.idempotency_key, normal.stage, normal.lease) == ("normal", Stage.QUEUED, None)
