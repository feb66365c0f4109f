"""A claim taken by its head (`claims._take_head`) stores what a claim decided on the whole job
(`claims._claimed`) would, but for the rings its append may leave one over until the next write."""
from __future__ import annotations

import pytest

from fleet import claims, errors, store as store_port
from fleet.jobs import RUN_RING, Job, Run
from fleet.stages import RunResult
from fleet.testing import PRODUCT, world_settings

BUDGETS = pytest.mark.settings(world_settings(budgets=True))


def stored(world, job: Job) -> dict:
    return world.store.inner.read("jobs", PRODUCT, job.id)


def as_a_whole_claim_would_store(world, before: dict, after: dict) -> dict:
    """The document `claims._claimed` decides on the whole job `before`, under the lease and
    reservation the head take wrote (lease ids are random)."""
    lease = Job.from_doc(after).lease
    reserved = Job.from_doc(after).runs[-1].reservation is not None
    now = Job.from_doc(after).updated_at
    return claims._claimed(Job.from_doc(before), claims._Taking(lease, reserved, None), now).to_doc()


def comparable(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if not k.startswith("_")}


def seeded(world, job: Job, **doc_changes) -> dict:
    doc = {**stored(world, job), **doc_changes}
    for name in [k for k, v in doc_changes.items() if v is None]:
        del doc[name]
    return world.store.inner.replace("jobs", doc, doc["_etag"])


@BUDGETS
@pytest.mark.parametrize(
    "case",
    ["plain", "estimated", "epoch absent", "requeued after a preemption", "accrual pending"],
)
def test_a_claim_by_its_head_stores_what_a_whole_claim_would(world, make_job, case):
    world.put_budget(100.0)
    fields = {"estimated_cost_usd": 2.5} if case != "plain" else {}
    job = make_job("job", **fields)
    if case == "epoch absent":
        seeded(world, job, leaseEpoch=None)
    if case == "requeued after a preemption":
        run = Run(run_id=f"{job.id}#3", factory_id="f-old", started_at=job.created_at, ended_at=job.created_at,
                  result=RunResult.PREEMPTED, accrued=True)
        seeded(world, job, leaseEpoch=3, runs=[run.to_doc()])
    if case == "accrual pending":
        run = Run(run_id=f"{job.id}#1", factory_id="f-old", started_at=job.created_at, ended_at=job.created_at,
                  result=RunResult.RELEASED, insights={"costUsd": 1.25})
        seeded(world, job, leaseEpoch=1, runs=[run.to_doc()], accrualPending=True)
    before = stored(world, job)
    spent_before = world.stored_budget().to_doc()

    claimed = world.claim("factory-1", capabilities=[])

    assert claimed.job is not None and claimed.job.id == job.id
    after = stored(world, job)
    expected = as_a_whole_claim_would_store(world, before, after)
    if case == "accrual pending":
        # the accrual follow-up marks the ended run and clears the flag, once
        expected["accrualPending"] = False
        expected["runs"][0]["accrued"] = True
        assert world.stored_budget().to_doc() != spent_before
    assert comparable(after) == comparable(expected)
    assert claimed.job.to_doc() == Job.from_doc(after).to_doc() and claimed.job.etag == after["_etag"]
    lease = Job.from_doc(after).lease
    assert lease.epoch == (before.get("leaseEpoch") or 0) + 1
    reservation = Job.from_doc(after).runs[-1].reservation
    assert (reservation == lease.lease_id) == (case != "plain")


def test_a_runs_ring_a_claim_by_head_overfills_is_trimmed_by_the_next_write(world, make_job):
    # Given a queued job whose runs ring is full
    job = make_job("job")
    runs = [
        Run(run_id=f"{job.id}#{i}", factory_id="f", started_at=job.created_at, ended_at=job.created_at,
            result=RunResult.RELEASED, accrued=True).to_doc()
        for i in range(1, RUN_RING + 1)
    ]
    seeded(world, job, runs=runs, leaseEpoch=RUN_RING)
    # When a factory claims it by its head, the ring holds one run more; and its next write
    # trims it, counting the run dropped, as a claim decided on the whole job would have
    claimed = world.claim("factory-1", capabilities=[]).job
    assert len(stored(world, job)["runs"]) == RUN_RING + 1
    world.patch(claimed, "building")
    after = Job.from_doc(stored(world, job))
    assert (len(after.runs), after.runs_dropped) == (RUN_RING, 1)
    assert after.runs[-1].run_id == f"{job.id}#{RUN_RING + 1}"


