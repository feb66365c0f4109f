"""Preemption (`FLEET_PREEMPTION`): a factory at its seat limit makes room for a critical job
by evicting its lowest-scoring running job of lower priority — never one of equal or higher
priority, never one younger than the exemption, never for a job it cannot do. The victim goes
back to the queue with its checkpoint, attempts unchanged, its lease revoked."""
from __future__ import annotations

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from fleet import errors, factories, preemption, scoring, weight_registry
from fleet.stages import Priority, RunResult, Stage

from fleet.testing import LEASE_SECONDS, at, flags_on, job_value, open_world

#: Budgets and preemption on for every world here.
pytestmark = pytest.mark.settings(flags_on())

NOW = at(0)


def running_for(key: str, priority: str = "normal", seconds: float = 600, **fields):
    """A running job (pure value) whose run started `seconds` before NOW."""
    return job_value(key, priority=priority, started_at=at(-seconds), **fields)


# The rule, pure


@pytest.mark.parametrize(
    "incoming, evicts",
    [
        ("low", False),
        ("normal", False),
        ("high", False),  # high outranks the low victim, but only critical preempts
        ("critical", True),
    ],
)
def test_only_a_critical_job_preempts(incoming, evicts):
    # Given a factory running one low job
    victim = running_for("victim", "low")
    # When a job of `incoming` priority asks for the seat
    chosen = preemption.select_preemption_victim([(victim, 0.0)], job_value("incoming", priority=incoming), NOW)
    # Then only a critical one gets it
    assert (chosen is not None) == evicts


def test_a_critical_job_never_preempts_an_equal():
    running = [(running_for("running", "critical"), -1000.0)]  # however low its score
    assert preemption.select_preemption_victim(running, job_value("incoming", priority="critical"), NOW) is None


def test_the_lowest_score_among_lower_priorities_loses():
    # Given running jobs with scores 40, 12 and 30, and a critical one scoring 1 (equal priority)
    a, b, c = running_for("a"), running_for("b", "high"), running_for("c", "low")
    shielded = running_for("critical-running", "critical")
    running = [(a, 40.0), (b, 12.0), (c, 30.0), (shielded, 1.0)]
    # When a critical job arrives, Then the 12 goes (the critical 1 is never eligible)
    assert preemption.select_preemption_victim(running, job_value("incoming", priority="critical"), NOW) == b


def test_on_a_tie_the_most_recently_started_loses():
    # Given two runs that score the same, one started 10 minutes ago, one 2 minutes ago
    early, late = running_for("early", seconds=600), running_for("late", seconds=120)
    running = [(early, 25.0), (late, 25.0)]
    # Then the later one goes: it has the least work to lose (order of the list does not matter)
    incoming = job_value("incoming", priority="critical")
    assert preemption.select_preemption_victim(running, incoming, NOW) == late
    assert preemption.select_preemption_victim(running[::-1], incoming, NOW) == late


@pytest.mark.parametrize(
    "ran_seconds, exempt_seconds, evicts",
    [
        (0, 0, True),  # no exemption: even a run that just started
        (59, 60, False),  # 59 < 60: protected
        (60, 60, True),  # 60 >= 60: fair game
        (3600, 60, True),
    ],
)
def test_young_runs_are_exempt(ran_seconds, exempt_seconds, evicts):
    victim = running_for("victim", "low", seconds=ran_seconds)
    chosen = preemption.select_preemption_victim(
        [(victim, 0.0)], job_value("incoming", priority="critical"), NOW, exempt_seconds
    )
    assert (chosen is not None) == evicts


def test_an_exempt_low_scorer_shields_nobody():
    # Given the lowest scorer is too young, Then the next lowest goes instead
    young, old = running_for("young", seconds=10), running_for("old", seconds=900)
    chosen = preemption.select_preemption_victim(
        [(young, 1.0), (old, 50.0)], job_value("incoming", priority="critical"), NOW, exempt_seconds=60
    )
    assert chosen == old


PRIORITIES = [p.value for p in Priority]


