"""The one write path for jobs: every job document in `fleet/` is written by `fleet/writes.py`
(use cases through `effects.change`/`effects.create`, which then settle the follow-ups); the
facts a decision needs are read once, before the write, and a lost race re-reads only the job;
the outcome says what was written and what followed; backoffs pause through the clock seam.

Which writes are job writes: every create, replace, upsert or delete of a document in the
`jobs` container whose id is a job id (`{productId}:{h}`). The container's reserved documents
are written by their own modules only: `queue-state` by `queue_state` (atomic increments),
`weights` by `weight_registry` (its own CAS), the `_fleet` sweep record by `outage` (upsert).
"""
from __future__ import annotations

import ast
import inspect
import pathlib
import time
from collections import Counter

import pytest

from fleet import actions, claims, dag, effects, errors, factories, leases, review, scoring, submit, sweep
from fleet import queue_state, store as store_port, weight_registry, writes
from fleet.budget_rules import Window
from fleet import budgets
from fleet.clock import FixedClock
from fleet.context import Context, Settings
from fleet.jobs import Job, product_of
from fleet.schemas import ChildSpec, JobSpec, PatchBody, ReleaseBody
from fleet.stages import Stage

from fleet.testing import LEASE_SECONDS, PRODUCT, open_world

FLEET = pathlib.Path(inspect.getfile(writes)).parent
#: Store primitives that write, by how many leading arguments name the document's place.
WRITES = {"create", "replace", "patch", "upsert", "delete", "increment"}
#: The reserved documents of the jobs container, and the one module each may be written by.
RESERVED = {
    "queue_state.py": {"DOC_ID"},
    "weight_registry.py": {"DOC_ID"},
    "outage.py": {"STATE_ID"},
    "activity.py": {"_day_id"},  # the day rollups, which hold the activity version
}


# Statically: no module but writes.py names the jobs container in a store write


def store_writes(tree: ast.AST):
    """Each call in `tree` of a store's write primitive (`ctx.store.replace(...)`) or of the
    port's shared CAS loop and write (`store.update(...)`, `store.swap(...)`,
    `store.write(...)`), with the argument naming its container and the rest."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name, args, receiver = node.func.attr, node.args, node.func.value
        if isinstance(receiver, ast.Attribute) and receiver.attr == "store" and name in WRITES and args:
            yield node, args[0], args[1:]
        elif isinstance(receiver, ast.Name) and receiver.id in ("store", "store_port") and name in ("update", "swap", "write"):
            yield node, args[1] if len(args) > 1 else None, args[2:]


def reserved_id(module: str, call: ast.Call, rest: list[ast.expr]) -> bool:
    """Whether a jobs-container write in `module` names that module's reserved document: its
    id is one of the module's constants (an argument, or the `id` of the document literal written)."""
    constants = RESERVED.get(module, set())
    names = {n.id for arg in rest for n in ast.walk(arg) if isinstance(n, ast.Name)}
    return bool(constants & names)


@pytest.mark.parametrize("path", sorted(FLEET.glob("*.py")), ids=lambda p: p.name)
def test_only_writes_py_writes_job_documents(path):
    if path.name in ("writes.py", "store.py", "testing.py"):  # the write path, the port's own loops, and
        return  # the test world, which seeds job documents as a test needs them
    for call, container, rest in store_writes(ast.parse(path.read_text())):
        # Every store write names its container as a literal, so this scan can see it
        assert isinstance(container, ast.Constant), f"{path.name}:{call.lineno} names its container indirectly"
        if container.value == "jobs":
            assert reserved_id(path.name, call, rest), f"{path.name}:{call.lineno} writes a job document"


def test_the_scan_sees_the_writes_it_guards_against():
    # The shapes the job writes had before the write path, caught by the scan
    before = ast.parse(
        "ctx.store.replace('jobs', doc, etag)\n"
        "ctx.store.create('jobs', job.to_doc())\n"
        "store.update(ctx.store, 'jobs', product_id, job.id, decide)\n"
    )
    caught = [c for c, container, rest in store_writes(before) if container.value == "jobs" and not reserved_id("deps.py", c, rest)]
    assert len(caught) == 3


