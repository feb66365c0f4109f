"""End-to-end: a real `fleet serve` subprocess on a free port, driven over HTTP — once over
the embedded SQLite store and once over Cosmos (the local Cosmos-compatible server, or the
account named by `COSMOS_ENDPOINT`), each test with a fresh database."""
from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
import uuid

import pytest
import requests

from shared.devhost.process import running_server
from tests.support.cosmos import cosmos_account, cosmos_server  # noqa: F401 (fixtures)


def answered(call, attempts: int = 30):
    """`call()` again while the coordinator answers 503 (its store busy past the deadline, as
    on a loaded machine), after the `Retry-After` it names (at most a second here), as a
    factory does: every call the race makes is one it may repeat."""
    for _ in range(attempts):
        response = call()
        if response.status_code != 503:
            return response
        time.sleep(min(float(response.headers.get("Retry-After") or 1), 1.0))
    return response


class Holds:
    """What racing factories hold, as a test sees it: each take is checked against the jobs held
    now (a job held twice is a problem), and counted; `most` is the most held at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held: set[str] = set()
        self.claims_of: Counter[str] = Counter()
        self.problems: list[str] = []
        self.most = 0

    def take(self, job_id: str, factory: str) -> None:
        with self.lock:
            if job_id in self.held:
                self.problems.append(f"{job_id} claimed by {factory} while held")
            self.held.add(job_id)
            self.claims_of[job_id] += 1
            self.most = max(self.most, len(self.held))

    def free(self, job_id: str) -> None:
        """Call before the write that frees it."""
        with self.lock:
            self.held.discard(job_id)


class Http:
    """A thin requests wrapper that names the server once, and sends the admin token that
    `serve` put in `FLEET_TOKEN` (as the CLI and client do), unless given `token=None`."""

    def __init__(self, url: str, key: str | None = None, token: str | None = ...) -> None:
        self.url = url
        self.session = requests.Session()
        if key:
            self.session.headers["x-functions-key"] = key
        token = os.environ.get("FLEET_TOKEN") if token is ... else token
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, json=None, **kw):
        return self.session.request(method, self.url + path, json=json, timeout=30, **kw)

    def get(self, path: str, **kw):
        return self.call("GET", path, **kw)

    def post(self, path: str, json=None, **kw):
        return self.call("POST", path, json, **kw)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Http:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.fixture(scope="session", autouse=True)
def no_outside_token():
    """No `FLEET_TOKEN` from the shell that runs the tests: only the token a test's server
    minted is ever sent (`serve`)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("FLEET_TOKEN", raising=False)
        yield


@pytest.fixture(params=["sqlite", "cosmos"])
def store_env(request) -> dict[str, str]:
    """The settings that point `fleet serve` at one store."""
    if request.param == "sqlite":
        return {"FLEET_STORE": "sqlite"}
    account = request.getfixturevalue("cosmos_account")
    return account.environ(database=f"e2e-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def serve(store_env, tmp_path, monkeypatch):
    """`with serve(env) as server:` — a `fleet serve` on this test's store, plus `env` (and `args`),
    with auth on as by default: the admin token it mints for a fresh store is put in
    `FLEET_TOKEN`, which `Http`, the CLI and the client send."""

    @contextlib.contextmanager
    def start(env: dict[str, str] | None = None, name: str = "fleet.db", args: tuple[str, ...] = ()):
        with running_server(env={**store_env, **(env or {})}, db=str(tmp_path / name), args=args) as handle:
            if handle.admin_token:
                monkeypatch.setenv("FLEET_TOKEN", handle.admin_token)
            yield handle

    return start


@pytest.fixture
def server(serve):
    with serve() as handle:
        yield handle


@pytest.fixture
def http(server):
    client = Http(server.url, token=server.admin_token)
    yield client
    client.close()