@hsettings(max_examples=150, deadline=None)
@given(
    incoming=st.sampled_from(PRIORITIES),
    exempt=st.sampled_from([0, 30, 300]),
    running=st.lists(
        st.tuples(st.sampled_from(PRIORITIES), st.integers(-50, 50), st.integers(0, 600)), max_size=8
    ),
)
def test_property_preemption_never_evicts_equal_or_higher_priority(incoming, exempt, running):
    # Given any running set (priority, score, seconds since its run started)
    jobs = [(running_for(f"r{i}", p, seconds=ran), float(score)) for i, (p, score, ran) in enumerate(running)]
    victim = preemption.select_preemption_victim(jobs, job_value("incoming", priority=incoming), NOW, exempt)
    eligible = [
        (score, job)
        for job, score in jobs
        if job.priority.order < Priority(incoming).order and (NOW - job.latest_run.started_at).total_seconds() >= exempt
    ]
    if incoming != "critical" or not eligible:
        assert victim is None
        return
    # Then the victim is strictly lower in priority, old enough, and scores lowest of those
    assert victim is not None
    assert victim.priority.order < Priority.CRITICAL.order
    assert (NOW - victim.latest_run.started_at).total_seconds() >= exempt
    score_of = {job.id: score for job, score in jobs}
    assert score_of[victim.id] == min(score for score, _ in eligible)


def test_running_jobs_are_scored_with_their_products_weights(world):
    # Given product "beta" weighs age double; two running normal jobs submitted 30 minutes ago
    # that need "gpu", offered by the factory
    weight_registry.put(world.ctx, "beta", scoring.WeightsPatch(age=2))
    acme = job_value("j", created_at=at(-1800), capabilities=["gpu"])
    beta = job_value("j", created_at=at(-1800), capabilities=["gpu"], product_id="beta")
    scored = preemption.scored_running(world.ctx, [acme, beta], frozenset({"gpu"}), NOW)
    # Then each is scored with its own product's weights
    assert [(job.id, score) for job, score in scored] == [
        (acme.id, pytest.approx(45.0)),  # 1*30 (age) + 10*1 (priority) + 5*1 (capability bonus)
        (beta.id, pytest.approx(75.0)),  # 2*30 + 10*1 + 5*1
    ]


# The use case: claim at the seat limit


def test_a_critical_job_evicts_the_lower_running_job(world, clock):
    # Given factory-1 (one seat, from its heartbeat) is building a low job on its second attempt
    low = world.running_job("low", priority="low", stage="building")
    low = world.release(low, result="retry")
    low = world.claim_job(world.wait_out_retry(low), "factory-1").job
    low = world.patch(low, "building")
    assert low.attempts == 1
    world.heartbeat("factory-1", seat_limit=1, running=[low])
    urgent = world.submit_job("urgent", priority="critical")
    version = world.version()
    clock.advance(60)
    # When factory-1 claims
    claimed = world.claim("factory-1")
    # Then it gets the critical job, naming its victim
    assert claimed.job.id == urgent.id
    assert claimed.preempted == [low.id]
    assert claimed.job.lease.factory_id == "factory-1"
    # and the victim is queued with a checkpoint, attempts unchanged, its run ended `preempted`
    victim = world.job(low)
    assert (victim.stage, victim.lease, victim.checkpoint, victim.attempts) == (Stage.QUEUED, None, True, 1)
    assert (victim.latest_run.result, victim.latest_run.ended_at) == (RunResult.PREEMPTED, clock.now())
    # and both jobs record who preempted whom
    for job in (victim, world.job(urgent)):
        event = next(e for e in job.events if e.type == "preempted")
        assert (event.detail["victim"], event.detail["preemptor"]) == (low.id, urgent.id)
    # and idle factories hear the victim is claimable again
    assert world.version() > version


def test_the_evicted_factory_learns_its_lease_is_gone(world):
    # Given factory-1's low job was preempted
    low = world.running_job("low", priority="low", stage="building")
    world.heartbeat("factory-1", seat_limit=1, running=[low])
    world.submit_job("urgent", priority="critical")
    assert world.claim("factory-1").preempted == [low.id]
    # When it PATCHes with its old lease, Then lease_lost, and nothing changes
    with pytest.raises(errors.LeaseLost):
        world.patch(low, "review")
    assert world.job(low).stage == Stage.QUEUED
    # and its next heartbeat says that lease is revoked
    [answer] = world.heartbeat("factory-1", seat_limit=1, running=[low])
    assert answer["status"] == "revoked"


