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
