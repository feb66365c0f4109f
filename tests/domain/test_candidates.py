"""Claim candidates: the lazy ranked merge reads only what it must, yet yields exactly the order
of a full scan — over the fast rank-key stream and over the per-bucket streams alike."""
from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fleet import candidates, claims, queue_state, scoring, store as store_port, weight_registry
from fleet.context import Context
from fleet.jobs import Job
from fleet.stages import Priority

from fleet.testing import PRODUCT, open_world

CAPABILITIES = ["py", "js", "gpu", "db"]

# Jobs: every priority, attempts 0..9, ages in whole minutes (so scores tie across buckets
# often) with an occasional millisecond nudge, and exact createdAt ties.
job_specs = st.fixed_dictionaries(
    {
        "priority": st.sampled_from(list(Priority)),
        "attempts": st.integers(0, 9),
        "age_minutes": st.integers(0, 40),
        "nudge_ms": st.sampled_from([0, 0, 0, 1, 500]),
        "capabilities": st.lists(st.sampled_from(CAPABILITIES), unique=True, max_size=3),
        # mostly queued; the rest must never be offered
        "stage": st.sampled_from(["queued"] * 6 + ["assigned", "blocked", "testing", "shipped"]),
        # a queued job now and then waits out a retry backoff: never offered either
        "waiting": st.sampled_from([False] * 5 + [True]),
    }
)
weight = st.one_of(st.sampled_from([0.0, 1.0, -1.0, 2.0, 5.0, 10.0, -2.0]), st.floats(-100, 100, allow_nan=False))
weight_sets = st.builds(
    scoring.Weights,
    age=st.one_of(st.sampled_from([0.0, 1.0, 0.5, -1.0, -3.0]), st.floats(-100, 100, allow_nan=False)),
    priority=weight,
    retries=weight,
    capabilities=st.one_of(st.sampled_from([5.0, 0.0, -5.0, 1.0, 100.0]), st.floats(-100, 100, allow_nan=False)),
)
offered_sets = st.frozensets(st.sampled_from(CAPABILITIES))
PROPERTY = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# A queue most of which needs `gpu` (with a mix of other capabilities on top), and a factory
# that never offers it: it can do almost nothing of the queue.
mostly_gpu_specs = st.builds(
    lambda spec, gpu: {**spec, "capabilities": sorted({*spec["capabilities"], "gpu"}) if gpu else spec["capabilities"]},
    job_specs,
    st.sampled_from([True] * 9 + [False]),
)
without_gpu = st.frozensets(st.sampled_from([c for c in CAPABILITIES if c != "gpu"]))
#: (job specs, what the factory offers): any mix, or a factory that can do almost nothing.
queues = st.one_of(
    st.tuples(st.lists(job_specs, max_size=25), offered_sets),
    st.tuples(st.lists(mostly_gpu_specs, max_size=30), without_gpu),
)


def seed(world, specs, weights) -> list[Job]:
    now = world.clock.now()
    return [
        world.make_job(
            f"job-{i}",
            priority=spec["priority"],
            attempts=spec["attempts"],
            created_at=now - timedelta(minutes=spec["age_minutes"]) + timedelta(milliseconds=spec["nudge_ms"]),
            capabilities=spec["capabilities"],
            stage=spec["stage"],
            weights=weights,
            retry_at=now + timedelta(seconds=30) if spec.get("waiting") and spec["stage"] == "queued" else None,
        )
        for i, spec in enumerate(specs)
    ]


def ids(cands) -> list[str]:
    return [c.head.id for c in cands]


def claimable(world, offered):
    """The capability sets of the product's queue a factory offering `offered` can do, as a
    claim reads them when a first page does not settle it."""
    return lambda: queue_state.claimable_sets(queue_state.read_doc(world.ctx, PRODUCT), offered)


def assert_every_path_yields_the_full_scan_order(world, jobs, weights, offered, page):
    now = world.clock.now()
    score = candidates.scorer(now, weights, offered)
    expected = ids(candidates.full_scan(jobs, score))
    sets = claimable(world, offered)
    paths = {
        "fast": [candidates.rank_stream(PRODUCT, now, weights, offered, page)],
        "fast, narrowed": [candidates.rank_stream(PRODUCT, now, weights, offered, page, sets)],
        "buckets": candidates.bucket_streams(PRODUCT, now, weights, offered, page, claims.MAX_ATTEMPTS),
        "buckets, narrowed": candidates.bucket_streams(
            PRODUCT, now, weights, offered, page, claims.MAX_ATTEMPTS, claimable=sets
        ),
    }
    for name, streams in paths.items():
        assert ids(candidates.ranked(world.store, streams, score)) == expected, name
    # and only claimable jobs appear: queued, and the factory has every capability
    eligible = {j.id for j in jobs if j.stage.value == "queued" and not j.waiting and offered.issuperset(j.capabilities)}
    assert set(expected) == eligible