def test_a_seat_its_factory_keeps_alive_counts_and_its_preempted_lease_is_revoked(world, clock):
    # Given factory-1 (one seat) building a low job its heartbeats keep alive past its own expiry
    low = world.running_job("low", priority="low", stage="building")
    for _ in range(4):
        clock.advance(100)
        world.heartbeat("factory-1", seat_limit=1, running=[low])
    assert world.job(low).lease.expires_at < clock.now()
    # When a normal job arrives, Then the seat is taken: no claim
    world.submit_job("normal")
    assert world.claim("factory-1").job is None
    # and a critical one preempts the low job
    urgent = world.submit_job("urgent", priority="critical")
    claimed = world.claim("factory-1")
    assert (claimed.job.id, claimed.preempted) == (urgent.id, [low.id])
    # and the next heartbeat answers its lease revoked, and no longer carries it
    [answer] = world.heartbeat("factory-1", seat_limit=1, running=[low])
    assert answer["status"] == "revoked"
    assert low.lease.lease_id not in factories.find(world.ctx, "factory-1")["leases"]


def test_the_victim_keeps_its_own_checkpoint(world):
    # Given a job given back once with a checkpoint, then claimed again
    low = world.running_job("low", priority="low")
    world.release(low, checkpoint={"step": 3})
    low = world.claim_job(low, "factory-1").job
    world.heartbeat("factory-1", seat_limit=1, running=[low])
    world.submit_job("urgent", priority="critical")
    # When it is preempted, Then it resumes from that checkpoint, not a bare `true`
    assert world.claim("factory-1").preempted == [low.id]
    assert world.job(low).checkpoint == {"step": 3}


def test_the_lowest_scoring_running_job_is_evicted(world, clock):
    # Given factory-1 (two seats) runs a normal job submitted 30 minutes ago and a fresh one
    older = world.submit_job("older")  # scores 1*30 + 10*1 = 40 when the critical job arrives
    clock.advance(minutes=30)
    younger = world.submit_job("younger")  # scores 1*0 + 10*1 = 10
    older, younger = (world.claim_job(j, "factory-1").job for j in (older, younger))
    world.heartbeat("factory-1", seat_limit=2, running=[older, younger])
    world.submit_job("urgent", priority="critical")
    # When a critical job arrives, Then the younger (10 < 40) makes room
    assert world.claim("factory-1").preempted == [younger.id]
    assert world.job(older).stage == Stage.ASSIGNED


def test_a_factory_lacking_the_critical_jobs_capabilities_cannot_preempt(world):
    # Given factory-1 at its limit, offering no gpu, and a critical job that needs one
    low = world.running_job("low", priority="low")
    world.heartbeat("factory-1", seat_limit=1, capabilities=[], running=[low])
    urgent = world.submit_job("urgent", priority="critical", capabilities=["gpu"])
    # When it claims, Then it gets nothing, and its running job is untouched
    claimed = world.claim("factory-1")
    assert (claimed.job, claimed.reason) == (None, "seat_limit")
    assert world.job(low).stage == Stage.ASSIGNED
    # and it cannot take the critical job by name either
    with pytest.raises(errors.NotClaimable) as refused:
        world.claim_job(urgent, "factory-1")
    assert refused.value.extra["reason"] == "capabilities"
    assert world.job(low).lease is not None


@pytest.mark.parametrize(
    "running_priority, incoming_priority",
    [
        ("critical", "critical"),  # equal: never
        ("low", "high"),  # lower, but only critical preempts
        ("normal", "normal"),
    ],
)
def test_at_the_limit_without_a_victim_there_is_no_job(world, running_priority, incoming_priority):
    held = world.running_job("held", priority=running_priority)
    world.heartbeat("factory-1", seat_limit=1, running=[held])
    waiting = world.submit_job("waiting", priority=incoming_priority)
    claimed = world.claim("factory-1")
    assert (claimed.job, claimed.reason) == (None, "seat_limit")
    assert world.job(held).lease is not None
    assert world.job(waiting).stage == Stage.QUEUED


