"""The product weight registry: PUT merges per field over the defaults, re-keys the product's
queued jobs, and until that is done claims take the bucket path, which needs no rank keys."""
from __future__ import annotations

import pydantic
import pytest

from fleet import claims, leases, queue_state, scoring, store as store_port, sweep, testing, weight_registry
from fleet.context import Context, Settings
from fleet.jobs import Job, job_id
from fleet.schemas import ReleaseBody, WeightsBody

from fleet.testing import PRODUCT, interleaved, open_world


class RecordingStore(store_port.CountingStore):
    """Remembers every query, to tell which claim path ran."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.queries: list[store_port.Query] = []

    def query(self, query, continuation=None):
        self.queries.append(query)
        return super().query(query, continuation)


def claim_recording(world, **request):
    recording = RecordingStore(world.store)
    ctx = Context(recording, world.clock, world.ctx.settings)
    result = claims.claim_next(ctx, claims.ClaimRequest("factory-1", PRODUCT, [], **request))
    bucket_path = any(f.field == "priority" for q in recording.queries for f in q.where)
    return result, bucket_path


def test_a_product_without_weights_resolves_to_the_defaults(ctx):
    assert weight_registry.view(ctx, PRODUCT).to_doc() == {
        "productId": PRODUCT,
        "weights": {},
        "resolved": {"age": 1.0, "priority": 10.0, "retries": -2.0, "capabilities": 5.0},
        "rekeying": False,
    }


def test_put_merges_per_field(ctx):
    weight_registry.put(ctx, PRODUCT, scoring.WeightsPatch(age=2))
    view = weight_registry.put(ctx, PRODUCT, scoring.WeightsPatch(priority=50)).to_doc()
    assert view["weights"] == {"age": 2.0, "priority": 50.0}
    assert view["resolved"] == {"age": 2.0, "priority": 50.0, "retries": -2.0, "capabilities": 5.0}
    assert view["rekeying"] is False
    # a later PUT of a field replaces only that field
    view = weight_registry.put(ctx, PRODUCT, scoring.WeightsPatch(age=0)).to_doc()
    assert view["weights"] == {"age": 0.0, "priority": 50.0}


def test_weights_are_per_product(ctx):
    weight_registry.put(ctx, "alpha", scoring.WeightsPatch(age=9))
    assert weight_registry.for_product(ctx, "alpha").age == 9
    assert weight_registry.for_product(ctx, "beta") == scoring.DEFAULTS


def test_put_rekeys_the_queued_jobs_and_only_them(world, ctx, make_job, submit_job):
    # Given queued jobs keyed with the defaults, and one running
    queued = [make_job("a", age_minutes=5), make_job("b", priority="high", attempts=2)]
    running = make_job("c", stage="building")
    # When the product's weights change
    weight_registry.put(ctx, PRODUCT, scoring.WeightsPatch(priority=100, retries=-7))
    # Then every queued job carries the new rank key: 100*order - 7*attempts - createdAtMinutes
    new = scoring.Weights(priority=100, retries=-7)
    for job in queued:
        assert world.job(job).rank_key == scoring.rank_key(job.priority.order, job.attempts, job.created_at, new)
    assert world.job(running).rank_key == running.rank_key
    # and jobs submitted afterwards are keyed with them too
    fresh = submit_job("d")
    assert fresh.rank_key == scoring.rank_key(1, 0, fresh.created_at, new)


def test_after_a_weight_change_claims_follow_the_new_weights_on_the_fast_path(world, ctx, make_job):
    # Given an old normal job and a fresh high one (defaults: 60 + 10 = 70 beats 0 + 20 = 20)
    make_job("old", age_minutes=60)
    high = make_job("high", priority="high")
    # When priority is made to matter more than an hour of waiting: 60 + 100 = 160 < 0 + 200
    weight_registry.put(ctx, PRODUCT, scoring.WeightsPatch(priority=100))
    result, bucket_path = claim_recording(world)
    # Then the high job wins, read by rank key
    assert result.job.id == high.id
    assert not bucket_path


def died_before_rekeying(ctx, store, weights):
    """What a PUT of `weights` leaves when it dies after writing them, before re-keying."""
    change = queue_state.count_weight_change(ctx, PRODUCT)
    store.upsert("jobs", {"id": weight_registry.DOC_ID, "productId": PRODUCT, "weights": weights, "rekeying": True, "change": change})


def test_while_rekeying_claims_take_the_bucket_path_and_still_pick_right(world, ctx, make_job, store):
    # Given a PUT that changed the weights but died before re-keying (stale rank keys)
    make_job("old", age_minutes=60)  # default keys: 60 + 10 = 70, the best by its stale key
    high = make_job("high", priority="high")  # new weights: 0 + 200 = 200 beats 60 + 100 = 160
    died_before_rekeying(ctx, store, {"priority": 100})
    # When a factory claims
    result, bucket_path = claim_recording(world)
    # Then it ignored the stale keys and took the job the new weights rank first
    assert bucket_path
    assert result.job.id == high.id


def test_the_sweep_finishes_a_rekey_a_crash_interrupted(world, ctx, make_job, store):
    old = make_job("old", age_minutes=60)
    died_before_rekeying(ctx, store, {"priority": 100})
    assert sweep.rekeys(ctx) == 1
    assert world.job(old).rank_key == scoring.rank_key(1, 0, old.created_at, scoring.Weights(priority=100))
    assert weight_registry.view(ctx, PRODUCT).to_doc()["rekeying"] is False
    # and claims are back on the fast path
    assert claim_recording(world)[1] is False


def claim_counted(world, **request):
    """A claim by a factory naming what it offers, and its store calls."""
    counting = store_port.CountingStore(world.store)
    ctx = Context(counting, world.clock, world.ctx.settings)
    result = claims.claim_next(ctx, claims.ClaimRequest("f1", PRODUCT, capabilities=[], **request))
    return result, sum(counting.calls.values())


def test_a_claim_reads_its_weights_from_the_queue_state_document_once_a_change_finished(world, ctx, make_job):
    # Given weights changed and re-keyed by a PUT
    make_job("old", age_minutes=60)
    high = make_job("high", priority="high")
    weight_registry.put(ctx, PRODUCT, scoring.WeightsPatch(priority=100))
    # When a factory claims, then claims again with nothing left
    taken, calls = claim_counted(world)
    claim_counted(world)
    nothing, nothing_calls = claim_counted(world)
    # Then it ranked with the new weights from the queue-state document's copy: three calls
    # (that document, the page, the take), and two for nothing; the weights document unread
    assert taken.job.id == high.id and calls == 3
    assert nothing.job is None and nothing_calls == 2


def test_a_copy_behind_the_last_change_counted_is_not_used_and_the_sweep_restamps_it(world, ctx, make_job, store):
    # Given a PUT that finished re-keying but died before stamping the copy for claims
    old = make_job("old", age_minutes=60)
    high = make_job("high", priority="high")
    change = queue_state.count_weight_change(ctx, PRODUCT)
    store.upsert("jobs", {"id": weight_registry.DOC_ID, "productId": PRODUCT, "weights": {"priority": 100}, "rekeying": True, "change": change})
    weight_registry._rekey_pass(ctx, PRODUCT, scoring.resolve(scoring.WeightsPatch(priority=100)))
    store.upsert("jobs", {"id": weight_registry.DOC_ID, "productId": PRODUCT, "weights": {"priority": 100}, "rekeying": False, "change": change})
    assert queue_state.claim_weights(queue_state.read_doc(ctx, PRODUCT)) is None  # the copy is of change 0
    # When a factory claims, it reads the weights document too, and ranks with the new weights
    taken, calls = claim_counted(world)
    assert taken.job.id == high.id and calls == 4
    # And once the sweep ran, the copy is of that change and a claim is three calls again
    assert sweep.run(ctx)["claimWeightsStamped"] == 1
    assert queue_state.claim_weights(queue_state.read_doc(ctx, PRODUCT)) == ({"priority": 100.0}, change)
    again, again_calls = claim_counted(world)
    assert again.job.id == old.id and again_calls == 3
    assert sweep.run(ctx)["claimWeightsStamped"] == 0


def test_a_change_counted_but_never_written_is_closed_by_the_sweep(world, ctx, make_job):
    # Given weights set, then a PUT that counted its change and stopped before writing it
    make_job("old", age_minutes=60)
    high = make_job("high", priority="high")
    weight_registry.put(ctx, PRODUCT, scoring.WeightsPatch(priority=100))
    queue_state.count_weight_change(ctx, PRODUCT)
    # When a factory claims, it reads the weights document too (the copy is behind the count)
    assert claim_counted(world)[1] == 4
    # Then the sweep writes the weights as they are under that count and stamps them
    assert sweep.run(ctx)["claimWeightsStamped"] == 1
    assert weight_registry.read_doc(ctx, PRODUCT)[weight_registry.CHANGE] == queue_state.weight_changes(queue_state.read_doc(ctx, PRODUCT))
    taken, calls = claim_counted(world)
    assert calls == 3 and taken.job.idempotency_key == "old"  # "high" went first, with the weights as set
    assert world.job(high).stage.value == "assigned"
    # and a later PUT still counts, writes and finishes its change
    weight_registry.put(ctx, PRODUCT, scoring.WeightsPatch(age=2))
    assert weight_registry.view(ctx, PRODUCT).weights == {"priority": 100.0, "age": 2.0}
    assert queue_state.claim_weights(queue_state.read_doc(ctx, PRODUCT))[0] == {"priority": 100.0, "age": 2.0}


def test_a_put_overtaken_by_the_sweep_closing_its_count_counts_again(world, ctx, monkeypatch):
    # Given a PUT whose count the sweep closes before the PUT writes its weights under it
    real = queue_state.count_weight_change

    def counted_then_closed(ctx_, product_id):
        count = real(ctx_, product_id)
        if count == 1:
            weight_registry.restamp(ctx)
        return count

    monkeypatch.setattr(queue_state, "count_weight_change", counted_then_closed)
    # When it goes on, it finds itself overtaken, counts again and writes under the new count
    weight_registry.put(ctx, PRODUCT, scoring.WeightsPatch(priority=7))
    doc, queue = weight_registry.read_doc(ctx, PRODUCT), queue_state.read_doc(ctx, PRODUCT)
    assert (doc["weights"], doc[weight_registry.CHANGE], queue_state.weight_changes(queue)) == ({"priority": 7.0}, 2, 2)
    assert queue_state.claim_weights(queue) == ({"priority": 7.0}, 2)


def test_the_copy_a_queue_state_document_starts_with_is_checked_against_older_weights(world, ctx, make_job, store):
    # Given a weights document from before weight changes were counted (change 0), and no
    # queue-state document yet: the first submit makes one, copying the defaults
    store.upsert("jobs", {"id": weight_registry.DOC_ID, "productId": PRODUCT, "weights": {"priority": 100}, "rekeying": False})
    make_job("old", age_minutes=60)
    queue_state.bump(ctx, PRODUCT)
    assert queue_state.unchecked(queue_state.read_doc(ctx, PRODUCT))
    # When the sweep runs, Then the copy is the weights document's
    assert sweep.run(ctx)["claimWeightsStamped"] == 1
    copy = queue_state.read_doc(ctx, PRODUCT)
    assert not queue_state.unchecked(copy) and queue_state.claim_weights(copy) == ({"priority": 100.0}, 0)
    assert sweep.run(ctx)["claimWeightsStamped"] == 0


def test_a_late_stamp_of_an_older_change_is_not_used(world, ctx, make_job):
    # Given two weight changes, the first one's stamp landing after the second's
    make_job("old", age_minutes=60)
    high = make_job("high", priority="high")
    weight_registry.put(ctx, PRODUCT, scoring.WeightsPatch(priority=5))
    first = queue_state.claim_weights(queue_state.read_doc(ctx, PRODUCT))
    weight_registry.put(ctx, PRODUCT, scoring.WeightsPatch(priority=100))
    queue_state.stamp_claim_weights(ctx, PRODUCT, *first)
    # When a factory claims, it does not rank with the older weights (which pick "old")
    taken, calls = claim_counted(world)
    assert taken.job.id == high.id and calls == 4


def test_a_request_override_of_the_order_takes_the_bucket_path(world, make_job):
    make_job("old", age_minutes=60)  # defaults: 70; with age 0: 10
    high = make_job("high", priority="high")  # defaults: 20; with age 0: 20
    result, bucket_path = claim_recording(world, weights=scoring.WeightsPatch(age=0))
    assert bucket_path
    assert result.job.id == high.id


def test_a_request_override_of_the_capability_weight_alone_keeps_the_fast_path(world, make_job):
    make_job("old", age_minutes=60)
    result, bucket_path = claim_recording(world, weights=scoring.WeightsPatch(capabilities=50))
    assert not bucket_path
    assert result.job.idempotency_key == "old"


def test_a_request_restoring_the_age_weight_overrides_the_product(world, ctx, make_job, clock):
    weight_registry.put(ctx, PRODUCT, scoring.WeightsPatch(age=0, priority=10))
    old = make_job("old", age_minutes=600, weights=scoring.Weights(age=0))
    make_job("high", priority="high", age_minutes=1, weights=scoring.Weights(age=0))
    # age from the request (1), priority from the product (10): 600 + 10 = 610 beats 1 + 20 = 21
    result, _ = claim_recording(world, weights=scoring.WeightsPatch(age=1))
    assert result.job.id == old.id


@pytest.mark.parametrize(
    "body",
    [{"age": "fast"}, {"age": float("inf")}, {"priority": 2e6}, {"speed": 1}],
)
def test_weight_bodies_are_validated(body):
    with pytest.raises(pydantic.ValidationError):
        WeightsBody.model_validate(body)


def test_a_job_requeued_during_a_weight_change_is_keyed_with_the_new_weights():
    with open_world(Settings(claim_page=1)) as world:
        # Given a fresh high-priority job being built, and two normal jobs waiting
        running = world.running_job("high", priority="high")  # new weights: 0 + 100*2 = 200
        world.make_job("b", age_minutes=30)  # new weights: 30 + 100*1 = 130
        world.make_job("c", age_minutes=20)  # new weights: 20 + 100*1 = 120

        # When the factory gives the high job back while an operator raises the priority weight
        # (the PUT lands after the release read the weights, before it wrote the job)
        put = lambda: weight_registry.put(world.ctx, PRODUCT, scoring.WeightsPatch(priority=100))  # noqa: E731
        is_the_job = lambda container, pk, id: id == job_id(PRODUCT, "high")  # noqa: E731
        leases.release(
            interleaved(world, "read", put, when=is_the_job), running.id, ReleaseBody(lease_id=running.lease.lease_id)
        )

        # Then a claim takes it first (200 beats 130 and 120)
        assert world.claim("factory-2").job.id == running.id


# Claims rank with the weights their process remembers


def changed_elsewhere(world, weights: dict[str, float], rekey: bool) -> None:
    """Another process's weight change, unseen by this one: the registry entry written (and,
    `rekey`, every queued job re-keyed and the change finished), straight to the store."""
    raw = world.store.inner
    resolved = scoring.resolve(scoring.WeightsPatch(**weights))
    doc = {"id": weight_registry.DOC_ID, "productId": PRODUCT, "weights": weights, "rekeying": not rekey, "change": 1}
    raw.upsert("jobs", doc)
    if rekey:
        queued = store_port.Query("jobs", PRODUCT, (store_port.Filter("stage", "=", "queued"),))
        for found in list(store_port.query_all(raw, queued)):
            job = Job.from_doc(found)
            key = scoring.rank_key(job.priority.order, job.attempts, job.created_at, resolved)
            raw.replace("jobs", {**found, "rankKey": key}, found["_etag"])


def counted(world) -> Context:
    """`world`'s process, its store calls counted from now (the same store: the same remembered
    weights). Its claims name what they offer, so no factory document is read."""
    world.store.reset()
    return world.ctx


@pytest.mark.settings(testing.world_settings(claim_weights_seconds=5))
def test_a_claim_remembering_the_weights_is_two_store_calls_once_its_process_knows_them(world, make_job):
    for i in range(5):
        make_job(f"job-{i}", age_minutes=i)
    # The first claim of a process reads the weights: 3 calls
    counted(world)
    world.claim("factory-1", capabilities=[])
    assert world.store.total() == 3
    # then the candidate page and the pick taken by its head
    counted(world)
    world.claim("factory-2", capabilities=[])
    assert dict(world.store.calls) == {"query:jobs": 1, "patch:jobs": 1}


def test_with_no_remembering_every_claim_reads_the_weights_and_is_three_store_calls():
    with open_world(Settings(claim_weights_seconds=0)) as world:
        for i in range(3):
            world.make_job(f"job-{i}", age_minutes=i)
        for factory in ("factory-1", "factory-2"):
            counted(world)
            world.claim(factory, capabilities=[])
            assert dict(world.store.calls) == {"read:jobs": 1, "query:jobs": 1, "patch:jobs": 1}  # the weights


@pytest.mark.settings(testing.world_settings(claim_weights_seconds=5))
def test_a_weight_change_in_this_process_reaches_its_next_claim_at_once(world, ctx, make_job):
    # Given a claim that remembered the default weights
    make_job("old", age_minutes=60)
    make_job("older", age_minutes=61)
    high = make_job("high", priority="high")
    assert world.claim("factory-1", capabilities=[]).job.idempotency_key == "older"
    # When this process raises the priority weight, its clock not moving at all
    weight_registry.put(ctx, PRODUCT, scoring.WeightsPatch(priority=100))
    # Then the next claim ranks with it: 0 + 200 beats 60 + 100
    assert world.claim("factory-2", capabilities=[]).job.id == high.id


@pytest.mark.settings(testing.world_settings(claim_weights_seconds=5))
def test_a_weight_change_elsewhere_reaches_claims_as_soon_as_it_re_keys_a_job_they_read(world, make_job):
    # Given a claim that remembered the default weights
    make_job("old", age_minutes=60)
    make_job("older", age_minutes=61)
    high = make_job("high", priority="high")
    assert world.claim("factory-1", capabilities=[]).job.idempotency_key == "older"
    # When another process raises the priority weight and re-keys the queue
    changed_elsewhere(world, {"priority": 100}, rekey=True)
    counted(world)
    # Then the next claim, though its weights are a second old, sees keys they do not give,
    # reads them again and ranks with the new ones
    assert world.claim("factory-2", capabilities=[]).job.id == high.id
    assert world.store.calls["read:jobs"] == 1  # the weights


@pytest.mark.settings(testing.world_settings(claim_weights_seconds=5))
def test_in_the_window_after_a_change_elsewhere_a_claim_takes_a_queued_job_of_the_old_order(world, make_job, clock):
    # Given a claim that remembered the default weights
    make_job("old", age_minutes=60)
    older = make_job("older", age_minutes=61)
    high = make_job("high", priority="high")
    assert world.claim("factory-1", capabilities=[]).job.idempotency_key == "older"
    # When another process has written new weights and not re-keyed a job yet
    changed_elsewhere(world, {"priority": 100}, rekey=False)
    # Then a claim within the window ranks by the weights it remembers: the old order's next,
    # queued and the factory's own, not the new order's best
    within = world.claim("factory-2", capabilities=[]).job
    assert within.idempotency_key == "old" and within.lease.factory_id == "factory-2"
    assert world.job(older).lease.factory_id == "factory-1"
    # and once they are older than the window, the next claim reads them again
    clock.advance(world.ctx.settings.claim_weights_seconds + 1)
    assert world.claim("factory-3", capabilities=[]).job.id == high.id


@pytest.mark.settings(testing.world_settings(claim_weights_seconds=5))
def test_a_read_that_answers_weights_older_than_remembered_ones_does_not_replace_them(world, ctx, make_job):
    # Given a read of the weights that answers them as set, and a PUT of this process that
    # lands after the store answered it and before the reader remembers what it read
    weight_registry.put(ctx, PRODUCT, scoring.WeightsPatch(priority=20))
    put = lambda: weight_registry.put(ctx, PRODUCT, scoring.WeightsPatch(priority=100))  # noqa: E731
    world.store.meanwhile("read", "jobs", put, when=lambda container, pk, id: id == weight_registry.DOC_ID)
    assert weight_registry.snapshot(ctx, PRODUCT).weights.priority == 20
    # Then what claims remember is the PUT's
    remembered = weight_registry.for_claim(ctx, PRODUCT, ctx.settings.claim_weights_seconds)
    assert not remembered.read_now and remembered.snapshot.weights.priority == 100
