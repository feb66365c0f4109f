"""End-to-end: a real `fleet serve` subprocess on a free port, driven over HTTP."""
from __future__ import annotations

import pytest
import requests

from tests.support.server import running_server


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


@pytest.fixture
def server(tmp_path):
    with running_server(db=str(tmp_path / "fleet.db")) as handle:
        yield handle


@pytest.fixture
def http(server):
    client = Http(server.url)
    yield client
    client.close()