@PROPERTY
@given(queue=queues, weights=weight_sets, page=st.integers(1, 7))
def test_ranked_yields_exactly_the_full_scan_order_over_either_kind_of_stream(queue, weights, page):
    specs, offered = queue
    with open_world() as world:
        # Given queued jobs keyed with `weights`, and some that are not claimable
        jobs = seed(world, specs, weights)

        # When the fast path and the bucket path rank them, whole or narrowed to the
        # capability sets the factory can do, Then each agrees with the full scan, id for id
        assert_every_path_yields_the_full_scan_order(world, jobs, weights, offered, page)


@PROPERTY
@given(queue=queues, weights=weight_sets, page=st.sampled_from([2, 32]))
def test_claim_next_takes_the_full_scans_best_with_product_weights(queue, weights, page):
    specs, offered = queue
    with open_world() as world:
        # Given the product's registered weights, and jobs keyed with them
        weight_registry.put(world.ctx, PRODUCT, scoring.WeightsPatch(**weights.model_dump()))
        jobs = seed(world, specs, weights)
        best = candidates.full_scan(jobs, candidates.scorer(world.clock.now(), weights, offered))

        # When a factory claims without overriding anything (the rank-key path; with a small
        # page a factory that can do little narrows to the sets it can do)
        claimed = world.with_settings(claim_page=page).claim(capabilities=sorted(offered))

        # Then it holds exactly the full scan's best, or nothing when the scan has none
        assert (claimed.job.id if claimed.job else None) == (best[0].head.id if best else None)


@PROPERTY
@given(queue=queues, override=weight_sets)
def test_claim_next_takes_the_full_scans_best_with_request_weights(queue, override):
    specs, offered = queue
    with open_world() as world:
        # Given jobs keyed with the default weights
        jobs = seed(world, specs, scoring.DEFAULTS)
        best = candidates.full_scan(jobs, candidates.scorer(world.clock.now(), override, offered))

        # When a factory claims with its own weights (the bucket path, unless only capabilities differ)
        claimed = world.with_settings(claim_page=4).claim(capabilities=sorted(offered), weights=override.model_dump())

        # Then it holds exactly the full scan's best under its weights
        assert (claimed.job.id if claimed.job else None) == (best[0].head.id if best else None)


@PROPERTY
@given(
    queue=queues,
    weights=weight_sets,
    factories=st.lists(st.one_of(offered_sets, without_gpu), min_size=1, max_size=3),
    first=st.sampled_from([1, 3, 12]),
)
def test_factories_of_mixed_capabilities_claiming_in_turn_each_take_their_full_scans_best(
    queue, weights, factories, first
):
    specs, offered = queue
    with open_world() as world:
        # Given the product's registered weights, jobs keyed with them, and factories that
        # offer different sets (some able to do almost nothing of a queue that needs gpu)
        weight_registry.put(world.ctx, PRODUCT, scoring.WeightsPatch(**weights.model_dump()))
        remaining = seed(world, specs, weights)
        factories = [offered, *factories]
        claimer = world.with_settings(claim_first_page=first, claim_page=3)
        now = world.clock.now()

        # When they claim in turn until a whole round finds nothing (each claim ranking from
        # heads with the weights its process remembers, and reading its pick whole)
        idle, turn = 0, 0
        while idle < len(factories):
            can = factories[turn % len(factories)]
            best = candidates.full_scan(remaining, candidates.scorer(now, weights, can))
            claimed = claimer.claim(f"factory-{turn}", capabilities=sorted(can))

            # Then each takes exactly the best a full scan of what is left finds for it
            assert (claimed.job.id if claimed.job else None) == (best[0].head.id if best else None)
            if claimed.job is None:
                idle += 1
            else:
                idle = 0
                assert claimed.job.stage.value == "assigned" and can.issuperset(claimed.job.capabilities)
                remaining = [job for job in remaining if job.id != claimed.job.id]
            turn += 1


@PROPERTY
@given(queue=queues)
def test_a_head_ranks_as_the_job_it_was_read_from(queue):
    specs, offered = queue
    with open_world() as world:
        # Given jobs of every shape, some fields at their defaults (a projection leaves them out)
        jobs = seed(world, specs, scoring.DEFAULTS)
        query = candidates.rank_stream(PRODUCT, world.clock.now(), scoring.DEFAULTS, offered, 100).query
        rows = list(store_port.query_all(world.store, query))

        # When their projected rows are read as heads
        heads = {row["id"]: candidates.Head.from_row(row) for row in rows}

        # Then each is the head of its job as stored, ETag and all, and carries nothing else
        stored = {job.id: world.store.read("jobs", PRODUCT, job.id) for job in jobs if job.stage.value == "queued"}
        assert heads == {id: candidates.Head.of(Job.from_doc(doc)) for id, doc in stored.items()}
        for row in rows:
            assert set(row) <= {"id", "productId", "_etag", *candidates.HEAD_FIELDS}


