"""API tests: the real functions of `function_app`, routed by the dev host in-process, over a
real SQLite store and a fixed clock."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import pytest
from werkzeug.test import Client

import function_app
from fleet.clock import FixedClock
from fleet.context import Context, Settings
from fleet.store import CountingStore
from shared import config
from shared.devhost import hosting
from shared.stores.sqlite_store import SqliteStore


@functools.cache
def host() -> hosting.DevHost:
    return hosting.DevHost(function_app.app, route_prefix="", keys=())


@dataclass
class Api:
    client: Client
    ctx: Context
    clock: FixedClock
    store: CountingStore

    def call(self, method: str, path: str, json: Any = None, **kw: Any):
        return self.client.open(path, method=method, json=json, **kw)

    def get(self, path: str, **kw: Any):
        return self.call("GET", path, **kw)

    def post(self, path: str, json: Any = None, **kw: Any):
        return self.call("POST", path, json, **kw)

    def submit(self, key: str, product: str = "p", **fields: Any) -> dict:
        response = self.post("/fleet/jobs", {"productId": product, "idempotencyKey": key, **fields})
        assert response.status_code in (200, 201), response.json
        return response.json

    def claim(self, factory: str = "f1", product: str = "p", **fields: Any) -> dict:
        response = self.post("/fleet/claim", {"factoryId": factory, "productId": product, **fields})
        assert response.status_code == 200, response.json
        return response.json

    def job(self, id: str) -> dict:
        return self.get(f"/fleet/jobs/{id}").json

    def sweep(self) -> None:
        assert self.post("/admin/functions/sweep_expired_leases", {"input": ""}).status_code == 202

    def run_timers_for(self, seconds: float, step: float = 60) -> None:
        """Advance the clock `seconds`, running the sweep every `step` as its timer would."""
        while seconds > 0:
            self.clock.advance(min(step, seconds))
            seconds -= step
            self.sweep()

    def version(self, product: str = "p") -> int:
        return self.get(f"/fleet/queue-state?productId={product}").json["version"]


def make_api(tmp_path, **settings: Any) -> Api:
    clock = FixedClock("2026-03-02T10:00:00.000Z")
    store = CountingStore(SqliteStore(str(tmp_path / "fleet.db")))
    ctx = Context(store, clock, Settings(**settings))
    config.use(ctx)
    return Api(Client(host().wsgi), ctx, clock, store)


@pytest.fixture
def api(tmp_path):
    yield make_api(tmp_path)
    config.use(None)


@pytest.fixture
def flagged_api(tmp_path):
    """Budgets and preemption on."""
    yield make_api(tmp_path, budgets=True, preemption=True)
    config.use(None)
