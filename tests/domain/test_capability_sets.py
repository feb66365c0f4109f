"""Capability sets: a claim reads only the jobs of the sets its factory can do, so what it costs
does not depend on how much of the queue needs capabilities it lacks; the registry of sets on
the queue-state document stays complete through queueing, crashes, pruning and older jobs."""
from __future__ import annotations

from datetime import timedelta

import pytest

from fleet import capability_sets, claims, queue_state, store as store_port, sweep, weight_registry
from fleet.context import Context
from fleet.jobs import CAP_KEY, cap_key
from fleet.stages import Priority
from fleet.testing import LEASE_SECONDS, PRODUCT, open_world


def registered(ctx) -> set[str]:
    return set(queue_state.cap_sets(queue_state.read_doc(ctx, PRODUCT) or {}))


def counted_claim(world, capabilities, **request):
    """A claim and its store calls, by a process that remembers the product's weights (as one
    that has claimed in the last few seconds does)."""
    counting = store_port.CountingStore(world.store)
    ctx = Context(counting, world.clock, world.ctx.settings)
    weight_registry.snapshot(ctx, PRODUCT)
    counting.reset()
    claimed = claims.claim_next(ctx, claims.ClaimRequest("factory-1", PRODUCT, capabilities, **request))
    return claimed, counting.total()


@pytest.mark.parametrize(
    "capabilities, expected",
    [
        ([], ""),
        (["py"], "py"),
        (["py", "gpu", "py"], "gpu,py"),  # sorted, once each
    ],
)
def test_a_capability_set_has_one_canonical_key(capabilities, expected):
    assert cap_key(capabilities) == expected


def test_every_job_document_stores_its_capability_key(make_job, store):
    job = make_job(capabilities=["py", "gpu"])
    assert store.read("jobs", PRODUCT, job.id)[CAP_KEY] == "gpu,py"


def test_submitting_a_job_registers_its_set_with_the_bump_that_announces_it(world):
    # Given a product never seen
    # When a job needing gpu and py is submitted
    world.submit_job("a", capabilities=["py", "gpu"])

    # Then the queue-state registers its set, and covers the whole queue
    doc = queue_state.read_doc(world.ctx, PRODUCT)
    assert set(queue_state.cap_sets(doc)) == {"gpu,py"}
    assert queue_state.claimable_sets(doc, frozenset({"gpu", "py", "db"})) == ["gpu,py"]
    assert queue_state.claimable_sets(doc, frozenset({"py"})) == []


@pytest.mark.parametrize("depth", [50, 2000])
def test_a_claim_that_can_do_almost_nothing_of_the_queue_costs_the_same_at_any_depth(depth):
    with open_world() as world:
        # Given `depth` queued jobs needing gpu, older (so better) than the one job needing nothing
        for i in range(depth):
            world.make_job(f"gpu-{i}", capabilities=["gpu"], priority=list(Priority)[i % 4], age_minutes=10 + i % 90)
        plain = world.make_job("plain", age_minutes=1)

        # When a factory without gpu claims, and claims again when nothing is left for it
        taken, calls = counted_claim(world, [])
        nothing, nothing_calls = counted_claim(world, [])

        # Then it took the one job it can do reading the queue-state document (the weights'
        # copy and the registry), one page and that set's stream, then taking the job (4 calls:
        # an ordinary claim is 3), and learnt that nothing is left in 3
        assert taken.job.id == plain.id
        assert calls == 4
        assert nothing.job is None and nothing.reason.value == "no_job"
        assert nothing_calls == 3


@pytest.mark.parametrize("depth", [50, 2000])
def test_the_bucket_path_narrows_too(depth):
    with open_world() as world:
        for i in range(depth):
            world.make_job(f"gpu-{i}", capabilities=["gpu"], priority="high", attempts=i % 2, age_minutes=10 + i % 90)
        plain = world.make_job("plain", age_minutes=1)

        # A request override of age: one stream per (priority, attempts) bucket
        taken, calls = counted_claim(world, [], weights=claims.scoring.WeightsPatch(age=3))

        # one read per bucket, the registry, one narrowed stream per bucket that paged on
        assert taken.job.id == plain.id
        assert calls <= 1 + len(Priority) * claims.MAX_ATTEMPTS + 1 + 2 + 1


def test_jobs_written_before_capability_keys_are_claimed_and_keyed_by_the_sweep(world, store, ctx):
    # Given a product whose queued jobs and queue-state predate capability keys
    jobs = [world.make_job(f"old-{i}", capabilities=["gpu"], age_minutes=30) for i in range(5)]
    plain = world.make_job("plain", age_minutes=1)
    for job in [*jobs, plain]:
        doc = store.read("jobs", PRODUCT, job.id)
        doc.pop(CAP_KEY)
        store.replace("jobs", doc, doc["_etag"])
    state = store.read("jobs", PRODUCT, queue_state.DOC_ID)
    store.replace("jobs", {"id": queue_state.DOC_ID, "productId": PRODUCT, "version": 7}, state["_etag"])

    # Then a factory without gpu still finds the job it can do (the queue read unnarrowed)
    few = world.with_settings(claim_page=2)
    assert queue_state.claimable_sets(queue_state.read_doc(ctx, PRODUCT), frozenset()) is None
    assert few.claim(capabilities=[]).job.id == plain.id

    # When the sweep runs
    counts = sweep.run(ctx)

    # Then it keyed the queued jobs, registered their set and marked the registry complete
    assert counts["capSetsKeyed"] == 5
    assert all(store.read("jobs", PRODUCT, job.id)[CAP_KEY] == "gpu" for job in jobs)
    doc = queue_state.read_doc(ctx, PRODUCT)
    assert doc[queue_state.CAP_SETS_COMPLETE] is True
    assert queue_state.claimable_sets(doc, frozenset({"gpu"})) == ["gpu"]
    # and a factory with gpu takes them through the narrowed streams
    assert {few.claim("factory-2", capabilities=["gpu"]).job.id for _ in jobs} == {job.id for job in jobs}