# Exact examples


def test_ties_go_to_the_older_job_then_the_smaller_id(make_job, clock):
    # Given three jobs that all score 30 with the default weights:
    older_a = make_job("a", age_minutes=20)  # 1*20 + 10*1 = 30
    older_b = make_job("b", age_minutes=20)  # 1*20 + 10*1 = 30, created with a
    younger_high = make_job("c", priority="high", age_minutes=10)  # 1*10 + 10*2 = 30
    score = candidates.scorer(clock.now(), scoring.DEFAULTS, frozenset())

    # When they are ranked
    order = ids(candidates.full_scan([younger_high, older_b, older_a], score))

    # Then the older ones come first, between them the smaller id
    assert order == [*sorted([older_a.id, older_b.id]), younger_high.id]


def test_the_fast_path_reads_one_page_whatever_the_depth():
    """Cost must not grow with queue depth: 50 and 2000 queued jobs, the same number of reads."""
    queries = {}
    for depth in (50, 2000):
        with open_world() as world:
            # Given `depth` queued jobs of mixed priority and age (no two created in the same
            # millisecond: a tie at the top longer than the first page costs another page)
            now = world.clock.now()
            jobs = [
                world.make_job(
                    f"job-{i}", priority=list(Priority)[i % 4], created_at=now - timedelta(minutes=i % 120, milliseconds=i)
                )
                for i in range(depth)
            ]
            counting = store_port.CountingStore(world.store)
            ctx = Context(counting, world.clock, world.ctx.settings)

            # When a factory claims with the product's weights
            claimed = claims.claim_next(ctx, claims.ClaimRequest("factory-1", PRODUCT, []))

            # Then it got the full scan's best having read the same, small number of pages
            best = candidates.full_scan(jobs, candidates.scorer(world.clock.now(), scoring.DEFAULTS, frozenset()))[0]
            assert claimed.job.id == best.head.id
            queries[depth] = counting.calls["query:jobs"]
    assert queries[50] == queries[2000] <= 2, queries


def test_the_bucket_path_reads_a_bounded_number_of_pages_whatever_the_depth():
    queries = {}
    for depth in (50, 2000):
        with open_world() as world:
            jobs = [
                world.make_job(f"job-{i}", priority=list(Priority)[i % 4], attempts=i % 3, age_minutes=i % 120)
                for i in range(depth)
            ]
            counting = store_port.CountingStore(world.store)
            ctx = Context(counting, world.clock, world.ctx.settings)

            # A request override of age changes the order: no rank key, one head per bucket
            request = claims.ClaimRequest("factory-1", PRODUCT, [], scoring.WeightsPatch(age=3))
            claimed = claims.claim_next(ctx, request)
            weights = scoring.resolve(request.weights)
            best = candidates.full_scan(jobs, candidates.scorer(world.clock.now(), weights, frozenset()))[0]
            assert claimed.job.id == best.head.id
            queries[depth] = counting.calls["query:jobs"]
    # one read per (priority, attempts) bucket, and a few more at most
    assert queries[50] == queries[2000] <= len(Priority) * claims.MAX_ATTEMPTS + 4, queries


def test_an_age_weight_below_zero_reads_buckets_newest_first(make_job, store, clock):
    # Given w.age = -1: the youngest job of a bucket is its best
    old = make_job("old", age_minutes=30)
    new = make_job("new", age_minutes=1)
    weights = scoring.Weights(age=-1)
    score = candidates.scorer(clock.now(), weights, frozenset())
    streams = candidates.bucket_streams(PRODUCT, clock.now(), weights, frozenset(), 1, claims.MAX_ATTEMPTS)
    assert ids(candidates.ranked(store, streams, score)) == [new.id, old.id]


def test_a_large_age_weight_still_agrees_with_the_full_scan(make_job, store, clock):
    # Given w.age = 10000 (allowed: weights go to 1e6) and two jobs whose true scores tie:
    # low created at t, normal created 60 ms later: 10*1 - 10000*(t + 0.001 min) = 10*0 - 10000*t
    weights = scoring.Weights(age=10000, priority=10, retries=0, capabilities=0)
    t = clock.now() - timedelta(days=2, hours=6, minutes=20, seconds=31, milliseconds=665)  # 2026-01-03T02:39:28.335Z
    low = make_job("low", priority="low", created_at=t, weights=weights)
    normal = make_job("normal", priority="normal", created_at=t + timedelta(milliseconds=60), weights=weights)
    score = candidates.scorer(clock.now(), weights, frozenset())

    # When the fast path ranks them one job per page
    fast = ids(candidates.ranked(store, [candidates.rank_stream(PRODUCT, clock.now(), weights, frozenset(), 1)], score))

    # Then it agrees with the full scan
    assert fast == ids(candidates.full_scan([low, normal], score))
