"""The sweep: expired leases go back to the queue with an attempt more (or to `dead_letter`),
by conditional writes that re-decide on the current job, so nothing done after the sweep read
the job is clobbered."""
from __future__ import annotations

from datetime import timedelta

import pytest

from fleet import actions, factories, liveness, outage, scoring, sweep, weight_registry
from fleet.stages import RunResult, Stage

from fleet.testing import LEASE_SECONDS, PRODUCT, flags_on, interleaved


def outcome(counts: dict[str, int]) -> dict[str, int]:
    """The counts these specifications are about (the sweep reports more, e.g. spared leases)."""
    return {key: counts[key] for key in ("expired", "deadLettered")}


def expiry_query(query) -> bool:
    return any(f.field == "lease.expiresAt" for f in query.where)


def blocked_query(query) -> bool:
    return any(f.field == "stage" and f.value == "blocked" for f in query.where)


def test_an_expired_lease_goes_back_to_the_queue_with_an_attempt_more(world, ctx, running_job, clock):
    # Given a factory that went silent while building
    job = running_job(stage="building", factory="factory-1")
    version = world.version()
    # When its lease has expired and the sweep runs
    clock.advance(LEASE_SECONDS + 1)
    counts = sweep.expired_leases(ctx)
    # Then the job is queued again with one attempt counted, and its run says why it ended
    swept = world.job(job)
    assert outcome(counts) == {"expired": 1, "deadLettered": 0}
    assert (swept.stage, swept.lease, swept.attempts) == (Stage.QUEUED, None, 1)
    assert (swept.latest_run.result, swept.latest_run.ended_at) == (RunResult.EXPIRED, clock.now())
    # the expiry, then the retry it made, both in the name of the lease's factory
    assert [(e.type, e.actor) for e in swept.events[-2:]] == [("lease_expired", "factory-1"), ("retry", "factory-1")]
    # with the rank key of a retried job, so claims order it right
    assert swept.rank_key == scoring.rank_key(1, 1, job.created_at, scoring.DEFAULTS)
    # and idle factories hear of it, and may claim it again
    assert world.version() == version + 1
    again = world.claim("factory-2").job
    assert (again.id, again.lease.epoch) == (job.id, 2)


@pytest.mark.parametrize(
    "max_attempts, attempts_before, stage_after",
    [
        (3, 1, Stage.QUEUED),  # 1 + 1 < 3
        (3, 2, Stage.DEAD_LETTER),  # 2 + 1 = 3
        (1, 0, Stage.DEAD_LETTER),
    ],
)
def test_an_expired_lease_on_the_last_attempt_dead_letters(world, ctx, make_job, claim, clock, max_attempts, attempts_before, stage_after):
    make_job("job", attempts=attempts_before, max_attempts=max_attempts)
    job = claim().job
    clock.advance(LEASE_SECONDS + 1)
    version = world.version()
    counts = sweep.expired_leases(ctx)
    swept = world.job(job)
    assert (swept.stage, swept.attempts, swept.lease) == (stage_after, attempts_before + 1, None)
    assert swept.latest_run.result == RunResult.EXPIRED
    if stage_after == Stage.DEAD_LETTER:
        assert outcome(counts) == {"expired": 0, "deadLettered": 1}
        assert world.version() == version  # nothing became claimable
    else:
        assert outcome(counts) == {"expired": 1, "deadLettered": 0}


def test_live_and_lease_free_jobs_are_left_alone(world, ctx, running_job, make_job, clock):
    live = running_job("live", stage="building")
    parked = running_job("parked", stage="testing")
    world.release(parked, stage="testing")
    queued = make_job("queued")
    clock.advance(LEASE_SECONDS - 1)
    assert outcome(sweep.expired_leases(ctx)) == {"expired": 0, "deadLettered": 0}
    assert [world.job(j).stage for j in (live, parked, queued)] == [Stage.BUILDING, Stage.TESTING, Stage.QUEUED]


