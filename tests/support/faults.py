"""Faults the store tests cause on purpose: another writer holding a SQLite database's write
lock, and a local Cosmos-compatible server reachable only through a proxy the test can pause."""
from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

from shared.stores.local_cosmos import CosmosServer, ServerUnavailable, start_cosmos_server
from tests.support.cosmos import unavailable
from tests.support.proxy import TcpProxy


@contextlib.contextmanager
def write_lock(path: str) -> Iterator[None]:
    """Another writer holding the SQLite database's write lock for the block."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


@contextlib.contextmanager
def cosmos_behind_proxy() -> Iterator[tuple[CosmosServer, TcpProxy, str]]:
    """A Cosmos server of its own, whose account document names the proxy, so that every call
    passes the proxy: the server, the proxy, and the endpoint to give a client. Skips (fails
    under `CI=true`) where the server cannot start."""
    with TcpProxy() as proxy:
        try:
            server = start_cosmos_server(advertised_port=proxy.port)
        except ServerUnavailable as exc:
            unavailable(str(exc))
        try:
            proxy.forward_to(int(server.endpoint.rstrip("/").rsplit(":", 1)[1]))
            yield server, proxy, f"https://127.0.0.1:{proxy.port}/"
        finally:
            server.stop()