def test_a_job_claimed_and_given_back_many_times_keeps_its_runs_ring(world, make_job):
    job = make_job("job")
    for _ in range(RUN_RING + 5):
        claimed = world.claim("factory-1", capabilities=[]).job
        assert claimed is not None
        world.release(claimed)
    after = Job.from_doc(stored(world, job))
    assert len(after.runs) <= RUN_RING + 1
    assert len(after.runs) + after.runs_dropped == RUN_RING + 5


@BUDGETS
def test_a_claim_by_head_that_loses_its_race_reserves_only_for_the_job_it_takes(world, make_job):
    # Given two estimated jobs, and a rival that takes the best right after our page was read
    world.put_budget(100.0)
    best = make_job("best", priority="critical", estimated_cost_usd=5.0)
    make_job("next", priority="high", estimated_cost_usd=3.0)
    rival = lambda: claims.take(world.ctx, world.job(best), "factory-rival", world.clock.now())  # noqa: E731
    world.store.meanwhile("query", "jobs", rival)
    version = world.version()
    # When we claim, we lose the best at the take (before reserving anything), and take the next
    claimed = world.claim("factory-1", capabilities=[]).job
    # Then only the next job's reservation is held, under our lease
    held = world.stored_budget().reservations
    assert list(held) == [claimed.lease.lease_id] and held[claimed.lease.lease_id]["amountUsd"] == 3.0
    # and the lost race gave nothing back, so it moved no queue-state
    assert world.version() == version


@BUDGETS
def test_a_claim_by_head_whose_take_the_store_refuses_reserves_nothing(world, make_job):
    # Given an estimated job, and a store that fails the take
    world.put_budget(100.0)
    make_job("job", estimated_cost_usd=5.0)
    world.store.crash("patch", "jobs")
    # When we claim, the store's failure is the answer, and nothing is reserved: a claim
    # reserves once it holds its job
    with pytest.raises(errors.StoreBusy):
        world.claim("factory-1", capabilities=[])
    assert world.stored_budget().reservations == {}
    assert world.claim("factory-1", capabilities=[]).job is not None


@BUDGETS
@pytest.mark.parametrize("pending", [False, True])
def test_a_claim_by_head_bumps_no_activity_and_accrues_a_pending_run_once(world, make_job, pending):
    from fleet import activity

    world.put_budget(100.0)
    job = make_job("job", estimated_cost_usd=2.0)
    if pending:
        run = Run(run_id=f"{job.id}#1", factory_id="f-old", started_at=job.created_at, ended_at=job.created_at,
                  result=RunResult.RELEASED, insights={"costUsd": 1.25})
        seeded(world, job, leaseEpoch=1, runs=[run.to_doc()], accrualPending=True)
    version = activity.version(world.ctx)
    spent = world.stored_budget().spent_usd
    store = world.store
    store.reset()

    claimed = claims.claim_next(world.ctx, claims.ClaimRequest("factory-1", PRODUCT, [], None, None))

    assert activity.version(world.ctx) == version
    assert world.stored_budget().spent_usd == pytest.approx(spent + (1.25 if pending else 0.0))
    # the accrual marks the job once more; nothing else writes it
    assert store.calls["patch:jobs"] + store.calls["replace:jobs"] == (2 if pending else 1)
    assert claimed.job.accrual_pending is False and claimed.job.etag == stored(world, job)["_etag"]


