"""API tests: the real functions of `function_app`, routed by the dev host in-process, over a
real SQLite store and a fixed clock, with auth on: every call sends an admin token the
fixture minted in the store, unless it passes `token=` (another, or None for none)."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import pytest
from werkzeug.test import Client

import function_app
from fleet.clock import FixedClock
from fleet.context import Context, Settings
from fleet import tokens
from fleet.principals import Role
from fleet.store import CountingStore
from shared import auth, config
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
    #: The admin token every call sends unless it names another.
    token: str | None = None

    def call(self, method: str, path: str, json: Any = None, token: Any = ..., **kw: Any):
        if token is ...:
            return self.client.open(path, method=method, json=json, **kw)
        headers = dict(kw.pop("headers", None) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return Client(host().wsgi).open(path, method=method, json=json, headers=headers, **kw)

    def mint(self, role: Role, **fields: Any) -> str:
        """A new token of `role` (see `tokens.create`), straight into the store."""
        return tokens.create(self.ctx, role, **fields).token

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
    config.use_auth(auth.Mode.TOKENS)
    config.use(ctx)
    token = tokens.create(ctx, Role.ADMIN, name="api-tests").token
    return Api(Client(_bearing(host().wsgi, token)), ctx, clock, store, token)


def _bearing(wsgi, token: str):
    """`wsgi`, its requests sent with `token` unless they carry an Authorization of their own."""

    def app(environ, start_response):
        environ.setdefault("HTTP_AUTHORIZATION", f"Bearer {token}")
        return wsgi(environ, start_response)

    return app


def done() -> None:
    config.use(None)
    config.use_auth(None)


@pytest.fixture
def api(tmp_path):
    yield make_api(tmp_path)
    done()


@pytest.fixture
def flagged_api(tmp_path):
    """Budgets and preemption on."""
    yield make_api(tmp_path, budgets=True, preemption=True)
    done()