def test_a_critical_job_claimed_by_id_preempts_too(world):
    low = world.running_job("low", priority="low")
    world.heartbeat("factory-1", seat_limit=1, running=[low])
    urgent = world.submit_job("urgent", priority="critical")
    claimed = world.claim_job(urgent, "factory-1")
    assert (claimed.job.id, claimed.preempted) == (urgent.id, [low.id])
    assert world.job(low).stage == Stage.QUEUED


def test_a_young_run_is_protected_by_the_exemption():
    with open_world(flags_on(preempt_exempt_seconds=120)) as world:
        # Given a low job that started 60 s ago on a one-seat factory
        low = world.running_job("low", priority="low")
        world.heartbeat("factory-1", seat_limit=1, running=[low])
        world.submit_job("urgent", priority="critical")
        world.clock.advance(60)
        # When a critical job arrives, Then the young run is spared (60 < 120)
        assert world.claim("factory-1").reason == "seat_limit"
        # and once it has run 120 s, it may be evicted
        world.clock.advance(60)
        assert world.claim("factory-1").preempted == [low.id]


def test_with_the_flag_off_seat_limits_are_advisory():
    with open_world(flags_on(preemption=False)) as world:
        # Given a one-seat factory already running a low job
        low = world.running_job("low", priority="low")
        world.heartbeat("factory-1", seat_limit=1, running=[low])
        normal = world.submit_job("normal")
        urgent = world.submit_job("urgent", priority="critical")
        # When it claims twice, Then it gets both, and nothing is preempted
        first, second = world.claim("factory-1"), world.claim("factory-1")
        assert {first.job.id, second.job.id} == {normal.id, urgent.id}
        assert first.preempted == second.preempted == []
        assert world.job(low).stage == Stage.ASSIGNED


@pytest.mark.parametrize(
    "heartbeat_limit, claim_limit, at_limit",
    [
        (5, 1, True),  # the claim body's limit wins over the heartbeat's
        (1, None, True),  # none in the claim: the last heartbeat's
        (1, 2, False),  # the claim may raise it, too
        (None, None, False),  # a factory that never heard of has no limit
    ],
)
def test_the_seat_limit_comes_from_the_claim_else_the_last_heartbeat(world, heartbeat_limit, claim_limit, at_limit):
    low = world.running_job("low", priority="low")
    if heartbeat_limit is not None:
        world.heartbeat("factory-1", seat_limit=heartbeat_limit, running=[low])
    normal = world.submit_job("normal")
    claimed = world.claim("factory-1", seat_limit=claim_limit)
    if at_limit:
        assert (claimed.job, claimed.reason) == (None, "seat_limit")
    else:
        assert claimed.job.id == normal.id


def test_an_unknown_factory_has_no_seat_limit(world):
    # Given a factory that never sent a heartbeat, holding three leases
    for key in ("a", "b", "c"):
        world.running_job(key, factory="stranger")
    fresh = world.submit_job("fresh")
    # Then it may claim a fourth
    assert world.claim("stranger").job.id == fresh.id


def test_seats_in_use_are_live_leases(world, clock):
    # Given a one-seat factory whose only lease expired (not yet swept)
    low = world.running_job("low", priority="low")
    world.heartbeat("factory-1", seat_limit=1, running=[low])
    clock.advance(LEASE_SECONDS + 1)
    normal = world.submit_job("normal")
    # Then it has a free seat: it claims without preempting
    claimed = world.claim("factory-1")
    assert (claimed.job.id, claimed.preempted) == (normal.id, [])


def test_the_victim_is_picked_with_scores_not_priorities(world, clock):
    # Given a two-seat factory running an old low job and a fresh normal one
    old_low = world.submit_job("old-low", priority="low")  # when the critical arrives: 1*60 + 10*0 = 60
    clock.advance(minutes=60)
    fresh_normal = world.submit_job("fresh-normal")  # 1*0 + 10*1 = 10
    old_low, fresh_normal = (world.claim_job(j, "factory-1").job for j in (old_low, fresh_normal))
    world.heartbeat("factory-1", seat_limit=2, running=[old_low, fresh_normal])
    world.submit_job("urgent", priority="critical")
    # Then the lower score (10 < 60) loses, even though its priority is higher
    assert scoring.DEFAULTS.age == 1
    assert world.claim("factory-1").preempted == [fresh_normal.id]
