"""Queue-state: the per-product version an idle factory polls instead of claiming. It moves
whenever a job may have become claimable, and only then."""
from __future__ import annotations

import pytest

from fleet import actions, clock as clock_mod, factories, queue_state, scoring, store as store_port, sweep
from fleet import weight_registry
from fleet.context import Context
from fleet.stages import Stage

from fleet.testing import LEASE_SECONDS, PRODUCT, flags_on


def test_a_product_never_seen_is_at_version_zero(ctx):
    assert queue_state.read(ctx, "never-seen").to_doc() == {"productId": "never-seen", "version": 0, "updatedAt": None}


def test_reading_it_is_one_point_read(world):
    world.submit_job("job")
    counting = store_port.CountingStore(world.store)
    queue_state.read(Context(counting, world.clock, world.ctx.settings), PRODUCT)
    assert dict(counting.calls) == {"read:jobs": 1}


def test_a_bump_stamps_the_time(world, ctx, clock):
    world.submit_job("job")
    clock.advance(42)
    queue_state.bump(ctx, PRODUCT)
    assert queue_state.read(ctx, PRODUCT).to_doc() == {
        "productId": PRODUCT,
        "version": 2,
        "updatedAt": clock_mod.format(clock.now()),
    }


def test_versions_are_per_product(world):
    world.submit_job("a", product_id="alpha")
    world.submit_job("b", product_id="alpha")
    world.submit_job("c", product_id="beta")
    assert (world.version("alpha"), world.version("beta"), world.version("gamma")) == (2, 1, 0)


@pytest.mark.settings(flags_on())
def test_a_lost_queue_state_bump_is_repaired_by_the_next_sweep(world, clock, faulty):
    # Regression: a queue-state bump the store refused used to be lost for good.
    # Given the sweep has been running
    sweep.run(world.ctx)
    version = world.version()
    # When a job is queued but the store refuses its queue-state bump
    clock.advance(60)
    faulty.crash("increment", "jobs")
    job = world.submit_job("lost-bump")
    assert faulty.crashed == ["increment:jobs"]
    assert (world.job(job).stage, world.version()) == (Stage.QUEUED, version)  # the submit stands
    # Then the next sweep bumps the queue-state, so gated factories look again
    clock.advance(60)
    assert sweep.run(world.ctx)["bumped"] == 1
    assert world.version() == version + 1
    # and only once: the version is no longer behind its newest queued job
    clock.advance(60)
    assert sweep.run(world.ctx)["bumped"] == 0
    assert world.version() == version + 1


# What moves it: every way a job may become claimable. Each step starts from the same world:
# a running job ("running", building, factory-1) and a blocked one waiting on "dep" (testing).


def submit(world):
    world.submit_job("fresh")


def unblock(world):
    world.patch(world.dep, "shipped")


def retry_waited_out(world):
    world.release(world.running, result="retry")
    world.wait_out_retry(world.running)  # the sweep moves it back: claimable now


def retry_waiting(world):
    world.release(world.running, result="retry")  # waiting out its backoff: not claimable yet
    world.clock.advance(1)
    sweep.due_retries(world.ctx)


def give_back(world):
    world.release(world.running)


def requeue(world):
    actions.apply(world.ctx, world.running.id, actions.Action.REQUEUE)


def requeue_terminal(world):
    world.release(world.running, stage="failed")
    actions.apply(world.ctx, world.running.id, actions.Action.REQUEUE)


def expiry(world):
    world.clock.advance(LEASE_SECONDS + 1)
    sweep.expired_leases(world.ctx)


def weight_change(world):
    weight_registry.put(world.ctx, PRODUCT, scoring.WeightsPatch(age=2))


# What does not: work on jobs that stay unclaimable.


def claim(world):
    world.submit_job("claimable")
    before = world.version()
    world.claim("factory-2")
    assert world.version() == before


def patch(world):
    world.patch(world.running, "review", note="progress")


def heartbeat(world):
    world.clock.advance(60)
    factories.heartbeat(world.ctx, "factory-1", [PRODUCT], [], None, [(world.running.id, world.running.lease.lease_id)])


def park(world):
    world.release(world.running, stage="testing")


def ship(world):
    actions.apply(world.ctx, world.running.id, actions.Action.SHIP)


def finish_without_dependents(world):
    world.release(world.running, stage="done")


def cancel(world):
    actions.apply(world.ctx, world.running.id, actions.Action.CANCEL)


def dead_letter(world):
    world.release(world.retried_out, result="retry")


def sweep_with_nothing_to_do(world):
    world.clock.advance(LEASE_SECONDS - 1)
    sweep.run(world.ctx)


def listing_and_reading(world):
    world.job(world.running)
    queue_state.read(world.ctx, PRODUCT)


@pytest.mark.parametrize(
    "step, bumps",
    [
        (submit, 1),
        (unblock, 1),
        (retry_waited_out, 1),
        (retry_waiting, 0),
        (give_back, 1),
        (requeue, 1),
        (requeue_terminal, 1),  # failed (0), then requeued (1)
        (expiry, 2),  # "running" and "dep" back to the queue (1 + 1); "last-chance" dead-letters (0)
        (weight_change, 1),
        (claim, 1),  # the submit of "claimable" (1); the claim itself (0)
        (patch, 0),
        (heartbeat, 0),
        (park, 0),
        (ship, 0),
        (finish_without_dependents, 0),
        (cancel, 0),
        (dead_letter, 0),
        (sweep_with_nothing_to_do, 0),
        (listing_and_reading, 0),
    ],
    ids=lambda v: v.__name__ if callable(v) else None,
)
def test_the_version_moves_when_and_only_when_a_job_may_have_become_claimable(world, running_job, submit_job, make_job, step, bumps):
    # Given a running job, a job waiting on a dep in testing, and a job on its last attempt
    world.running = running_job("running", stage="building", factory="factory-1")
    world.dep = running_job("dep", stage="testing", factory="factory-3")
    submit_job("waiting", deps=["dep"])
    make_job("last-chance", attempts=2, max_attempts=3, stage="queued")
    world.retried_out = world.claim("factory-4").job
    assert world.retried_out.idempotency_key == "last-chance"
    before = world.version()
    # When the step happens
    step(world)
    # Then the version moved by exactly this much
    assert world.version() == before + bumps
