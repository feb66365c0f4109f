"""End-to-end: a real `fleet serve` subprocess on a free port, driven over HTTP — once over
the embedded SQLite store and once over Cosmos (the local Cosmos-compatible server, or the
account named by `COSMOS_ENDPOINT`), each test with a fresh database."""
from __future__ import annotations

import contextlib
import uuid

import pytest
import requests

from shared.devhost.process import running_server
from tests.support.cosmos import cosmos_account, cosmos_server  # noqa: F401 (fixtures)


class Http:
    """A thin requests wrapper that names the server once."""

    def __init__(self, url: str, key: str | None = None) -> None:
        self.url = url
        self.session = requests.Session()
        if key:
            self.session.headers["x-functions-key"] = key

    def call(self, method: str, path: str, json=None, **kw):
        return self.session.request(method, self.url + path, json=json, timeout=30, **kw)

    def get(self, path: str, **kw):
        return self.call("GET", path, **kw)

    def post(self, path: str, json=None, **kw):
        return self.call("POST", path, json, **kw)

    def close(self) -> None:
        self.session.close()


@pytest.fixture(scope="session", autouse=True)
def auth_off():
    """The end-to-end tests that are not about credentials serve with FLEET_AUTH=off (every
    `fleet serve` inherits this environment); `test_auth.py` turns auth on in its own env."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLEET_AUTH", "off")
        yield


@pytest.fixture(params=["sqlite", "cosmos"])
def store_env(request) -> dict[str, str]:
    """The settings that point `fleet serve` at one store."""
    if request.param == "sqlite":
        return {"FLEET_STORE": "sqlite"}
    account = request.getfixturevalue("cosmos_account")
    return account.environ(database=f"e2e-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def serve(store_env, tmp_path):
    """`with serve(env) as server:` — a `fleet serve` on this test's store, plus `env` (and `args`)."""

    @contextlib.contextmanager
    def start(env: dict[str, str] | None = None, name: str = "fleet.db", args: tuple[str, ...] = ()):
        with running_server(env={**store_env, **(env or {})}, db=str(tmp_path / name), args=args) as handle:
            yield handle

    return start


@pytest.fixture
def server(serve):
    with serve() as handle:
        yield handle


@pytest.fixture
def http(server):
    client = Http(server.url)
    yield client
    client.close()
