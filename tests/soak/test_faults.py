"""Fault injection: the store stalls, refuses writes or cannot be opened under a real
`fleet serve`, and every request still answers within the store deadline — success, or `503`
problem+json with `Retry-After` — nothing is half-written, and the fleet resumes.

SQLite stalls by another connection holding the write lock; Cosmos by a TCP proxy between
`fleet serve` and the Cosmos server that stops moving bytes (`tests.support.proxy`).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import requests

from tests.soak import workload
from shared.stores.local_cosmos import CosmosAccount
from shared.stores.sqlite_store import LAYOUT_VERSION
from tests.support.faults import cosmos_behind_proxy, write_lock
from tests.support.proxy import TcpProxy
from shared.devhost.process import running_server

pytestmark = pytest.mark.e2e

#: The store deadline these tests run with (`FLEET_STORE_TIMEOUT_SECONDS`), in seconds.
DEADLINE = 1.0
#: What a request may take beyond its deadline on this busy 2-core machine (scheduling, the
#: HTTP round trip, the store calls before the one that waited).
SLACK = 2.0
#: The health check's own deadline (`shared.stores.probe.DEADLINE`).
HEALTH_DEADLINE = 2.0
FACTORIES = 4
SERVE_ARGS = ("--no-timers", "--log-level", "warning")


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def proxied_cosmos() -> Iterator[tuple[TcpProxy, dict[str, str]]]:
    """A Cosmos server of its own, reached only through a proxy: the proxy and the settings
    for a `fleet serve` on it."""
    with cosmos_behind_proxy() as (server, proxy, endpoint):
        account = CosmosAccount(endpoint, server.key, verify_tls=False, local=True)
        yield proxy, account.environ(database=f"faults-{uuid.uuid4().hex[:8]}")


def health(url: str) -> tuple[float, requests.Response]:
    started = time.monotonic()
    response = requests.get(f"{url}/fleet/health", timeout=30)
    return time.monotonic() - started, response


def load_through(server, stall: Callable[[], contextlib.AbstractContextManager]) -> list[workload.Factory]:
    """Factories load `server` continuously; mid-load the store stalls (inside `stall()`) until
    every factory has been answered 503, then recovers, and the load goes on until every
    factory has finished two more cycles. Returns the factories, for the checks."""
    factories = [workload.Factory(server.url, i, keep_alive=i % 2 == 0, tolerate_outage=True) for i in range(FACTORIES)]
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            workload.run(factories, stop=stop)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            failures.append(exc)

    runner = threading.Thread(target=run, name="load")
    runner.start()
    try:
        wait_for(lambda: failures or all(f.cycles_done >= 2 for f in factories), 60, "the load to warm up")
        with stall():
            wait_for(lambda: failures or all(f.outages for f in factories), 20, "every factory to meet the stall")
            took, answer = health(server.url)
            assert answer.status_code == 503 and not answer.json()["store"]["reachable"], answer.text
            assert took < HEALTH_DEADLINE + SLACK, took
        recovered = [f.cycles_done for f in factories]
        wait_for(lambda: failures or all(f.cycles_done >= n + 2 for f, n in zip(factories, recovered)), 60,
                 "every factory to finish two cycles after the store recovered")
    finally:
        stop.set()
        runner.join(60)
        for factory in factories:
            factory.close()
    if failures:
        raise failures[0]
    took, answer = health(server.url)
    assert answer.status_code == 200 and answer.json()["store"]["reachable"], answer.text
    return factories


def assert_answered_in_time_and_whole(server, factories: list[workload.Factory]) -> None:
    slowest = max(f.slowest for f in factories)
    outages = sum(sum(f.outages.values()) for f in factories)
    requests_sent = sum(f.requests for f in factories)
    print(f"\n{requests_sent} requests, {outages} answered 503, slowest {slowest:.2f} s (deadline {DEADLINE:g} s)")
    assert slowest < DEADLINE + SLACK
    assert workload.check_documents(server.url, factories) >= sum(len(f.acknowledged) for f in factories)


# Mid-load stalls, both stores


def test_a_sqlite_store_locked_mid_load_answers_in_time_and_the_fleet_resumes(tmp_path):
    db = str(tmp_path / "fleet.db")
    env = {"FLEET_STORE": "sqlite", "FLEET_STORE_TIMEOUT_SECONDS": str(DEADLINE), **workload.SERVER_ENV}
    with running_server(env=env, db=db, args=SERVE_ARGS) as server:
        factories = load_through(server, lambda: write_lock(db))
        assert_answered_in_time_and_whole(server, factories)


@pytest.mark.cosmos
def test_a_cosmos_endpoint_stalled_mid_load_answers_in_time_and_the_fleet_resumes(tmp_path):
    with proxied_cosmos() as (proxy, cosmos_env):
        env = {**cosmos_env, "FLEET_STORE_TIMEOUT_SECONDS": str(DEADLINE), **workload.SERVER_ENV}

        @contextlib.contextmanager
        def stalled() -> Iterator[None]:
            proxy.pause()
            try:
                yield
            finally:
                proxy.resume()

        with running_server(env=env, db=str(tmp_path / "unused.db"), args=SERVE_ARGS) as server:
            factories = load_through(server, stalled)
            assert_answered_in_time_and_whole(server, factories)


# One fault at a time, over HTTP


def submit(url: str, key: str, timeout: float = 10) -> tuple[float, requests.Response]:
    started = time.monotonic()
    response = requests.post(f"{url}/fleet/jobs", json={"productId": "web", "idempotencyKey": key}, timeout=timeout)
    return time.monotonic() - started, response


def assert_problem(response: requests.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == code, problem
    assert int(response.headers["Retry-After"]) >= 1
    return problem


def test_a_locked_sqlite_database_answers_503_store_busy_within_the_deadline(tmp_path):
    db = str(tmp_path / "fleet.db")
    env = {"FLEET_STORE_TIMEOUT_SECONDS": str(DEADLINE)}
    with running_server(env=env, db=db, args=SERVE_ARGS) as server:
        assert submit(server.url, "before")[1].status_code == 201
        with write_lock(db):
            took, answer = submit(server.url, "during")  # not SQLite's 30 s default

            assert_problem(answer, 503, "store_busy")
            assert DEADLINE * 0.8 < took < DEADLINE + SLACK, took
            assert requests.get(f"{server.url}/fleet/jobs?productId=web", timeout=10).status_code == 200  # reads go on
        assert submit(server.url, "during")[1].status_code == 201


def test_a_read_only_database_answers_503_store_unavailable_and_reads_go_on(tmp_path):
    # Given a database with a job in it, whose file is then made read-only
    db = str(tmp_path / "fleet.db")
    with running_server(db=db, args=SERVE_ARGS) as server:
        job = submit(server.url, "before")[1].json()
    os.chmod(db, 0o444)

    # When a server (obeying file modes, as a service account does) serves it
    with running_server(db=db, args=SERVE_ARGS, drop_file_override=True) as server:
        took, answer = submit(server.url, "after")

        # Then writes answer 503 store_unavailable (not 500), reads answer, health says why
        problem = assert_problem(answer, 503, "store_unavailable")
        assert problem["reason"] == "read_only" and took < DEADLINE + SLACK
        assert requests.get(f"{server.url}/fleet/jobs/{job['id']}", timeout=10).json()["stage"] == "queued"
        _, state = health(server.url)
        assert state.status_code == 503 and state.json()["store"] == {
            "kind": "SqliteStore", "reachable": False, "reason": "read_only"
        }
        assert "Traceback" not in server.log()


def test_an_unopenable_database_answers_503_store_unavailable(tmp_path):
    db = tmp_path / "fleet.db"
    db.mkdir()  # a directory where the file should be
    with running_server(db=str(db), args=SERVE_ARGS) as server:
        assert_problem(submit(server.url, "k")[1], 503, "store_unavailable")
        _, state = health(server.url)
        assert state.status_code == 503
        assert state.json()["store"] == {"kind": None, "reachable": False, "reason": "unavailable"}


def test_a_database_a_newer_version_laid_out_answers_503_and_is_left_as_it_is(tmp_path):
    # Given a database with a job in it, then stamped with a newer version's layout
    db = str(tmp_path / "fleet.db")
    with running_server(db=db, args=SERVE_ARGS) as server:
        job = submit(server.url, "before")[1].json()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {LAYOUT_VERSION + 1}")
    conn.close()
    schema = _schema(db)

    # When this version serves it
    with running_server(db=db, args=SERVE_ARGS) as server:
        answer = submit(server.url, "after")[1]
        read = requests.get(f"{server.url}/fleet/jobs/{job['id']}", timeout=10)

        # Then every call answers 503 store_unavailable saying why, and nothing in the file changed
        problem = assert_problem(answer, 503, "store_unavailable")
        assert "newer version" in problem["detail"], problem
        assert_problem(read, 503, "store_unavailable")
        assert health(server.url)[1].status_code == 503
        assert "Traceback" not in server.log()
    assert _schema(db) == schema


def _schema(db: str) -> tuple:
    """The layout version and the schema of the database at `db`."""
    conn = sqlite3.connect(db)
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        return version, conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()
    finally:
        conn.close()


def test_health_answers_within_its_deadline_while_sqlite_is_locked(tmp_path):
    db = str(tmp_path / "fleet.db")
    with running_server(db=db, args=SERVE_ARGS) as server:  # the default 5 s store deadline
        assert health(server.url)[1].status_code == 200
        with write_lock(db):
            took, answer = health(server.url)

            assert answer.status_code == 503 and answer.json()["store"]["reason"] == "timeout", answer.text
            assert took < HEALTH_DEADLINE + SLACK, took
        wait_for(lambda: health(server.url)[1].status_code == 200, 15, "health to recover")


@pytest.mark.cosmos
def test_health_answers_within_its_deadline_while_cosmos_stalls_and_shares_one_ping(tmp_path):
    with proxied_cosmos() as (proxy, env):
        with running_server(env=env, db=str(tmp_path / "unused.db"), args=SERVE_ARGS) as server:
            assert health(server.url)[1].status_code == 200
            threads = _threads(server.pid)
            proxy.pause()
            try:
                # When 20 health checks arrive while the endpoint is stalled
                with concurrent.futures.ThreadPoolExecutor(20) as pool:
                    answers = list(pool.map(lambda _: health(server.url), range(20)))
                # Then each answers within health's deadline, saying why
                for took, answer in answers:
                    assert answer.status_code == 503 and answer.json()["store"]["reason"] == "timeout", answer.text
                    assert took < HEALTH_DEADLINE + SLACK, took
                # ...and they left no thread behind each (one ping is in flight, on one worker)
                wait_for(lambda: _threads(server.pid) <= threads + 2, 10, "the health requests' threads to end")
            finally:
                proxy.resume()
            wait_for(lambda: health(server.url)[1].status_code == 200, 20, "health to recover")


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))
