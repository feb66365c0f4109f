"""Phase-3 world: a real `SqliteStore(":memory:")` per test, a `FixedClock`, both flags on, and
builders that read like the fleet's own words.

    def test_a_critical_job_preempts(fleet):
        low = fleet.running("low", factory="f1", priority="low")
        fleet.heartbeat("f1", seat_limit=1, running=[low])
        urgent = fleet.submit("urgent", priority="critical")
        assert fleet.claim("f1").preempted == [low.id]

Every builder goes through the use cases (submit, claim, PATCH, release, actions), so the
documents are what production writes. `FaultyStore` wraps the real store to crash a chosen
call (fault injection) and counts calls like `fleet.store.CountingStore`. Hypothesis tests
cannot take function-scoped fixtures: they open their own world with `opened(...)`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
from datetime import datetime, timedelta
from typing import Any, Iterator

import pytest

from fleet import actions, budget_rules, budgets, claims, errors, factories, leases, listing, queue_state, store as store_port, submit
from fleet import clock as clocks
from fleet.clock import FixedClock
from fleet.context import Context, Settings
from fleet.jobs import Job, Run, job_id
from fleet.schemas import JobSpec, PatchBody, ReleaseBody
from shared.stores.sqlite_store import SqliteStore

PRODUCT = "acme"
#: Monday 5 January 2026, 09:00 UTC: every world starts here.
T0 = "2026-01-05T09:00:00.000Z"
LEASE_SECONDS = 300
#: Both phase-3 flags on, no preemption exemption.
PHASE3 = Settings(lease_seconds=LEASE_SECONDS, budgets=True, preemption=True, preempt_exempt_seconds=0)


def phase3(**changes: Any) -> Settings:
    """Phase-3 settings with some changed: `phase3(preemption=False)`."""
    return dataclasses.replace(PHASE3, **changes)


class FaultyStore(store_port.CountingStore):
    """The real store, with crashes on demand: `crash("replace", "budgets")` makes the next
    `replace` on `budgets` raise `StoreBusy` — before it reaches the store (`after=False`, the
    write never happens) or after it (`after=True`, the write happened but the caller died
    before hearing of it). `nth` picks a later call. Calls are counted per primitive."""

    def __init__(self, inner: store_port.Store) -> None:
        super().__init__(inner)
        self.faults: list[dict[str, Any]] = []
        self.crashed: list[str] = []
        self.hooks: list[dict[str, Any]] = []

    def crash(self, op: str, container: str, nth: int = 1, after: bool = False) -> None:
        self.faults.append({"op": op, "container": container, "left": nth, "after": after})

    def meanwhile(self, op: str, container: str, then, nth: int = 1) -> None:
        """Run `then()` right after the `nth` call of `op` on `container` succeeds, before its
        caller sees the answer: another process acting at exactly that point."""
        self.hooks.append({"op": op, "container": container, "left": nth, "then": then})

    def disarm(self) -> None:
        self.faults.clear()
        self.hooks.clear()

    def _call(self, op: str, container: str, call):
        result = self._faulty(op, container, call)
        hook = next((h for h in self.hooks if h["op"] == op and h["container"] == container), None)
        if hook is not None:
            hook["left"] -= 1
            if hook["left"] == 0:
                self.hooks.remove(hook)
                hook["then"]()
        return result

    def _faulty(self, op: str, container: str, call):
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
        return self._call("read", container, lambda: store_port.CountingStore.read(self, container, partition_key, id))

    def create(self, container, doc):
        return self._call("create", container, lambda: store_port.CountingStore.create(self, container, doc))

    def replace(self, container, doc, etag):
        return self._call("replace", container, lambda: store_port.CountingStore.replace(self, container, doc, etag))

    def upsert(self, container, doc):
        return self._call("upsert", container, lambda: store_port.CountingStore.upsert(self, container, doc))

    def increment(self, container, partition_key, id, field, by, initial, stamp=None):
        return self._call(
            "increment",
            container,
            lambda: store_port.CountingStore.increment(self, container, partition_key, id, field, by, initial, stamp),
        )

    def query(self, query, continuation=None):
        return self._call("query", query.container, lambda: store_port.CountingStore.query(self, query, continuation))


class Fleet:
    """One fresh coordinator over a real store: the verbs the specifications use."""

    def __init__(self, store: FaultyStore, clock: FixedClock, settings: Settings) -> None:
        self.store = store
        self.clock = clock
        self.ctx = Context(store, clock, settings)
        #: What the tests look through: the real store, never crashed, never counted.
        self.observer = Context(store.inner, clock, settings)
        self._keys = itertools.count(1)

    def with_settings(self, **changes: Any) -> "Fleet":
        """The same store and clock under other settings (another coordinator process)."""
        return Fleet(self.store, self.clock, dataclasses.replace(self.ctx.settings, **changes))

    # jobs

    def spec(self, key: str | None = None, **fields: Any) -> JobSpec:
        key = key or f"job-{next(self._keys)}"
        return JobSpec(product_id=fields.pop("product_id", PRODUCT), idempotency_key=key, **fields)

    def submit(self, key: str | None = None, **fields: Any) -> Job:
        """Submit a task through the use case, as a client would."""
        return submit.submit(self.ctx, self.spec(key, **fields)).job

    def job(self, id_or_job: str | Job) -> Job:
        """The job as stored now."""
        return listing.get(self.observer, id_or_job.id if isinstance(id_or_job, Job) else id_or_job)

    # factories

    def claim(
        self,
        factory: str = "factory-1",
        *,
        capabilities: list[str] | None = None,
        seat_limit: int | None = None,
        product_id: str = PRODUCT,
    ) -> claims.Claimed:
        return claims.claim_next(self.ctx, claims.ClaimRequest(factory, product_id, capabilities, None, seat_limit))

    def claim_job(
        self, job: Job, factory: str = "factory-1", *, capabilities: list[str] | None = None, seat_limit: int | None = None
    ) -> claims.Claimed:
        request = claims.ClaimRequest(factory, job.product_id, capabilities, None, seat_limit)
        return claims.claim_job(self.ctx, job.id, job.product_id, request)

    def running(self, key: str | None = None, *, factory: str = "factory-1", stage: str = "assigned", **fields: Any) -> Job:
        """A submitted job claimed by `factory` (which offers what the job needs) and PATCHed
        forward to `stage`."""
        job = self.submit(key, **fields)
        claimed = self.claim_job(job, factory, capabilities=list(job.capabilities)).job
        assert claimed is not None and claimed.lease is not None
        for step in ("building", "review", "testing"):
            if claimed.stage.value == stage:
                break
            claimed = self.patch(claimed, step)
        return claimed

    def parked(self, key: str | None = None, *, cost: float | None = None, **fields: Any) -> Job:
        """A job whose factory verified it and released it at `testing`: resting at the review gate."""
        job = self.running(key, stage="testing", **fields)
        return self.release(job, stage="testing", **({"insights": {"costUsd": cost}} if cost is not None else {}))

    def patch(self, job: Job, stage: str, *, lease_id: str | None = None, **body: Any) -> Job:
        lease_id = lease_id or job.lease.lease_id
        return leases.patch(self.ctx, job.id, PatchBody(lease_id=lease_id, stage=stage, **body))

    def release(self, job: Job, *, lease_id: str | None = None, **body: Any) -> Job:
        lease_id = lease_id or job.lease.lease_id
        return leases.release(self.ctx, job.id, ReleaseBody(lease_id=lease_id, **body))

    def act(self, job: Job, action: str, **body: Any) -> Job:
        return actions.apply(self.ctx, job.id, actions.Action(action), **body)

    def heartbeat(
        self,
        factory: str = "factory-1",
        *,
        seat_limit: int | None = None,
        capabilities: list[str] | None = None,
        running: list[Job] = (),
    ) -> list[dict[str, Any]]:
        pairs = [(j.id, j.lease.lease_id) for j in running]
        answer = factories.heartbeat(self.ctx, factory, [PRODUCT], capabilities or [], seat_limit, pairs)
        return answer.to_doc()["leases"]

    # budgets and queue-state

    def put_budget(self, ceiling: float, window: str = "monthly", product_id: str = PRODUCT) -> budget_rules.Budget:
        return budgets.put(self.ctx, product_id, ceiling, budget_rules.Window(window))

    def budget(self, product_id: str = PRODUCT) -> budget_rules.Budget | None:
        """The budget as a read sees it now (an elapsed window rolled)."""
        return budgets.find(self.observer, product_id)

    def stored_budget(self, product_id: str = PRODUCT) -> budget_rules.Budget:
        """The budget document exactly as stored."""
        return budget_rules.Budget.from_doc(self.store.inner.read("budgets", product_id, product_id))

    def version(self, product_id: str = PRODUCT) -> int:
        return queue_state.read(self.observer, product_id).version


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
def opened(settings: Settings = PHASE3, at: str = T0) -> Iterator[Fleet]:
    """A fresh world (store, clock, context); closes its store on exit."""
    real = SqliteStore(":memory:")
    try:
        yield Fleet(FaultyStore(real), FixedClock(at), settings)
    finally:
        real.close()


@pytest.fixture
def settings() -> Settings:
    return PHASE3


@pytest.fixture
def fleet(settings: Settings) -> Iterator[Fleet]:
    with opened(settings) as world:
        yield world


@pytest.fixture
def ctx(fleet: Fleet) -> Context:
    return fleet.ctx


@pytest.fixture
def clock(fleet: Fleet) -> FixedClock:
    return fleet.clock


@pytest.fixture
def faulty(fleet: Fleet) -> FaultyStore:
    return fleet.store