def test_the_sweep_covers_every_product(world, ctx, running_job, clock):
    a = running_job("a", product_id="alpha")
    b = running_job("b", product_id="beta")
    clock.advance(LEASE_SECONDS + 1)
    assert sweep.expired_leases(ctx)["expired"] == 2
    assert [world.job(j).stage for j in (a, b)] == [Stage.QUEUED, Stage.QUEUED]
    assert (world.version("alpha"), world.version("beta")) == (2, 2)  # submit, expiry


def test_the_sweep_uses_the_products_weights_for_the_new_rank_key(world, ctx, running_job, clock):
    weight_registry.put(ctx, PRODUCT, scoring.WeightsPatch(retries=-50))
    job = running_job()
    clock.advance(LEASE_SECONDS + 1)
    sweep.expired_leases(ctx)
    weights = scoring.Weights(retries=-50)
    assert world.job(job).rank_key == scoring.rank_key(1, 1, job.created_at, weights)


def test_a_job_shipped_after_the_sweep_read_it_is_not_clobbered(world, running_job, clock):
    # Given an expired lease the sweep has found
    job = running_job(stage="testing")
    clock.advance(LEASE_SECONDS + 1)
    ship = lambda: actions.apply(world.ctx, job.id, actions.Action.SHIP)  # noqa: E731
    # When an operator ships the job right after the sweep's query
    sweep.expired_leases(interleaved(world, "query", ship, when=expiry_query))
    # Then it stays shipped, with a shipped run and no attempt counted
    after = world.job(job)
    assert (after.stage, after.attempts, after.latest_run.result) == (Stage.SHIPPED, 0, RunResult.SHIPPED)


def test_a_job_reclaimed_after_the_sweep_read_it_is_not_clobbered(world, running_job, clock):
    # Given an expired lease the sweep has found
    job = running_job(stage="building", factory="factory-1")
    clock.advance(LEASE_SECONDS + 1)

    def requeue_and_reclaim():
        actions.apply(world.ctx, job.id, actions.Action.REQUEUE)
        world.claim("factory-2")

    # When an operator requeues it and another factory claims it right after the sweep's query
    counts = sweep.expired_leases(interleaved(world, "query", requeue_and_reclaim, when=expiry_query))
    # Then the new, live lease stands
    after = world.job(job)
    assert (after.stage, after.lease.factory_id, after.lease.epoch, after.attempts) == (Stage.ASSIGNED, "factory-2", 2, 0)
    assert outcome(counts) == {"expired": 0, "deadLettered": 0}


def test_a_job_finished_after_the_sweep_read_it_is_not_counted_as_expired(world, running_job, clock):
    job = running_job(stage="testing")
    clock.advance(LEASE_SECONDS + 1)
    ship = lambda: actions.apply(world.ctx, job.id, actions.Action.SHIP)  # noqa: E731
    counts = sweep.expired_leases(interleaved(world, "query", ship, when=expiry_query))
    assert outcome(counts) == {"expired": 0, "deadLettered": 0}


def test_a_job_unblocked_after_the_sweep_read_it_is_neither_counted_nor_bumped_twice(world, running_job, submit_job):
    # Given a blocked job the sweep has found
    dep = running_job("dep", stage="testing")
    job = submit_job("job", deps=["dep"])
    ship_dep = lambda: actions.apply(world.ctx, dep.id, actions.Action.SHIP)  # noqa: E731
    version = world.version()
    # When its dep ships (unblocking it, one bump) right after the sweep's query
    released = sweep.blocked_jobs(interleaved(world, "query", ship_dep, when=blocked_query))
    # Then the sweep did nothing more
    assert world.job(job).stage == Stage.QUEUED
    assert world.version() == version + 1
    assert released == 0


