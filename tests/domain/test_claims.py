"""Claims: a factory takes the best queued job it can do, under a new fenced lease and run; a
lost race falls through to the true next best; a named job is claimed only if claimable."""
from __future__ import annotations

import random
import threading
from collections import Counter
from datetime import timedelta

import pytest

from fleet import actions, claims, errors, factories, store as store_port
from fleet.context import Context, Settings
from fleet.jobs import EVENT_RING, Job, job_id
from fleet.stages import RunResult, Stage

from fleet.testing import LEASE_SECONDS, PRODUCT, World, open_world


class RivalStore(store_port.CountingStore):
    """A store on which, just before our first CAS of a job document, a rival factory claims
    `victim` first — the race of two factories for one job, made deterministic."""

    def __init__(self, inner, rival_ctx: Context, victim: str, rival: str = "factory-rival") -> None:
        super().__init__(inner)
        self.rival_ctx = rival_ctx
        self.victim = victim
        self.rival = rival
        self.raced = False

    def _race(self, container: str) -> None:
        if container == "jobs" and not self.raced:
            self.raced = True
            job = Job.from_doc(self.inner.read("jobs", PRODUCT, self.victim))
            claims.take(self.rival_ctx, job, self.rival, self.rival_ctx.clock.now())

    def replace(self, container, doc, etag):
        self._race(container)
        return super().replace(container, doc, etag)

    def patch(self, container, partition_key, id, ops, etag, answer=False):
        self._race(container)
        return super().patch(container, partition_key, id, ops, etag, answer)


def racing(world: World, victim: Job) -> Context:
    rival_ctx = Context(world.store, world.clock, world.ctx.settings)
    return Context(RivalStore(world.store, rival_ctx, victim.id), world.clock, world.ctx.settings)


# Picking


def test_the_best_job_wins(make_job, claim):
    # Given a normal job waiting 30 minutes and a critical one just in (defaults):
    make_job("waiting", age_minutes=30)  # 1*30 + 10*1 = 40
    critical = make_job("critical", priority="critical")  # 1*0 + 10*3 = 30
    retried = make_job("retried", priority="critical", age_minutes=15, attempts=3)  # 15 + 30 - 6 = 39
    # When a factory claims, Then the oldest normal job (40) beats both
    assert claim().job.idempotency_key == "waiting"
    # and next the retried critical (39) beats the fresh critical (30)
    assert claim().job.id == retried.id
    assert claim().job.id == critical.id


def test_a_job_needing_a_capability_the_factory_lacks_is_skipped(make_job, claim):
    # Given a critical job that needs a GPU, and a low one anyone can do
    gpu = make_job("gpu", priority="critical", capabilities=["gpu"])
    plain = make_job("plain", priority="low")
    # When a factory without a GPU claims, Then it gets the plain job
    assert claim("cpu-box", capabilities=["py"]).job.id == plain.id
    # and a GPU factory later gets the other
    assert claim("gpu-box", capabilities=["gpu"]).job.id == gpu.id


def test_the_capability_bonus_sends_specialised_work_to_factories_that_can_do_it(make_job, claim):
    # Given two normal jobs, the generic one 4 minutes older:
    make_job("generic", age_minutes=4)  # 4 + 10 = 14
    special = make_job("special", capabilities=["py"])  # 0 + 10 + 5*1 = 15 for a py factory
    # When a factory with py claims, Then the specialised job wins by its bonus
    assert claim(capabilities=["py", "js"]).job.id == special.id


def test_a_factory_without_capabilities_in_its_claim_uses_its_last_heartbeat(ctx, make_job, claim):
    gpu = make_job("gpu", capabilities=["gpu"])
    # Given the factory told us it has a GPU in its last heartbeat
    factories.heartbeat(ctx, "gpu-box", [PRODUCT], ["gpu"], None, [])
    # When it claims without naming capabilities, Then it may take GPU work
    assert claim("gpu-box").job.id == gpu.id


def test_a_factory_never_heard_of_has_no_capabilities(make_job, claim):
    make_job("gpu", capabilities=["gpu"])
    result = claim("stranger")
    assert (result.job, result.reason) == (None, "no_job")


def test_an_empty_queue_gives_no_job_with_reason(claim, make_job):
    make_job("running", stage="building")
    make_job("blocked", stage="blocked")
    result = claim()
    assert result.job is None
    assert result.reason == "no_job"
    assert result.to_doc() == {"job": None, "reason": "no_job"}