def test_a_set_no_queued_job_needs_any_more_is_pruned_once_it_is_old(world, ctx, clock):
    # Given a gpu job that left the queue, and a py job still in it
    gone = world.make_job("gone", capabilities=["gpu"])
    world.make_job("waiting", capabilities=["py"])
    assert world.claim(capabilities=["gpu"]).job.id == gone.id

    # When the sweep runs before the sets are old, Then both stay
    assert capability_sets.sweep(ctx)["capSetsPruned"] == 0
    assert registered(ctx) == {"gpu", "py"}

    # When it runs past PRUNE_AFTER, Then only the set with a queued job stays, refreshed
    clock.advance(capability_sets.PRUNE_AFTER.total_seconds() + 1)
    assert capability_sets.sweep(ctx)["capSetsPruned"] == 1
    assert registered(ctx) == {"py"}
    assert capability_sets.sweep(ctx)["capSetsPruned"] == 0  # refreshed: not looked at again yet


def test_a_prune_that_races_a_bump_writes_nothing(world, ctx, clock):
    world.make_job("gone", capabilities=["gpu"])
    world.claim(capabilities=["gpu"])
    clock.advance(capability_sets.PRUNE_AFTER.total_seconds() + 1)
    read = queue_state.read_doc(ctx, PRODUCT)

    # Given a job of the set queued, and bumped, after the prune read the queue-state
    again = world.submit_job("again", capabilities=["gpu"])

    # When the prune decides on what it read, Then its write is refused and the set stays
    assert capability_sets.prune(ctx, read, clock.now()) == 0
    assert "gpu" in registered(ctx)
    assert world.claim("factory-2", capabilities=["gpu"]).job.id == again.id


def test_an_expired_lease_requeues_its_job_into_a_registered_set_after_a_prune(world, ctx, clock):
    # Given a gpu job running, its set pruned while it ran
    job = world.running_job("long", capabilities=["gpu"])
    clock.advance(capability_sets.PRUNE_AFTER.total_seconds() + 1)
    capability_sets.sweep(ctx)
    assert "gpu" not in registered(ctx)

    # When its factory stops heartbeating and the sweep expires the lease
    clock.advance(LEASE_SECONDS + 1)
    assert sweep.run(ctx)["expired"] == 1

    # Then the requeue registered the set again, and a narrowing claim finds the job
    assert "gpu" in registered(ctx)
    for i in range(40):
        world.make_job(f"ml-{i}", capabilities=["ml"], age_minutes=600)
    assert world.with_settings(claim_page=2).claim("factory-2", capabilities=["gpu"]).job.id == job.id


def test_the_sweep_registers_the_set_of_a_job_whose_bump_a_crash_lost(world, store, ctx, clock):
    # Given a queued py job whose write landed but whose bump did not
    world.make_job("known")
    clock.advance(60)
    lost = world.make_job("lost", capabilities=["py"], stage="blocked")
    doc = store.read("jobs", PRODUCT, lost.id)
    store.replace("jobs", {**doc, "stage": "queued", "updatedAt": "2026-01-05T09:01:00.000Z"}, doc["_etag"])
    assert "py" not in registered(ctx)

    # When the sweep repairs the queue-states
    sweep.queue_versions(ctx, clock.now() - timedelta(minutes=5))

    # Then the set is registered and the job claimable by a narrowing claim
    assert "py" in registered(ctx)
    for i in range(40):
        world.make_job(f"gpu-{i}", capabilities=["gpu"], age_minutes=600)
    assert world.with_settings(claim_page=2).claim(capabilities=["py"]).job.id == lost.id


def test_a_bump_registers_any_number_of_sets_in_writes_a_cosmos_patch_can_take(world, store, ctx):
    # Given twelve sets to register (a Cosmos patch sets at most ten fields)
    keys = {cap_key([f"cap-{i}"]) for i in range(12)}

    # When one bump registers them all
    doc = queue_state.bump(ctx, PRODUCT, keys)

    # Then every set is registered, by one announcing write and one that is not
    assert set(queue_state.cap_sets(doc)) == keys
    assert doc["version"] == 1
    assert store.calls["increment:jobs"] == 2


def test_a_job_written_before_capability_keys_enters_the_queue_with_its_key(world, store, ctx):
    # Given a blocked job whose document predates capability keys, waiting on a running dep
    dep = world.running_job("dep", stage="testing")
    old = world.submit_job("old", capabilities=["gpu"], deps=["dep"])
    doc = store.read("jobs", PRODUCT, old.id)
    doc.pop(CAP_KEY)
    store.replace("jobs", doc, doc["_etag"])

    # When its dep ships, which unblocks it (decided on the job as the dependents' query read it)
    world.patch(dep, "shipped")

    # Then it is queued with its key, where the narrowed streams of a claim look for it (once
    # the sweep has keyed the older queued jobs and marked the registry complete, nothing else
    # would give it one)
    stored = store.read("jobs", PRODUCT, old.id)
    assert (stored["stage"], stored.get(CAP_KEY)) == ("queued", "gpu")
