"""A process's memory of the jobs it last wrote or read (`writes.Recent`): a fenced write decides
on it first without reading, and trusts the decision only if it writes. Two coordinator
processes share one store here: each is a `Context` over its own store client."""
from __future__ import annotations

import gc
import json
from collections import Counter

import pytest

from fleet import actions, claims, errors, factories, leases, store as store_port, writes
from fleet.context import Context
from fleet.jobs import Job
from fleet.schemas import PatchBody, ReleaseBody
from fleet.stages import Stage

from fleet.testing import PRODUCT


class Process(store_port.CountingStore):
    """One coordinator process's store client: counts calls, and point reads per document."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.reads: Counter[str] = Counter()

    def read(self, container, partition_key, id):
        self.reads[id] += 1
        return super().read(container, partition_key, id)

    def reset(self) -> None:
        super().reset()
        self.reads.clear()


def process(world) -> Context:
    return Context(Process(world.observer.store), world.clock, world.ctx.settings)


def claim(ctx: Context, job: Job, factory: str = "factory-1") -> Job:
    return claims.claim_job(ctx, job.id, PRODUCT, claims.ClaimRequest(factory, PRODUCT)).job


def stored(world, job: Job) -> dict:
    return store_port.clean(world.observer.store.read("jobs", PRODUCT, job.id))


def test_the_process_that_wrote_the_job_last_writes_it_again_without_reading(world):
    # Given a job this process claimed
    a = process(world)
    job = claim(a, world.submit_job("job"))
    a.store.reset()
    # When its factory moves it through building and testing, and ships it
    lease = job.lease.lease_id
    answers = []
    for write in (
        lambda: leases.patch(a, job.id, PatchBody(lease_id=lease, stage="building", note="started")),
        lambda: leases.patch(a, job.id, PatchBody(lease_id=lease, stage="testing", insights={"costUsd": 1.5})),
        lambda: leases.release(a, job.id, ReleaseBody(lease_id=lease, stage="shipped", pr_url="https://x/pr/1")),
    ):
        answers.append(write())
        # what each answered is, field for field, the document as stored, with its ETag
        assert answers[-1].to_doc() == stored(world, job)
        assert answers[-1].etag == world.observer.store.read("jobs", PRODUCT, job.id)["_etag"]
    # Then no write read the job first, and each sent a patch
    assert a.store.reads[job.id] == 0
    assert (a.store.calls["patch:jobs"], a.store.calls["replace:jobs"]) == (3, 0)
    assert [answer.stage for answer in answers] == [Stage.BUILDING, Stage.TESTING, Stage.SHIPPED]


def test_a_write_on_an_out_of_date_memory_reads_the_job_and_decides_again(world):
    # Given process A remembers the running job, and process B took a note of its factory since
    a, b = process(world), process(world)
    job = world.running_job("job")
    writes.read(a, job.id)
    world.clock.advance(60)
    leases.patch(b, job.id, PatchBody(lease_id=job.lease.lease_id, stage="assigned", note="halfway"))
    renewed = world.job(job)
    a.store.reset()
    # When A takes the factory's PATCH
    patched = leases.patch(a, job.id, PatchBody(lease_id=job.lease.lease_id, stage="building"))
    # Then its write on the memory lost, it read the job and wrote again: B's write stands
    assert a.store.reads[job.id] == 1
    assert a.store.calls["patch:jobs"] == 2
    assert (patched.stage, world.job(job).stage) == (Stage.BUILDING, Stage.BUILDING)
    assert world.job(job).lease.expires_at == renewed.lease.expires_at
    assert any(e.detail.get("note") == "halfway" for e in world.job(job).events)
    # and A remembers the job as it now stands
    assert writes.recall(a, job.id).etag == patched.etag


def test_a_lease_another_process_revoked_is_lost_though_the_memory_holds_it(world):
    # Given process A claimed the job (and remembers it), and an operator on process B
    # requeued it since
    a, b = process(world), process(world)
    job = claim(a, world.submit_job("job"))
    actions.apply(b, job.id, actions.Action.REQUEUE)
    requeued = stored(world, job)
    a.store.reset()
    # When A takes the factory's PATCH under the lease it granted
    with pytest.raises(errors.LeaseLost):
        leases.patch(a, job.id, PatchBody(lease_id=job.lease.lease_id, stage="building"))
    # Then the refusal came from the job as stored, and nothing changed
    assert a.store.reads[job.id] == 1
    assert stored(world, job) == requeued
    assert world.job(job).stage == Stage.QUEUED


def test_a_lease_the_memory_does_not_know_is_checked_on_the_job_as_stored(world):
    # Given process A remembers the job queued, and process B claimed it since
    a, b = process(world), process(world)
    job = world.submit_job("job")
    writes.read(a, job.id)
    held = claim(b, job)
    a.store.reset()
    # When A takes a PATCH under B's lease
    patched = leases.patch(a, job.id, PatchBody(lease_id=held.lease.lease_id, stage="building"))
    # Then the memory's "lease lost" was not trusted: A read the job and the write landed
    assert a.store.reads[job.id] == 1
    assert a.store.calls["patch:jobs"] == 1  # the decision on the memory wrote nothing
    assert (patched.stage, patched.lease.lease_id) == (Stage.BUILDING, held.lease.lease_id)


def test_a_repeat_found_in_the_memory_is_answered_with_the_job_as_stored(world):
    # Given process A released the job (and remembers it so), and process B let another
    # factory claim and build it since
    a, b = process(world), process(world)
    job = claim(a, world.submit_job("job"))
    body = ReleaseBody(lease_id=job.lease.lease_id)
    leases.release(a, job.id, body)
    again = claim(b, job, "factory-2")
    leases.patch(b, job.id, PatchBody(lease_id=again.lease.lease_id, stage="building"))
    a.store.reset()
    # When the first factory's release is retried (its answer was lost) on A
    answered = leases.release(a, job.id, body)
    # Then it changes nothing, and is answered with the job as it stands, not as A remembered it
    assert (answered.stage, answered.lease.lease_id) == (Stage.BUILDING, again.lease.lease_id)
    assert answered.etag == world.observer.store.read("jobs", PRODUCT, job.id)["_etag"]
    assert a.store.reads[job.id] == 1


def test_a_process_remembers_at_most_its_bound_the_least_recently_used_forgotten(world, monkeypatch):
    monkeypatch.setattr(writes, "RECENT_JOBS", 5)
    a = process(world)
    jobs = [world.submit_job(f"job-{n}") for n in range(8)]
    for job in jobs:
        writes.read(a, job.id)
        writes.recall(a, jobs[0].id)  # kept in use
        assert len(writes.recent(a)) <= 5
    assert len(writes.recent(a)) == 5
    remembered = [job.idempotency_key for job in jobs if writes.recall(a, job.id) is not None]
    assert remembered == ["job-0", "job-4", "job-5", "job-6", "job-7"]


def test_the_memory_is_per_store_and_goes_with_it(world):
    a, b = process(world), process(world)
    job = world.submit_job("job")
    writes.read(a, job.id)
    assert writes.recall(b, job.id) is None
    key = id(a.store)
    del a
    gc.collect()
    assert key not in writes._RECENT


def test_a_job_that_is_gone_is_forgotten(world):
    a = process(world)
    job = world.submit_job("job")
    writes.read(a, job.id)
    world.observer.store.delete("jobs", PRODUCT, job.id)
    with pytest.raises(errors.NotFound):
        writes.read(a, job.id)
    assert writes.recall(a, job.id) is None


def doc(n: int, body: str = "") -> dict:
    return {"productId": PRODUCT, "id": f"{PRODUCT}:{n}", "_etag": "e", "bodyMd": body}


def test_the_bound_drops_the_least_recently_used():
    memory = writes.Recent(bound=2, budget=1 << 20)
    for n in range(3):
        memory.put(doc(n))
        memory.get(PRODUCT, f"{PRODUCT}:0")
    assert len(memory) == 2
    assert memory.get(PRODUCT, f"{PRODUCT}:1") is None
    assert memory.get(PRODUCT, f"{PRODUCT}:0") is not None


def test_the_byte_budget_bounds_the_memory_whatever_the_documents_weigh():
    memory = writes.Recent(bound=100, budget=16_000)
    for n in range(20):
        memory.put(doc(n, "x" * 900))
        memory.put(doc(n, "x" * 900))  # a document written again is counted once
        assert memory.bytes <= 16_000
    assert 10 <= len(memory) < 20
    assert memory.get(PRODUCT, f"{PRODUCT}:19") is not None
    # a document over a sixteenth of the budget is not kept, and takes its older copy with it
    memory.put(doc(19, "x" * 1100))
    assert memory.get(PRODUCT, f"{PRODUCT}:19") is None
    memory.forget(PRODUCT, f"{PRODUCT}:18")
    kept = [n for n in range(20) if memory.get(PRODUCT, f"{PRODUCT}:{n}") is not None]
    assert memory.bytes == sum(len(json.dumps(doc(n, "x" * 900), separators=(",", ":"))) for n in kept)