@pytest.mark.settings(flags_on())
def test_one_job_that_keeps_failing_does_not_stop_the_sweep(world, clock, faulty):
    # Regression: one failing job used to stop the whole sweep.
    # Given the sweep running every minute, and three jobs claimed, the poisoned one first
    # (its lease expires first, so the sweep meets it before the others)
    sweep.run(world.ctx)
    poison = world.running_job("poisoned", factory="factory-1")
    clock.advance(1)
    healthy = [world.running_job(f"healthy-{n}", factory=f"factory-{n + 2}") for n in range(2)]
    faulty.refuse_writes(poison.id)
    # When every factory dies and the sweep runs on, failing every write of the poisoned job
    for _ in range(LEASE_SECONDS // 60 + 1):
        clock.advance(60)
        counts = sweep.run(world.ctx)
    # Then the other expired leases went back to the queue with an attempt counted
    assert [(world.job(j).stage, world.job(j).attempts) for j in healthy] == [(Stage.QUEUED, 1)] * 2
    # the poisoned job was passed over, as it stands, and counted as failed
    assert world.job(poison).stage == Stage.ASSIGNED
    assert counts["failed"] == 1
    # and the sweep recorded its run, so no outage grace spares leases that merely expired
    assert outage.last_sweep(world.observer) == clock.now()


def test_run_does_all_the_sweeps_in_order(world, ctx, running_job, submit_job, clock):
    running_job("expiring")
    clock.advance(LEASE_SECONDS + 1)
    first, second = sweep.run(ctx), sweep.run(ctx)
    keys = ("expired", "deadLettered", "unblocked", "rekeyed")
    assert {k: first[k] for k in keys} == {"expired": 1, "deadLettered": 0, "unblocked": 0, "rekeyed": 0}
    assert {k: second[k] for k in keys} == {"expired": 0, "deadLettered": 0, "unblocked": 0, "rekeyed": 0}


# Outage grace (`fleet.outage`): a sweep spares leases that expired in an outage gap — the
# stale stamp of a previous sweep long past, or a gap a process recorded — until one lease
# term after the gap ended.


def test_a_lease_that_expired_during_an_outage_is_spared_for_one_term(world, ctx, running_job, clock):
    # Given the sweep ran when the job was claimed, then nothing ran for longer than the grace
    job = running_job(stage="building")
    sweep.expired_leases(ctx)
    clock.advance(LEASE_SECONDS + ctx.settings.outage_grace_seconds)
    # When the sweep finally runs
    counts = sweep.expired_leases(ctx)
    # Then the lease that expired in the gap gets one more term instead of expiring
    after = world.job(job)
    assert (counts["spared"], counts["expired"]) == (1, 0)
    assert (after.stage, after.attempts) == (Stage.BUILDING, 0)
    assert after.lease.expires_at == clock.now() + timedelta(seconds=LEASE_SECONDS)
    assert after.lease.spared
    assert after.events[-1].type == "lease_spared"
    # and a factory that is still alive can carry on
    assert world.patch(job, "review").stage == Stage.REVIEW


def test_on_a_normal_cadence_an_expired_lease_is_not_spared(world, ctx, running_job, clock):
    job = running_job(stage="building")
    for _ in range(6):  # a sweep every minute, past the lease's expiry
        clock.advance(60)
        counts = sweep.expired_leases(ctx)
    assert world.job(job).stage == Stage.QUEUED
    assert counts["spared"] == 0


def test_a_spared_lease_that_is_not_renewed_expires_a_term_after_the_gap(world, ctx, running_job, clock):
    # Given an outage that the sweep found, sparing a lease whose factory never came back
    job = running_job(stage="building")
    sweep.expired_leases(ctx)
    clock.advance(LEASE_SECONDS + ctx.settings.outage_grace_seconds)
    sweep.expired_leases(ctx)
    spared = world.job(job)
    assert spared.lease.spared
    # When the sweep runs on its cadence past that extra term
    for _ in range(LEASE_SECONDS // 60 + 1):
        clock.advance(60)
        counts = sweep.expired_leases(ctx)
    # Then the job is requeued with the attempt counted, however the gaps were recorded
    after = world.job(job)
    assert (after.stage, after.attempts, after.latest_run.result) == (Stage.QUEUED, 1, RunResult.EXPIRED)
    assert counts["spared"] == 0


def test_a_lease_that_expired_in_a_recorded_gap_is_spared_until_a_term_after_the_recovery(world, ctx, running_job, clock):
    # Given a process that came back at 10:10 after a ten-minute outage (it recorded the gap)
    job = running_job(stage="building")
    outage.record_sweep(ctx, clock.now())
    clock.advance(minutes=10)
    outage.record_recovery(ctx, None, clock.now())
    recovered_at = clock.now()
    # When the sweep runs half a minute later
    clock.advance(30)
    assert sweep.expired_leases(ctx)["spared"] == 1
    # Then the lease runs to one term after the recovery, not after the sweep
    assert world.job(job).lease.expires_at == recovered_at + timedelta(seconds=LEASE_SECONDS)


def test_a_renewed_spared_lease_is_an_ordinary_lease_again(world, ctx, running_job, clock):
    job = running_job(stage="building")
    sweep.expired_leases(ctx)
    clock.advance(LEASE_SECONDS + ctx.settings.outage_grace_seconds)
    sweep.expired_leases(ctx)
    assert world.job(job).lease.spared is True
    [answer] = factories.heartbeat(ctx, "factory-1", [PRODUCT], [], None, [(job.id, job.lease.lease_id)]).to_doc()["leases"]
    assert answer["status"] == "renewed"
    # by its factory's document: the job's own lease still says spared, the rule no longer
    assert liveness.spared(world.job(job).lease, factories.find(ctx, "factory-1")) is False
    # and its next write says so on the job too
    assert world.patch(job, "review").lease.spared is False


# Factory-level liveness (`fleet.liveness`)


def held_for_an_outage(world, ctx, running_job, clock):
    """A running job whose lease expired in a recorded outage, its holder not yet back."""
    job = running_job(stage="building")
    outage.record_sweep(ctx, clock.now())
    clock.advance(LEASE_SECONDS + 60)
    outage.record_recovery(ctx, None, clock.now())
    return job


def test_a_heartbeat_landing_after_the_sweeps_query_keeps_the_job(world, ctx, running_job, clock):
    # Given a lease held for an outage, and its holder's heartbeat landing right after the
    # sweep's query read it
    job = held_for_an_outage(world, ctx, running_job, clock)
    beat = lambda: world.heartbeat("factory-1", running=[job])  # noqa: E731
    racing = interleaved(world, "query", beat, when=expiry_query)
    # When the sweep decides
    counts = sweep.expired_leases(racing)
    # Then its factory's heartbeat keeps the lease: neither spared nor expired, the job unwritten
    assert (counts["expired"], counts["spared"]) == (0, 0)
    assert world.job(job).lease == job.lease
    assert racing.store.calls["replace:jobs"] == 1  # the outage record's stamp only


def test_a_write_landing_after_the_sweeps_query_keeps_the_job(world, ctx, running_job, clock):
    # Given a lease held for an outage, and its holder's PATCH landing right after the sweep's
    # query read it (refreshing the job's own expiry)
    job = held_for_an_outage(world, ctx, running_job, clock)
    write = lambda: world.patch(job, "review")  # noqa: E731
    racing = interleaved(world, "query", write, when=expiry_query)
    # When the sweep decides, Then it reads the job afresh and leaves it
    counts = sweep.expired_leases(racing)
    assert (counts["expired"], counts["spared"]) == (0, 0)
    kept = world.job(job)
    assert (kept.stage, kept.lease.lease_id, kept.lease.spared) == (Stage.REVIEW, job.lease.lease_id, False)
    assert kept.lease.expires_at == clock.now() + timedelta(seconds=LEASE_SECONDS)


def test_the_sweep_reads_each_factory_once_and_no_job_its_factory_keeps(world, ctx, running_job, clock, store):
    # Given a factory keeping three jobs alive past their own expiry, and a silent one's job
    kept = [running_job(f"k{n}", factory="factory-1") for n in range(3)]
    dead = running_job("dead", factory="factory-2")
    clock.advance(200)
    world.heartbeat("factory-1", running=kept)
    clock.advance(LEASE_SECONDS - 200 + 1)
    store.calls.clear()
    # When the sweep runs
    counts = sweep.expired_leases(ctx)
    # Then only the silent factory's job is read and expired, each factory read once
    assert counts["expired"] == 1 and world.job(dead).stage == Stage.QUEUED
    assert store.calls["read:factories"] == 2
    assert all(world.job(job).lease == job.lease for job in kept)