def test_factories_racing_over_one_file_take_by_head_each_job_once_answered_as_stored(tmp_path):
    """Eight threads claim by head over one SQLite file (a pool of connections): no job is
    taken twice, and every claim's answer is the job as stored right after it."""
    import threading

    from fleet.testing import open_world

    with open_world(path=str(tmp_path / "fleet.db")) as world:
        jobs = [world.make_job(f"job-{i}", priority=["low", "normal", "high", "critical"][i % 4]) for i in range(40)]
        taken: list[str] = []
        problems: list[str] = []
        lock = threading.Lock()
        barrier = threading.Barrier(8)

        def factory(name: str) -> None:
            try:
                barrier.wait()
                while (claimed := world.claim(name, capabilities=[]).job) is not None:
                    doc = world.store.inner.read("jobs", PRODUCT, claimed.id)
                    if claimed.to_doc() != Job.from_doc(doc).to_doc() or claimed.etag != doc["_etag"]:
                        problems.append(f"{name}: answer of {claimed.id} is not as stored")
                    if claimed.lease.factory_id != name or len(claimed.runs) != 1:
                        problems.append(f"{name}: {claimed.id} answered with {claimed.lease} {claimed.runs}")
                    with lock:
                        taken.append(claimed.id)
            except Exception as exc:  # noqa: BLE001 - reported below, in the test's thread
                problems.append(f"{name}: {exc!r}")

        threads = [threading.Thread(target=factory, args=(f"factory-{n}",)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)

        assert problems == []
        assert sorted(taken) == sorted(job.id for job in jobs)
        for job in jobs:
            final = Job.from_doc(stored(world, job))
            assert final.lease_epoch == 1 and [r.run_id for r in final.runs] == [f"{job.id}#1"]
            assert [e.type for e in final.events].count("claimed") == 1


@BUDGETS
@pytest.mark.parametrize("missing", [("runs",), ("events",), ("runs", "events")], ids=["runs", "events", "both"])
def test_a_job_document_without_its_runs_or_events_is_claimed_whole(world, make_job, missing):
    # Given a queued, estimated job whose document lacks `runs`, `events` or both (an older
    # release's), which the take's appends cannot apply to
    world.put_budget(100.0)
    job = make_job("job", estimated_cost_usd=2.0)
    before = seeded(world, job, **{name: None for name in missing})
    kept_events = before.get("events", [])
    store = world.store
    store.reset()
    # When a factory claims
    claimed = world.claim("factory-1", capabilities=[])
    # Then it takes the job: the refused patch, then one read of the job (besides the
    # product's weights) and one write of it, the difference as a patch
    assert claimed.job is not None and claimed.job.id == job.id
    assert (store.calls["read:jobs"], store.calls["patch:jobs"], store.calls["replace:jobs"]) == (2, 2, 0)
    # answering the run and claim event, under the lease (and reservation) it took
    lease = claimed.lease
    assert claimed.run_id == f"{job.id}#1" and [r.run_id for r in claimed.job.runs] == [claimed.run_id]
    assert claimed.job.runs[-1].reservation == lease.lease_id
    assert claimed.job.events[-1].type == "claimed"
    assert [e.type for e in claimed.job.events][:-1] == [e["type"] for e in kept_events]
    # and it is stored so, its arrays whole again
    after = stored(world, job)
    assert Job.from_doc(after).to_doc() == claimed.job.to_doc() and after["_etag"] == claimed.job.etag
    assert [r["runId"] for r in after["runs"]] == [claimed.run_id] and after["events"][-1]["type"] == "claimed"
    assert list(world.stored_budget().reservations) == [lease.lease_id]


@BUDGETS
def test_a_job_without_runs_changed_before_its_whole_take_is_a_race_lost(world, make_job):
    # Given the best job lacking `runs`, and a rival that takes it right after our claim, its
    # patch refused, read it whole
    world.put_budget(100.0)
    best = make_job("best", priority="critical", estimated_cost_usd=5.0)
    make_job("next", priority="high", estimated_cost_usd=3.0)
    seeded(world, best, runs=None)
    rival = lambda: claims.take(world.ctx, world.job(best), "factory-rival", world.clock.now())  # noqa: E731
    world.store.meanwhile("read", "jobs", rival, when=lambda container, key, id: id == best.id)
    # When we claim, the whole take is conditional on the ETag the head was read with: it
    # loses to the rival, gives its reservation back and takes the next best
    claimed = world.claim("factory-1", capabilities=[]).job
    assert claimed.id != best.id
    assert Job.from_doc(stored(world, best)).lease.factory_id == "factory-rival"
    held = world.stored_budget().reservations
    assert claimed.lease.lease_id in held and held[claimed.lease.lease_id]["amountUsd"] == 3.0
    assert all(r["amountUsd"] != 5.0 or k != claimed.lease.lease_id for k, r in held.items())