def test_another_products_jobs_are_never_offered(make_job, claim):
    make_job("elsewhere", product_id="other-product")
    assert claim().reason == "no_job"


# The lease and the run


def test_a_claim_gives_the_job_a_fresh_fenced_lease_and_a_run(make_job, claim, clock):
    job = make_job("job")
    # When factory-1 claims it
    result = claim("factory-1")
    claimed = result.job
    # Then the job is assigned under a lease that expires a lease term from now
    assert claimed.stage == Stage.ASSIGNED
    assert claimed.lease.lease_id
    assert claimed.lease.factory_id == "factory-1"
    assert claimed.lease.epoch == 1 == claimed.lease_epoch
    assert claimed.lease.expires_at == clock.now() + timedelta(seconds=LEASE_SECONDS)
    # and a new, open run records who started it when
    run = claimed.latest_run
    assert (run.run_id, run.factory_id, run.started_at) == (f"{job.id}#1", "factory-1", clock.now())
    assert (run.ended_at, run.result) == (None, None)
    assert claimed.events[-1].type == "claimed"
    # and the answer carries the lease and the run id
    doc = result.to_doc()
    assert doc["lease"]["leaseId"] == claimed.lease.lease_id
    assert doc["lease"]["expiresAt"] == "2026-01-05T09:05:00.000Z"
    assert doc["runId"] == run.run_id


@pytest.mark.parametrize("lease_seconds", [30, 300, 3600])
def test_the_lease_term_is_the_setting(lease_seconds):
    with open_world(Settings(lease_seconds=lease_seconds)) as world:
        world.make_job("job")
        lease = world.claim().job.lease
        assert lease.expires_at - world.clock.now() == timedelta(seconds=lease_seconds)


def test_every_new_lease_on_a_job_has_a_higher_epoch(ctx, make_job, claim):
    # Given a job claimed, requeued by an operator, and claimed again
    make_job("job")
    first = claim("factory-1").job
    actions.apply(ctx, first.id, actions.Action.REQUEUE)
    second = claim("factory-2").job
    # Then the second lease is a different one with a higher epoch, and a second run
    assert second.id == first.id
    assert second.lease.lease_id != first.lease.lease_id
    assert second.lease.epoch == 2 > first.lease.epoch
    assert [r.run_id for r in second.runs] == [f"{first.id}#1", f"{first.id}#2"]
    assert second.runs[0].result == RunResult.RELEASED


def test_a_claim_does_not_consider_a_job_it_already_took(make_job, claim):
    a, b = make_job("a", age_minutes=2), make_job("b", age_minutes=1)
    assert [claim().job.id, claim().job.id, claim().job] == [a.id, b.id, None]


# Races


def test_a_lost_race_falls_through_to_the_next_best(world, make_job):
    # Given the best job and the next best
    best = make_job("best", priority="critical")
    next_best = make_job("next", priority="high")
    # When a rival takes the best job between our read and our write
    ctx = racing(world, best)
    result = claims.claim_next(ctx, claims.ClaimRequest("factory-1", PRODUCT, []))
    # Then we get the next best, and the rival keeps the best
    assert result.job.id == next_best.id
    assert result.job.lease.factory_id == "factory-1"
    assert world.job(best).lease.factory_id == "factory-rival"
    assert world.job(best).lease_epoch == 1


def test_losing_the_race_for_the_only_job_means_no_job(world, make_job):
    only = make_job("only")
    result = claims.claim_next(racing(world, only), claims.ClaimRequest("factory-1", PRODUCT, []))
    assert (result.job, result.reason) == (None, "no_job")


def test_a_job_taken_between_the_page_and_its_take_falls_through_to_the_next_best(world, make_job):
    # Given the best job and the next best, and a rival that takes the best right after our
    # candidate page was read (so the page shows it queued)
    best = make_job("best", priority="critical")
    next_best = make_job("next", priority="high")
    rival = lambda: claims.take(world.ctx, world.job(best), "factory-rival", world.clock.now())  # noqa: E731
    world.store.meanwhile("query", "jobs", rival)
    # When we claim, Then the best job no longer carries the ETag it was ranked with: we take the next
    assert world.claim("factory-1", capabilities=[]).job.id == next_best.id
    assert world.job(best).lease.factory_id == "factory-rival"


