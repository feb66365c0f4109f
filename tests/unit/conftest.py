"""Unit-test world: a real `SqliteStore(":memory:")`, a `FixedClock`, and factory helpers that
read like the fleet's own words.

    def test_a_critical_job_goes_first(make_job, claim):
        make_job("old", priority="normal")
        urgent = make_job("urgent", priority="critical")
        assert claim().job.id == urgent.id

`make_job` seeds a job document directly (exact `attempts`, `createdAt`, stage, rank key) for
rules about ordering; `submit_job` goes through `submit.submit` like a client would. Every test
gets a fresh store. Hypothesis tests cannot take function-scoped fixtures, so they open their
own world with the session-scoped `new_world()` (a context manager).
"""
from __future__ import annotations

import contextlib
import itertools
from datetime import datetime, timedelta
from typing import Any, Iterator

import pytest

from fleet import claims, leases, listing, queue_state, scoring, store as store_port, submit
from fleet.clock import FixedClock
from fleet.context import Context, Settings
from fleet.jobs import Job, job_id
from fleet.schemas import JobSpec, PatchBody, ReleaseBody
from fleet.stages import Priority, Stage
from shared.stores.sqlite_store import SqliteStore

PRODUCT = "acme"
#: A Monday morning; every world starts here.
T0 = "2026-01-05T09:00:00.000Z"
LEASE_SECONDS = 300


class World:
    """One fresh coordinator: store, clock, context, and the verbs tests use."""

    def __init__(self, store: Any, clock: FixedClock, settings: Settings) -> None:
        self.store = store
        self.clock = clock
        self.ctx = Context(store, clock, settings)
        self._keys = itertools.count(1)

    # jobs

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
        """Seed a job document as the claim sees it, its rank key keyed with `weights`."""
        key = key or f"job-{next(self._keys)}"
        priority = Priority(priority)
        if created_at is None:
            created_at = self.clock.now() - timedelta(minutes=age_minutes or 0)
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
        return Job.from_doc(self.store.create("jobs", job.to_doc()))

    def submit_job(self, key: str | None = None, **spec: Any) -> Job:
        """Submit through the use case, as a client would; returns the stored job."""
        return self.submit(key, **spec).job

    def submit(self, key: str | None = None, **spec: Any) -> submit.Submitted:
        key = key or f"job-{next(self._keys)}"
        return submit.submit(self.ctx, JobSpec(product_id=spec.pop("product_id", PRODUCT), idempotency_key=key, **spec))

    def job(self, id_or_job: str | Job) -> Job:
        """The job as stored now."""
        return listing.get(self.ctx, id_or_job.id if isinstance(id_or_job, Job) else id_or_job)

    # factories

    def claim(
        self,
        factory: str = "factory-1",
        *,
        capabilities: list[str] | None = None,
        weights: dict[str, float] | None = None,
        product_id: str = PRODUCT,
    ) -> claims.Claimed:
        request = claims.ClaimRequest(
            factory, product_id, capabilities, scoring.WeightsPatch(**weights) if weights else None
        )
        return claims.claim_next(self.ctx, request)

    def running_job(self, key: str | None = None, *, stage: str = "assigned", factory: str = "factory-1", **spec: Any) -> Job:
        """A submitted job claimed by `factory` and PATCHed to `stage`: what a factory holds."""
        submitted = self.submit_job(key, **spec)
        claimed = claims.claim_job(
            self.ctx, submitted.id, submitted.product_id, claims.ClaimRequest(factory, submitted.product_id, spec.get("capabilities"))
        ).job
        assert claimed is not None
        if stage != "assigned":
            for step in ("building", "review", "testing"):
                claimed = self.patch(claimed, step)
                if step == stage:
                    break
        return claimed

    def patch(self, job: Job, stage: str, *, lease_id: str | None = None, **body: Any) -> Job:
        lease_id = lease_id or job.lease.lease_id
        return leases.patch(self.ctx, job.id, PatchBody(lease_id=lease_id, stage=stage, **body))

    def release(self, job: Job, *, lease_id: str | None = None, **body: Any) -> Job:
        lease_id = lease_id or job.lease.lease_id
        return leases.release(self.ctx, job.id, ReleaseBody(lease_id=lease_id, **body))

    # queue-state

    def version(self, product_id: str = PRODUCT) -> int:
        return queue_state.read(self.ctx, product_id).version


class Interleaving(store_port.CountingStore):
    """A store that lets something else happen at a chosen point of a use case: `then()` runs
    once, right after the first call of `op` (e.g. "query", "read") for which `when(*args)` holds,
    and before the use case sees the result. Races become deterministic scenarios."""

    def __init__(self, inner: Any, op: str, then, when=lambda *args: True) -> None:
        super().__init__(inner)
        self.op, self.then, self.when, self.done = op, then, when, False

    def _after(self, op: str, args: tuple, result: Any) -> Any:
        if op == self.op and not self.done and self.when(*args):
            self.done = True
            self.then()
        return result

    def read(self, container, partition_key, id):
        return self._after("read", (container, partition_key, id), super().read(container, partition_key, id))

    def query(self, query, continuation=None):
        return self._after("query", (query,), super().query(query, continuation))


def interleaved(world: "World", op: str, then, when=lambda *args: True) -> Context:
    """`world`'s context over a store on which `then()` happens right after the chosen call."""
    return Context(Interleaving(world.store, op, then, when), world.clock, world.ctx.settings)


@contextlib.contextmanager
def _open_world(settings: Settings | None = None, path: str = ":memory:") -> Iterator[World]:
    store = SqliteStore(path)
    try:
        yield World(store, FixedClock(T0), settings or Settings(lease_seconds=LEASE_SECONDS))
    finally:
        store.close()


@pytest.fixture(scope="session")
def new_world():
    """`with new_world() as world:` — a fresh world, for hypothesis tests (one per example)."""
    return _open_world


@pytest.fixture
def settings() -> Settings:
    return Settings(lease_seconds=LEASE_SECONDS)


@pytest.fixture
def world(settings: Settings) -> Iterator[World]:
    with _open_world(settings) as opened:
        yield opened


@pytest.fixture
def clock(world: World) -> FixedClock:
    return world.clock


@pytest.fixture
def store(world: World) -> SqliteStore:
    return world.store


@pytest.fixture
def ctx(world: World) -> Context:
    return world.ctx


@pytest.fixture
def make_job(world: World):
    return world.make_job


@pytest.fixture
def submit_job(world: World):
    return world.submit_job


@pytest.fixture
def claim(world: World):
    return world.claim


@pytest.fixture
def running_job(world: World):
    return world.running_job
