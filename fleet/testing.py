"""The test world: a fresh coordinator over a real store under a fixed clock, with the verbs
tests and benchmarks use, in the fleet's own words.

    with testing.open_world() as world:              # or the `world` fixture of tests/domain
        urgent = world.submit_job("urgent", priority="critical")
        assert world.claim().job.id == urgent.id

`world.store` is a `FaultyStore` over the real store: it counts calls per primitive and crashes
or interleaves on demand. `world.ctx` is what use cases run on; `world.observer` reads through
the real store, never crashed, never counted: what a test looks through (`job`, `budget`,
`version`). Builders go through the use cases (`submit_job`, `running_job`, `parked_job`), so
documents are what production writes, except `make_job`, which seeds a job document exactly as
given (attempts, createdAt, stage, rank key) for the rules about ordering. `job_value` builds a
job that is never stored, for the pure rules.

The domain never imports `shared` at module level: `open_world` imports the SQLite store when
it opens one, or takes `open_store`.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from fleet import actions, budget_rules, budgets, claims, errors, factories, leases, listing, queue_state, scoring
from fleet import clock as clocks
from fleet import store as store_port
from fleet import submit, sweep
from fleet.clock import FixedClock
from fleet.context import Context, Settings
from fleet.jobs import Job, Run, cap_key, job_id
from fleet.schemas import JobSpec, PatchBody, ReleaseBody, ReportBody
from fleet.stages import Priority, Stage

PRODUCT = "acme"
#: Monday 5 January 2026, 09:00 UTC: every world starts here.
T0 = "2026-01-05T09:00:00.000Z"
LEASE_SECONDS = 300
#: The writes `FaultyStore.refuse_writes` refuses.
WRITES = ("create", "replace", "upsert", "patch")


def world_settings(**changes: Any) -> Settings:
    """The settings a world has unless told otherwise (five-minute leases, both flags off),
    with some changed."""
    return dataclasses.replace(Settings(lease_seconds=LEASE_SECONDS), **changes)


def flags_on(**changes: Any) -> Settings:
    """Budgets and preemption on, no preemption exemption; some changed: `flags_on(preemption=False)`."""
    return world_settings(**{"budgets": True, "preemption": True, "preempt_exempt_seconds": 0, **changes})


class FaultyStore(store_port.CountingStore):
    """A store that counts calls per primitive and misbehaves on demand.

    - `crash("replace", "budgets")`: the next `replace` on `budgets` raises `StoreBusy`, before it
      reaches the store (the write never happens) or, with `after=True`, after it (the write
      happened but the caller died before hearing of it). `nth` picks a later call.
    - `meanwhile(op, container, then)`: `then()` runs once, right after the `nth` matching call
      succeeds and before its caller sees the answer: another process acting at exactly that
      point. `container=None` matches any container; `when(*args)` narrows the match to calls
      with those arguments (a read's are `(container, partition_key, id)`, a patch's
      `(container, partition_key, id, ops, etag)`, a query's `(query,)`).
    - `refuse_writes(id)`: every create, replace, patch or upsert of document `id` fails with
      `TooLarge`, for good (as Cosmos refuses an item past its size limit).
    """

    def __init__(self, inner: store_port.Store) -> None:
        super().__init__(inner)
        self.faults: list[dict[str, Any]] = []
        self.crashed: list[str] = []
        self.hooks: list[dict[str, Any]] = []
        self.refused: set[str] = set()

    def crash(self, op: str, container: str, nth: int = 1, after: bool = False) -> None:
        self.faults.append({"op": op, "container": container, "left": nth, "after": after})

    def meanwhile(
        self, op: str, container: str | None, then: Callable[[], Any], nth: int = 1, when: Callable[..., bool] | None = None
    ) -> None:
        self.hooks.append({"op": op, "container": container, "left": nth, "then": then, "when": when})

    def refuse_writes(self, id: str) -> None:
        self.refused.add(id)

    def disarm(self) -> None:
        self.faults.clear()
        self.hooks.clear()
        self.refused.clear()

    def _call(self, op: str, container: str, args: tuple, call: Callable[[], Any]) -> Any:
        written = args[2] if op == "patch" else args[1].get("id") if op in WRITES else None
        if written is not None and written in self.refused:
            raise errors.TooLarge(f"writes of {written} are refused")
        result = self._faulty(op, container, call)
        hook = next((h for h in self.hooks if self._matches(h, op, container, args)), None)
        if hook is not None:
            hook["left"] -= 1
            if hook["left"] == 0:
                self.hooks.remove(hook)
                hook["then"]()
        return result

    @staticmethod
    def _matches(hook: dict[str, Any], op: str, container: str, args: tuple) -> bool:
        return (
            hook["op"] == op
            and hook["container"] in (None, container)
            and (hook["when"] is None or hook["when"](*args))
        )

    def _faulty(self, op: str, container: str, call: Callable[[], Any]) -> Any:
        fault = next((f for f in self.faults if f["op"] == op and f["container"] == container), None)
        if fault is not None:
            fault["left"] -= 1
            if fault["left"] == 0:
                self.faults.remove(fault)
                self.crashed.append(f"{op}:{container}")
                if fault["after"]:
                    call()
                raise errors.StoreBusy(f"injected crash on {op}:{container}")
        return call()

    def read(self, container, partition_key, id):
        args = (container, partition_key, id)
        return self._call("read", container, args, lambda: super(FaultyStore, self).read(*args))

    def create(self, container, doc):
        return self._call("create", container, (container, doc), lambda: super(FaultyStore, self).create(container, doc))

    def replace(self, container, doc, etag):
        args = (container, doc, etag)
        return self._call("replace", container, args, lambda: super(FaultyStore, self).replace(*args))

    def patch(self, container, partition_key, id, ops, etag, answer=False):
        args = (container, partition_key, id, ops, etag, answer)
        return self._call("patch", container, args, lambda: super(FaultyStore, self).patch(*args))

    def upsert(self, container, doc):
        return self._call("upsert", container, (container, doc), lambda: super(FaultyStore, self).upsert(container, doc))

    def delete(self, container, partition_key, id):
        args = (container, partition_key, id)
        return self._call("delete", container, args, lambda: super(FaultyStore, self).delete(*args))

    def increment(self, container, partition_key, id, field, by, initial, stamp=None, also=None):
        args = (container, partition_key, id, field, by, initial, stamp, also)
        return self._call("increment", container, args, lambda: super(FaultyStore, self).increment(*args))

    def query(self, query, continuation=None):
        return self._call("query", query.container, (query,), lambda: super(FaultyStore, self).query(query, continuation))


class World:
    """One fresh coordinator over `store` (the real one): see the module docstring."""

    def __init__(self, store: store_port.Store, clock: FixedClock, settings: Settings) -> None:
        self.store = FaultyStore(store)
        self.clock = clock
        self.ctx = Context(self.store, clock, settings)
        self.observer = Context(store, clock, settings)
        self._keys = itertools.count(1)

    def with_settings(self, **changes: Any) -> World:
        """The same store (and its faults) and clock under other settings: another coordinator
        process."""
        other = copy.copy(self)
        settings = dataclasses.replace(self.ctx.settings, **changes)
        other.ctx = Context(self.store, self.clock, settings)
        other.observer = Context(self.observer.store, self.clock, settings)
        return other

    # jobs

    def spec(self, key: str | None = None, **fields: Any) -> JobSpec:
        key = key or f"job-{next(self._keys)}"
        return JobSpec(product_id=fields.pop("product_id", PRODUCT), idempotency_key=key, **fields)

    def submit(self, key: str | None = None, **fields: Any) -> submit.Submitted:
        """Submit through the use case, as a client would: the whole answer."""
        return submit.submit(self.ctx, self.spec(key, **fields))

    def submit_job(self, key: str | None = None, **fields: Any) -> Job:
        """Submit through the use case, as a client would: the job as stored."""
        return self.submit(key, **fields).job

    def make_job(
        self,
        key: str | None = None,
        *,
        priority: str | Priority = "normal",
        attempts: int = 0,
        created_at: datetime | None = None,
        age_minutes: float | None = None,
        capabilities: list[str] | tuple[str, ...] = (),
        stage: str | Stage = "queued",
        weights: scoring.Weights = scoring.DEFAULTS,
        product_id: str = PRODUCT,
        **fields: Any,
    ) -> Job:
        """Seed a job document as the claim sees it, its rank key keyed with `weights` and,
        queued, its capability set registered on the product's queue-state (the version stays)."""
        key = key or f"job-{next(self._keys)}"
        priority = Priority(priority)
        if created_at is None:
            created_at = self.clock.now() - timedelta(minutes=age_minutes or 0)
        # As stored: a rank key computed from a finer time than the stored one keys nothing.
        created_at = clocks.truncated(created_at)
        job = Job(
            id=job_id(product_id, key),
            product_id=product_id,
            idempotency_key=key,
            priority=priority,
            attempts=attempts,
            capabilities=sorted(capabilities),
            stage=Stage(stage),
            rank_key=scoring.rank_key(priority.order, attempts, created_at, weights),
            created_at=created_at,
            updated_at=created_at,
            **fields,
        )
        created = Job.from_doc(self.store.create("jobs", job.to_doc()))
        if created.stage == Stage.QUEUED:
            queue_state.register(self.ctx, product_id, [cap_key(created.capabilities)])
        return created

    def job(self, id_or_job: str | Job) -> Job:
        """The job as stored now."""
        return listing.get(self.observer, id_or_job.id if isinstance(id_or_job, Job) else id_or_job)

    # factories

    def claim(
        self,
        factory: str = "factory-1",
        *,
        capabilities: list[str] | None = None,
        weights: dict[str, float] | None = None,
        seat_limit: int | None = None,
        product_id: str = PRODUCT,
    ) -> claims.Claimed:
        patch = scoring.WeightsPatch(**weights) if weights else None
        return claims.claim_next(self.ctx, claims.ClaimRequest(factory, product_id, capabilities, patch, seat_limit))

    def claim_job(
        self, job: Job, factory: str = "factory-1", *, capabilities: list[str] | None = None, seat_limit: int | None = None
    ) -> claims.Claimed:
        request = claims.ClaimRequest(factory, job.product_id, capabilities, None, seat_limit)
        return claims.claim_job(self.ctx, job.id, job.product_id, request)

    def running_job(self, key: str | None = None, *, stage: str = "assigned", factory: str = "factory-1", **fields: Any) -> Job:
        """A submitted job claimed by `factory` (which offers what the job needs) and PATCHed
        forward to `stage`: what a factory holds."""
        job = self.submit_job(key, **fields)
        claimed = self.claim_job(job, factory, capabilities=list(job.capabilities)).job
        for step in ("building", "review", "testing"):
            if claimed.stage.value == stage:
                break
            claimed = self.patch(claimed, step)
        return claimed

    def parked_job(self, key: str | None = None, *, cost: float | None = None, **fields: Any) -> Job:
        """A job its factory verified and released at `testing`: resting at the review gate."""
        job = self.running_job(key, stage="testing", **fields)
        return self.release(job, stage="testing", **({"insights": {"costUsd": cost}} if cost is not None else {}))

    def patch(self, job: Job, stage: str, *, lease_id: str | None = None, **body: Any) -> Job:
        lease_id = lease_id or job.lease.lease_id
        return leases.patch(self.ctx, job.id, PatchBody(lease_id=lease_id, stage=stage, **body))

    def release(self, job: Job, *, lease_id: str | None = None, **body: Any) -> Job:
        lease_id = lease_id or job.lease.lease_id
        return leases.release(self.ctx, job.id, ReleaseBody(lease_id=lease_id, **body))

    def wait_out_retry(self, job: Job) -> Job:
        """Advance the clock past the retry wait of `job` (as stored) and run the sweep's step
        that moves it back to the claimable queue: the job as it then stands."""
        job = self.job(job)
        if job.retry_at is not None:
            self.clock.set(max(self.clock.now(), job.retry_at))
            sweep.due_retries(self.ctx)
        return self.job(job)

    def report(self, job: Job, lease_id: str, **body: Any) -> Job:
        """The late report of the run `lease_id` held (`leases.report`)."""
        return leases.report(self.ctx, job.id, ReportBody(lease_id=lease_id, **body))

    def act(self, job: Job, action: str, **body: Any) -> Job:
        return actions.apply(self.ctx, job.id, actions.Action(action), **body)

    def heartbeat(
        self,
        factory: str = "factory-1",
        *,
        seat_limit: int | None = None,
        capabilities: list[str] | None = None,
        running: list[Job] = (),
    ) -> Any:
        pairs = [(j.id, j.lease.lease_id) for j in running]
        answer = factories.heartbeat(self.ctx, factory, [PRODUCT], capabilities or [], seat_limit, pairs)
        return answer.to_doc()["leases"]

    # budgets and queue-state

    def put_budget(
        self, ceiling: float, window: str | None = None, product_id: str = PRODUCT, default_estimate: Any = budgets.KEEP
    ) -> budget_rules.Budget:
        """`budgets.put`: a window or default estimate left out keeps the budget's."""
        return budgets.put(self.ctx, product_id, ceiling, budget_rules.Window(window) if window else None, default_estimate)

    def budget(self, product_id: str = PRODUCT) -> budget_rules.Budget | None:
        """The budget as a read sees it now (an elapsed window rolled)."""
        return budgets.find(self.observer, product_id)

    def stored_budget(self, product_id: str = PRODUCT) -> budget_rules.Budget:
        """The budget document exactly as stored."""
        return budget_rules.Budget.from_doc(self.observer.store.read("budgets", product_id, product_id))

    def version(self, product_id: str = PRODUCT) -> int:
        return queue_state.read(self.observer, product_id).version


def interleaved(world: World, op: str, then: Callable[[], Any], when: Callable[..., bool] | None = None) -> Context:
    """`world`'s context over a store on which `then()` happens right after the first call of
    `op` (on any container) for which `when(*args)` holds: races as deterministic scenarios.
    Only the use case given this context is interleaved; `then()` may use `world.ctx`."""
    store = FaultyStore(world.store)
    store.meanwhile(op, None, then, when=when)
    return Context(store, world.clock, world.ctx.settings)


def job_value(
    key: str = "job",
    *,
    priority: str = "normal",
    created_at: datetime | str = T0,
    started_at: datetime | str | None = None,
    attempts: int = 0,
    product_id: str = PRODUCT,
    **fields: Any,
) -> Job:
    """A job as a value, never stored: for the pure domain rules. `started_at` gives it an open
    run (a running job)."""
    created = clocks.parse(created_at) if isinstance(created_at, str) else created_at
    id = job_id(product_id, key)
    runs = []
    if started_at is not None:
        started = clocks.parse(started_at) if isinstance(started_at, str) else started_at
        runs = [Run(run_id=f"{id}#1", factory_id="factory-1", started_at=started)]
    return Job(
        id=id,
        product_id=product_id,
        idempotency_key=key,
        priority=priority,
        attempts=attempts,
        runs=runs,
        created_at=created,
        updated_at=created,
        **fields,
    )


def at(offset_seconds: float = 0, start: str = T0) -> datetime:
    """`start` moved by `offset_seconds` (negative: earlier)."""
    return clocks.parse(start) + timedelta(seconds=offset_seconds)


@contextlib.contextmanager
def open_world(
    settings: Settings | None = None,
    *,
    at: str = T0,
    path: str = ":memory:",
    open_store: Callable[[], store_port.Store] | None = None,
) -> Iterator[World]:
    """A fresh world under `settings` (default `world_settings()`) with its clock at `at`, over
    a new SQLite store at `path` (in memory unless told) or the store `open_store()` opens.
    The store is closed when the block ends."""
    if open_store is None:
        from shared.stores import sqlite_store  # the domain never imports shared at module level

        store = sqlite_store.SqliteStore(path)
    else:
        store = open_store()
    try:
        yield World(store, FixedClock(at), settings or world_settings())
    finally:
        store.close()