def test_a_job_changed_since_its_head_was_read_is_passed_over_as_a_race_lost(world, make_job, store):
    # Given the best job, changed (still queued) right after our candidate page was read
    best = make_job("best", priority="critical")
    next_best = make_job("next", priority="high")

    def touch() -> None:
        doc = store.inner.read("jobs", PRODUCT, best.id)
        store.inner.replace("jobs", {**doc, "priority": "low"}, doc["_etag"])

    world.store.meanwhile("query", "jobs", touch)
    # When we claim, Then its head no longer says what ranked it: we take the next best
    assert world.claim("factory-1", capabilities=[]).job.id == next_best.id
    assert world.job(best).stage == Stage.QUEUED


def test_a_claim_whose_candidates_keep_changing_asks_to_be_retried_not_told_nothing_is_left(world, make_job, store):
    # Given a queued job that changes (still queued) after every candidate page a claim reads,
    # as a weight change re-keying the queue over and over does
    only = make_job("only")

    def touch() -> None:
        doc = store.inner.read("jobs", PRODUCT, only.id)
        store.inner.replace("jobs", {**doc, "rankKey": doc["rankKey"] + 1}, doc["_etag"])

    for _ in range(claims.RESCANS * 4):
        world.store.meanwhile("query", "jobs", touch)
    # When a factory claims, Then it is told to retry (503 store_busy), not that nothing is left
    with pytest.raises(errors.TooManyRetries):
        world.claim("factory-1", capabilities=[])
    # and once the changes stop, the next claim takes the job
    world.store.disarm()
    assert world.claim("factory-1", capabilities=[]).job.id == only.id


def test_a_claim_losing_every_scan_to_other_factories_takes_is_told_nothing_is_left(world, make_job):
    # Given one queued job, and rivals that take whatever is queued right after each candidate
    # page this claim reads, while a new job arrives (the next page's only job)
    arrivals = iter(range(claims.RESCANS * 4))
    make_job("first")

    def rivals() -> None:
        for doc in world.store.inner.query(store_port.Query("jobs", PRODUCT, (store_port.Filter("stage", "=", "queued"),), limit=50)).items:
            claims.take(world.ctx, world.job(doc["id"]), "factory-rival", world.clock.now())
        make_job(f"next-{next(arrivals)}")

    for _ in range(claims.RESCANS * 4):
        world.store.meanwhile("query", "jobs", rivals)
    # When a factory claims, Then every scan lost its race to a take, none to a change: no job
    # (not 503: nothing it lost is there to take)
    result = world.claim("factory-1", capabilities=[])
    assert (result.job, result.reason) == (None, "no_job")


def test_a_claim_whose_pick_is_taken_and_given_back_under_every_scan_is_told_nothing_is_left(world, make_job):
    # Given one queued job that a rival takes and gives back right after each candidate page
    # this claim reads: queued again in the next scan, changed, but at a later lease epoch
    only = make_job("only")

    def rival() -> None:
        taken = claims.take(world.ctx, world.job(only), "factory-rival", world.clock.now())
        world.release(taken)

    for _ in range(claims.RESCANS * 4):
        world.store.meanwhile("query", "jobs", rival)
    # When a factory claims, Then it lost every race to a take, not to a re-keying queue: no
    # job (the give-back's new queue-state version sends it to claim again), not 503
    result = world.claim("factory-1", capabilities=[])
    assert (result.job, result.reason) == (None, "no_job")
    assert world.job(only).lease_epoch == claims.RESCANS


def test_a_claim_takes_its_pick_by_its_head_and_answers_the_whole_job_as_stored(world, make_job, store):
    # Given a queued job with a body, and a store counting calls
    job = make_job("job", body_md="# the work\n" * 300, estimated_cost_usd=None)
    store.reset()
    # When a factory claims it
    claimed = world.claim("factory-1", capabilities=[])
    # Then it took it without reading it (the weights, the page, one patch) and answered it as
    # it is stored now, body and all, its run and claim event appended
    assert dict(store.calls) == {"read:jobs": 1, "query:jobs": 1, "patch:jobs": 1}
    stored = world.job(job)
    assert claimed.job.to_doc() == stored.to_doc() and claimed.job.etag == stored.etag
    assert stored.body_md == job.body_md and stored.stage == Stage.ASSIGNED
    assert [run.run_id for run in stored.runs] == [f"{job.id}#1"] and stored.events[-1].type == "claimed"
    assert claimed.lease == stored.lease and stored.lease_epoch == 1