# At run time: every use case, its job writes made from writes.py


class WriterRecorder(store_port.CountingStore):
    """Records, for every write of a job document, the fleet module that called the store."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.writers: Counter[str] = Counter()

    def _note(self, container: str, id: str) -> None:
        if container != "jobs" or product_of(id) is None:
            return
        frame = inspect.currentframe()
        while frame is not None:
            path = pathlib.Path(frame.f_code.co_filename)
            if path.parent == FLEET and path.name != "store.py":
                self.writers[path.name] += 1
                return
            frame = frame.f_back
        self.writers["(outside fleet)"] += 1

    def create(self, container, doc):
        self._note(container, doc["id"])
        return super().create(container, doc)

    def replace(self, container, doc, etag):
        self._note(container, doc["id"])
        return super().replace(container, doc, etag)

    def patch(self, container, partition_key, id, ops, etag, answer=False):
        self._note(container, id)
        return super().patch(container, partition_key, id, ops, etag, answer)

    def upsert(self, container, doc):
        self._note(container, doc["id"])
        return super().upsert(container, doc)


def every_use_case(ctx: Context, clock: FixedClock) -> None:
    """Each use case that writes jobs, once or more, over a budget and with preemption on."""
    budgets.put(ctx, PRODUCT, 100.0, Window.MONTHLY)
    keys = iter(range(1000))

    def new(**fields) -> Job:
        return submit.submit(ctx, JobSpec(product_id=PRODUCT, idempotency_key=f"k{next(keys)}", **fields)).job

    def held(factory: str = "f1", **fields) -> Job:
        job = new(**fields)
        return claims.claim_job(ctx, job.id, PRODUCT, claims.ClaimRequest(factory, PRODUCT, [], None, 4)).job

    def release(job: Job, **body) -> Job:
        return leases.release(ctx, job.id, ReleaseBody(lease_id=job.lease.lease_id, **body))

    gate = new()
    waiting = new(deps=[gate.idempotency_key])
    running = held(estimated_cost_usd=1.0)
    leases.patch(ctx, running.id, PatchBody(lease_id=running.lease.lease_id, stage="building"))
    release(running, result="retry", insights={"costUsd": 0.5})
    release(held(), stage="testing")
    release(held())
    gated = claims.claim_job(ctx, gate.id, PRODUCT, claims.ClaimRequest("f1", PRODUCT, [], None, 4)).job
    release(gated, stage="shipped", insights={"costUsd": 0.25})  # unblocks `waiting`
    factories.heartbeat(ctx, "f1", [PRODUCT], [], 4, [])
    victim = held("f9", priority="low")
    factories.heartbeat(ctx, "f9", [PRODUCT], [], 1, [(victim.id, victim.lease.lease_id)])
    new(priority="critical")
    claims.claim_next(ctx, claims.ClaimRequest("f9", PRODUCT, [], None, 1))  # preempts
    parked = release(held(), stage="testing")
    review.request(ctx, parked.id, 1, None)
    review.decide(ctx, parked.id, "ann", approve=False)
    for action in actions.Action:
        actions.apply(ctx, held().id, action)
    parent = dag.submit_composite(ctx, JobSpec(product_id=PRODUCT, idempotency_key="parent", children=[ChildSpec(idempotency_key="c1")]))
    dag.add_children(ctx, parent.job.id, [ChildSpec(idempotency_key="c2")])
    actions.apply(ctx, parent.job.id, actions.Action.CANCEL)
    weight_registry.put(ctx, PRODUCT, scoring.WeightsPatch(age=3))
    held("f5")
    clock.advance(LEASE_SECONDS + 1)
    sweep.run(ctx)  # expires, re-checks, replays
    held("f6")
    clock.advance(LEASE_SECONDS + ctx.settings.outage_grace_seconds + 1)
    sweep.run(ctx)  # spares the lease that expired in the gap


def test_every_job_write_of_every_use_case_is_made_by_writes_py(world):
    recorder = WriterRecorder(world.store)
    ctx = Context(recorder, world.clock, Settings(lease_seconds=LEASE_SECONDS, budgets=True, preemption=True))
    every_use_case(ctx, world.clock)
    assert set(recorder.writers) == {"writes.py"}
    assert recorder.writers["writes.py"] > 40  # (the scenario really wrote)


# Facts before the write; a lost race re-reads only the job


class DocumentReads(store_port.CountingStore):
    """Counts point reads per document; runs `then()` once, right after the first read of
    `id` (another process acting between the use case's read and its write)."""

    def __init__(self, inner, id: str | None = None, then=lambda: None) -> None:
        super().__init__(inner)
        self.reads: Counter[str] = Counter()
        self.id, self.then = id, then

    def read(self, container, partition_key, id):
        self.reads[id] += 1
        doc = super().read(container, partition_key, id)
        if id == self.id:
            self.id = None
            self.then()
        return doc


def test_a_release_that_loses_a_race_reads_the_weights_once_and_the_job_again(world, running_job):
    # Given a running job, and its factory's note landing between the release's read and its
    # write (so the release's conditional write loses)
    job = running_job("job")
    note = lambda: world.patch(job, "assigned", note="halfway")  # noqa: E731
    counting = DocumentReads(world.store, job.id, note)
    ctx = Context(counting, world.clock, world.ctx.settings)
    # When the factory releases it for a retry
    retried = leases.release(ctx, job.id, ReleaseBody(lease_id=job.lease.lease_id, result="retry"))
    # Then it is queued again: the second attempt re-read the job, and only the job
    assert (retried.stage, retried.attempts) == (Stage.QUEUED, 1)
    assert counting.reads[job.id] == 2
    assert counting.reads[weight_registry.DOC_ID] == 1
    assert counting.calls["patch:jobs"] == 2  # the note's write and its own


@pytest.mark.parametrize(
    "use_case",
    [
        "submit",
        "release retry",
        "release give back",
        "requeue",
        "review reject",
    ],
)
def test_a_write_that_queues_a_job_reads_the_weights_once(world, running_job, use_case):
    # Given weights set on the product
    weight_registry.put(world.ctx, PRODUCT, scoring.WeightsPatch(retries=-5))
    job = running_job("job", stage="testing")
    counting = DocumentReads(world.store)
    ctx = Context(counting, world.clock, world.ctx.settings)
    # When a use case queues a job
    if use_case == "submit":
        queued = submit.submit(ctx, JobSpec(product_id=PRODUCT, idempotency_key="fresh")).job
    elif use_case == "release retry":
        queued = leases.release(ctx, job.id, ReleaseBody(lease_id=job.lease.lease_id, result="retry"))
    elif use_case == "release give back":
        queued = leases.release(ctx, job.id, ReleaseBody(lease_id=job.lease.lease_id))
    elif use_case == "requeue":
        queued = actions.apply(ctx, job.id, actions.Action.REQUEUE)
    else:
        parked = leases.release(world.ctx, job.id, ReleaseBody(lease_id=job.lease.lease_id, stage="testing"))
        review.request(world.ctx, parked.id, 1, None)
        queued = review.decide(ctx, parked.id, "ann", approve=False)
    # Then it carries the rank key of the product's weights, read once (the bump that
    # followed the write counted no weight change since)
    assert queued.stage == Stage.QUEUED
    assert queued.rank_key == scoring.rank_key(1, queued.attempts, queued.created_at, scoring.Weights(retries=-5))
    assert counting.reads[weight_registry.DOC_ID] == 1


# The weight-change count: a writer learns of a concurrent change from its own bump


def test_a_weight_change_between_a_writers_read_and_its_write_is_caught_by_the_bump(world, running_job):
    # Given a job being given back, and a PUT that runs entirely between the release's read
    # of the weights and its write (its re-key pass cannot see the job: it is not queued yet)
    job = running_job("job")
    put = lambda: weight_registry.put(world.ctx, PRODUCT, scoring.WeightsPatch(priority=70))  # noqa: E731
    counting = DocumentReads(world.store, job.id, put)
    ctx = Context(counting, world.clock, world.ctx.settings)
    # When the release writes the job with the old weights' rank key
    released = leases.release(ctx, job.id, ReleaseBody(lease_id=job.lease.lease_id))
    # Then its bump counted one weight change more than it read, so it read them again and
    # re-keyed the job
    assert released.rank_key == scoring.rank_key(1, 0, job.created_at, scoring.Weights(priority=70))
    assert world.job(job).rank_key == released.rank_key
    assert counting.reads[weight_registry.DOC_ID] == 2


def test_a_put_overtaken_by_a_later_counted_put_counts_again(world):
    # Given PUT A counted its change, and PUT B ran entirely before A wrote
    first = []

    class Overtaking(store_port.CountingStore):
        def increment(self, container, partition_key, id, field, by, initial, stamp=None, also=None):
            doc = super().increment(container, partition_key, id, field, by, initial, stamp, also)
            if field == queue_state.WEIGHT_CHANGES and not first:
                first.append(doc[field])
                weight_registry.put(world.ctx, PRODUCT, scoring.WeightsPatch(age=2))
            return doc

    ctx = Context(Overtaking(world.store), world.clock, world.ctx.settings)
    # When A writes
    view = weight_registry.put(ctx, PRODUCT, scoring.WeightsPatch(priority=30)).to_doc()
    # Then A wrote under a count taken after B's (the count a weights document carries only
    # grows), both patches merged, and the registry agrees with the queue-state's count
    doc = world.store.read("jobs", PRODUCT, weight_registry.DOC_ID)
    counted = queue_state.weight_changes(world.store.read("jobs", PRODUCT, queue_state.DOC_ID))
    assert first == [1]
    assert (doc[weight_registry.CHANGE], counted) == (3, 3)
    assert view["weights"] == {"age": 2.0, "priority": 30.0}
    assert view["rekeying"] is False


def test_a_put_that_died_after_counting_leaves_writers_reading_the_weights_again(world, running_job):
    # Given a PUT that counted its change but died before writing the weights
    queue_state.count_weight_change(world.ctx, PRODUCT)
    job = running_job("job")
    counting = DocumentReads(world.store)
    ctx = Context(counting, world.clock, world.ctx.settings)
    # When a job is given back, Then the count it finds is not the one it read under: it
    # reads the weights again (and finds its key current)
    released = leases.release(ctx, job.id, ReleaseBody(lease_id=job.lease.lease_id))
    assert released.rank_key == scoring.rank_key(1, 0, job.created_at, scoring.DEFAULTS)
    assert counting.reads[weight_registry.DOC_ID] == 2


# The outcome


def test_the_outcome_names_the_job_before_and_after_and_what_followed(world, running_job, submit_job):
    # Given a running job another waits on
    dep = running_job("dep")
    waiting = submit_job("waiting", deps=["dep"])
    before = world.job(dep)

    def ship(job: Job, _: None, now) -> Job:
        return job.model_copy(update={"stage": Stage.SHIPPED, "lease": None})

    # When it is shipped through the write path
    written = effects.change(world.ctx, dep.id, ship)
    # Then the outcome holds the job as read and as written, and the follow-ups that ran
    assert (written.wrote, written.before, written.job.stage) == (True, before, Stage.SHIPPED)
    assert written.followed == (effects.FollowUp.DEPENDENTS, effects.FollowUp.ACTIVITY)
    assert written.entered(Stage.SHIPPED) and not written.entered(Stage.QUEUED)
    assert world.job(waiting).stage == Stage.QUEUED
    # and a decision that changes nothing writes nothing, and nothing follows
    unchanged = effects.change(world.ctx, dep.id, lambda job, _, now: None)
    assert (unchanged.wrote, unchanged.followed, unchanged.job.etag) == (False, (), written.job.etag)


def test_a_job_entering_the_queue_bumps_the_queue_state_and_checks_its_rank_key(world, running_job):
    job = running_job("job")
    version = world.version()
    written = effects.change(
        world.ctx, job.id, lambda current, weights, now: current.model_copy(update={"stage": Stage.QUEUED, "lease": None}),
        keyed_with=weight_registry.snapshot(world.ctx, PRODUCT),
    )
    assert written.followed == (effects.FollowUp.QUEUE_STATE, effects.FollowUp.RE_KEY, effects.FollowUp.ACTIVITY)
    assert world.version() == version + 1


def test_a_claim_writes_once_on_the_etag_it_read_and_a_lost_race_raises(world, make_job):
    job = make_job("job")
    stale = Job.from_doc(world.store.read("jobs", PRODUCT, job.id))
    claims.take(world.ctx, stale, "factory-1", world.clock.now())
    with pytest.raises(errors.PreconditionFailed):
        claims.take(world.ctx, stale, "factory-2", world.clock.now())
    assert world.job(job).lease.factory_id == "factory-1"


# Backoff through the clock seam


class LosingStore(store_port.CountingStore):
    """Refuses the first `losses` conditional writes as if a rival had written first."""

    def __init__(self, inner, losses: int) -> None:
        super().__init__(inner)
        self.losses = losses

    def _lose(self) -> None:
        if self.losses:
            self.losses -= 1
            self.calls["lost"] += 1
            raise errors.PreconditionFailed()

    def replace(self, container, doc, etag):
        self._lose()
        return super().replace(container, doc, etag)

    def patch(self, container, partition_key, id, ops, etag, answer=False):
        self._lose()
        return super().patch(container, partition_key, id, ops, etag, answer)


def test_backoffs_pause_through_the_clock_not_the_real_time(world, running_job, monkeypatch):
    # Given a job whose first three writes lose their race, and no real sleep allowed
    job = running_job("job")
    monkeypatch.setattr(time, "sleep", lambda seconds: pytest.fail("slept for real"))
    clock = world.clock
    before = (clock.pauses, clock.now())
    ctx = Context(LosingStore(world.store, 3), clock, world.ctx.settings)
    # When the factory PATCHes it
    patched = leases.patch(ctx, job.id, PatchBody(lease_id=job.lease.lease_id, stage="building"))
    # Then it lands after three backoffs, each a pause of the fixed clock, which did not move
    assert patched.stage == Stage.BUILDING
    assert clock.pauses - before[0] == 3
    assert clock.now() == before[1]


def test_the_system_clock_sleeps_for_real(monkeypatch):
    from fleet.clock import SystemClock

    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    SystemClock().sleep(0.01)
    assert slept == [0.01]


def test_retries_are_bounded(world, running_job):
    job = running_job("job")
    ctx = Context(LosingStore(world.store, 100), world.clock, world.ctx.settings)
    with pytest.raises(errors.TooManyRetries):
        leases.patch(ctx, job.id, PatchBody(lease_id=job.lease.lease_id, stage="building"))
    assert world.job(job).stage == Stage.ASSIGNED


def test_the_shipped_releases_accrual_mark_reads_nothing():
    with open_world(Settings(lease_seconds=LEASE_SECONDS, budgets=True)) as world:
        budgets.put(world.ctx, PRODUCT, 100.0, Window.MONTHLY)
        job = world.running_job("job", stage="testing")
        counting = DocumentReads(world.store)
        ctx = Context(counting, world.clock, world.ctx.settings)
        shipped = leases.release(ctx, job.id, ReleaseBody(lease_id=job.lease.lease_id, stage="shipped", insights={"costUsd": 2.0}))
        assert (shipped.accrual_pending, shipped.latest_run.accrued) == (False, True)
        assert counting.reads[job.id] == 1
        assert counting.calls["patch:jobs"] == 2  # the release and the accrual mark


def test_the_jobs_containers_reserved_documents_are_written_by_their_own_modules_only():
    writers = set()
    for path in FLEET.glob("*.py"):
        if path.name in ("writes.py", "store.py", "testing.py"):
            continue
        for call, container, rest in store_writes(ast.parse(path.read_text())):
            if isinstance(container, ast.Constant) and container.value == "jobs":
                writers.add(path.name)
    assert writers == set(RESERVED)