def test_a_claim_may_leave_the_events_ring_one_over_until_the_next_write_trims_it(world, make_job):
    # Given a queued job whose events ring is full
    job = make_job("job")
    full = world.job(job)
    for i in range(EVENT_RING):
        full = full.with_event(world.clock.now(), "note", None, n=i)
    world.store.inner.replace("jobs", full.to_doc(), full.etag)
    dropped = world.job(job).events_dropped
    # When a factory claims it, the ring holds one event more; and its next write trims it
    claimed = world.claim("factory-1", capabilities=[]).job
    assert len(world.job(job).events) == EVENT_RING + 1
    world.patch(claimed, "building")
    after = world.job(job)
    assert len(after.events) == EVENT_RING and after.events_dropped == dropped + 2
    assert [e.type for e in after.events[-2:]] == ["claimed", "stage"]


# Claiming a named job


def test_a_named_queued_job_is_claimed(ctx, make_job):
    make_job("better", priority="critical")
    wanted = make_job("wanted", priority="low")
    result = claims.claim_job(ctx, wanted.id, PRODUCT, claims.ClaimRequest("factory-1", PRODUCT, []))
    assert result.job.id == wanted.id
    assert result.job.stage == Stage.ASSIGNED


@pytest.mark.parametrize("stage", ["assigned", "building", "testing", "blocked", "shipped", "dead_letter"])
def test_a_named_job_that_is_not_queued_is_not_claimable(ctx, make_job, stage):
    job = make_job("job", stage=stage)
    with pytest.raises(errors.NotClaimable) as raised:
        claims.claim_job(ctx, job.id, PRODUCT, claims.ClaimRequest("factory-1", PRODUCT, []))
    assert raised.value.extra["reason"] == "not_queued"


def test_a_named_job_needing_capabilities_the_factory_lacks_is_not_claimable(ctx, make_job):
    job = make_job("job", capabilities=["gpu", "py", "cuda"])
    with pytest.raises(errors.NotClaimable) as raised:
        claims.claim_job(ctx, job.id, PRODUCT, claims.ClaimRequest("factory-1", PRODUCT, ["py"]))
    assert raised.value.extra == {"reason": "capabilities", "missing": ["cuda", "gpu"]}
    assert ctx.store.read("jobs", PRODUCT, job.id)["stage"] == "queued"


def test_a_named_job_lost_to_a_rival_is_not_claimable(world, make_job):
    job = make_job("job")
    with pytest.raises(errors.NotClaimable) as raised:
        claims.claim_job(racing(world, job), job.id, PRODUCT, claims.ClaimRequest("factory-1", PRODUCT, []))
    assert raised.value.extra["reason"] == "lost_race"
    assert world.job(job).lease.factory_id == "factory-rival"


def test_an_unknown_named_job_is_not_found(ctx):
    with pytest.raises(errors.NotFound):
        claims.claim_job(ctx, job_id(PRODUCT, "never"), PRODUCT, claims.ClaimRequest("factory-1", PRODUCT, []))


# Concurrency: the real SQLite file, many threads


def test_concurrent_factories_never_hold_one_job_twice(tmp_path):
    """Eight factories claim, sometimes give work back, and ship. No job is ever held by two
    leases at once, and each job's final epoch is the number of times it was claimed."""
    with open_world(path=str(tmp_path / "fleet.db")) as world:
        jobs = [world.make_job(f"job-{i}", priority=["low", "normal", "high", "critical"][i % 4]) for i in range(48)]
        held: set[str] = set()
        claims_of: Counter[str] = Counter()
        lock = threading.Lock()
        problems: list[str] = []

        def factory(name: str, seed: int) -> None:
            rnd = random.Random(seed)
            try:
                while True:
                    job = world.claim(name).job
                    if job is None:
                        return
                    with lock:
                        if job.id in held:
                            problems.append(f"{job.id} claimed by {name} while held")
                        held.add(job.id)
                        claims_of[job.id] += 1
                    give_back = job.lease.epoch < 3 and rnd.random() < 0.4
                    with lock:
                        held.discard(job.id)  # before the write that frees it
                    if give_back:
                        world.release(job)
                    else:
                        world.release(job, stage="shipped")
            except Exception as exc:  # noqa: BLE001 - reported below, in the test's thread
                problems.append(f"{name}: {exc!r}")

        threads = [threading.Thread(target=factory, args=(f"factory-{n}", n)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)

        assert problems == []
        for job in jobs:
            final = world.job(job)
            assert final.stage == Stage.SHIPPED
            assert final.lease_epoch == claims_of[job.id] == len(final.runs)
            assert [r.run_id for r in final.runs] == [f"{job.id}#{n}" for n in range(1, claims_of[job.id] + 1)]
