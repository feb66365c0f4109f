"""`SqliteStore`'s connections: a bounded pool, every wait within the store deadline, and
driver errors converted at the edge (`shared.stores.sqlite_pool`, `shared.stores.sqlite_store`).

The dev host serves each request on a new thread; these tests pin that no number of threads
makes the store hold more than `pool_size` connections, and that no call waits longer than its
deadline for a connection or a lock.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator

import pytest

from fleet import errors
from fleet.errors import StoreFault
from shared import config
from shared.stores import sqlite_store
from shared.stores.sqlite_store import SqliteStore
from tests.support.faults import write_lock

#: How much later than its deadline a call may return on a busy machine.
SLACK = 0.5


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "fleet.db")


@contextlib.contextmanager
def opened(path: str, **options) -> Iterator[SqliteStore]:
    store = SqliteStore(path, **options)
    try:
        yield store
    finally:
        store.close()


def timed(call) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - returned to the test
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


# The pool is bounded


def test_calls_from_ever_new_threads_share_at_most_pool_size_connections(path):
    with opened(path, pool_size=4) as store:
        store.upsert("factories", {"id": "f1"})
        before = open_files()

        def request() -> None:
            store.upsert("factories", {"id": "f1"})
            store.read("factories", "f1", "f1")

        # When 300 threads, 30 at a time, each make store calls and end
        for _ in range(10):
            threads = [threading.Thread(target=request) for _ in range(30)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        # Then the store holds at most its 4 connections (2 descriptors each: file and -wal)
        assert store._pool.open_connections <= 4
        assert open_files() <= before + 2 * 3


def test_a_call_waits_for_a_free_connection_at_most_the_deadline(path):
    with opened(path, pool_size=1, timeout=0.3) as store:
        with store.connection():  # the only connection, lent out
            took, exc = timed(lambda: store.read("factories", "f1", "f1"))

        assert isinstance(exc, errors.StoreBusy) and exc.reason is StoreFault.TIMEOUT
        assert 0.25 < took < 0.3 + SLACK


def test_a_waiting_call_gets_the_connection_as_soon_as_it_is_returned(path):
    with opened(path, pool_size=1, timeout=5) as store:
        store.upsert("factories", {"id": "f1"})
        lent = store.connection()
        lent.__enter__()
        threading.Timer(0.1, lambda: lent.__exit__(None, None, None)).start()

        took, exc = timed(lambda: store.read("factories", "f1", "f1"))

        assert exc is None and took < 1


def test_a_connection_left_in_a_transaction_is_closed_not_lent_again(path):
    with opened(path, pool_size=1) as store:
        with store.connection() as conn:
            conn.execute("BEGIN")

        store.upsert("factories", {"id": "f1"})  # a fresh connection: no transaction in the way

        assert store.read("factories", "f1", "f1")["id"] == "f1"


def test_closing_the_store_closes_its_connections_and_refuses_later_calls(path):
    store = SqliteStore(path)
    store.upsert("factories", {"id": "f1"})

    store.close()

    assert store._pool.open_connections == 0
    with pytest.raises(errors.StoreUnavailable):
        store.read("factories", "f1", "f1")


def test_the_in_memory_store_is_one_database_for_every_thread():
    store = SqliteStore(":memory:")
    writer = threading.Thread(target=lambda: store.upsert("factories", {"id": "f1"}))
    writer.start()
    writer.join()

    read = []
    reader = threading.Thread(target=lambda: read.append(store.read("factories", "f1", "f1")))
    reader.start()
    reader.join()

    assert read[0]["id"] == "f1"
    store.close()


# Every wait is bounded by the deadline


def test_a_locked_database_makes_writes_busy_within_the_deadline_and_reads_go_on(path):
    with opened(path, timeout=0.5) as store:
        store.upsert("factories", {"id": "f1"})
        with write_lock(path):
            took, exc = timed(lambda: store.upsert("factories", {"id": "f2"}))

            assert isinstance(exc, errors.StoreBusy) and exc.reason is StoreFault.BUSY
            assert 0.4 < took < 0.5 + SLACK  # SQLite's own default would be 30 s
            assert store.read("factories", "f1", "f1")["id"] == "f1"  # WAL: readers are not blocked
        store.upsert("factories", {"id": "f2"})


def test_the_wait_for_a_connection_counts_against_the_deadline(path):
    with opened(path, pool_size=1, timeout=1.0) as store:
        store.upsert("factories", {"id": "f1"})
        with write_lock(path):
            lent = store.connection()
            lent.__enter__()
            threading.Timer(0.6, lambda: lent.__exit__(None, None, None)).start()

            # 0.6 s waiting for the connection leaves 0.4 s to wait on the lock: 1 s in all
            took, exc = timed(lambda: store.upsert("factories", {"id": "f2"}))

        assert isinstance(exc, errors.StoreBusy)
        assert 0.9 < took < 1.0 + SLACK


def test_opening_a_database_locked_past_the_deadline_is_busy(path):
    SqliteStore(path).close()
    with write_lock(path):
        took, exc = timed(lambda: SqliteStore(path, timeout=0.3))

    assert isinstance(exc, errors.StoreBusy) and took < 0.3 + SLACK


# A store that cannot be written is unavailable, and recovers when it can be again


def test_a_read_only_connection_makes_writes_unavailable_and_is_replaced(path):
    with opened(path, pool_size=1) as store:
        store.upsert("factories", {"id": "f1"})
        with store.connection() as conn:
            conn.execute("PRAGMA query_only = 1")  # SQLite refuses writes as for a read-only file

        with pytest.raises(errors.StoreUnavailable) as refused:
            store.upsert("factories", {"id": "f2"})
        assert refused.value.reason is StoreFault.READ_ONLY and refused.value.code == "store_unavailable"

        store.upsert("factories", {"id": "f2"})  # the read-only connection was dropped

        assert store.read("factories", "f2", "f2")["id"] == "f2"


def test_a_full_database_makes_writes_unavailable(path):
    with opened(path, pool_size=1) as store:
        store.upsert("factories", {"id": "f1"})
        with store.connection() as conn:
            (pages,) = conn.execute("PRAGMA page_count").fetchone()
            conn.execute(f"PRAGMA max_page_count = {pages}")

        with pytest.raises(errors.StoreUnavailable) as refused:
            store.upsert("factories", {"id": "f2", "blob": "x" * 200_000})

        assert refused.value.reason is StoreFault.FULL
        assert store.read("factories", "f1", "f1")["id"] == "f1"


def test_ping_proves_a_write_could_be_made(path):
    with opened(path, pool_size=1, timeout=0.3) as store:
        store.ping()
        with write_lock(path):
            with pytest.raises(errors.StoreBusy):
                store.ping()
        with store.connection() as conn:
            conn.execute("PRAGMA query_only = 1")
        with pytest.raises(errors.StoreUnavailable) as refused:
            store.ping()
        assert refused.value.reason is StoreFault.READ_ONLY
        store.ping()  # a fresh connection


def test_a_directory_where_the_database_should_be_is_unavailable(tmp_path):
    with pytest.raises(errors.StoreUnavailable) as refused:
        SqliteStore(str(tmp_path))

    assert refused.value.reason is StoreFault.UNAVAILABLE


def test_a_database_under_a_file_is_unavailable(tmp_path):
    (tmp_path / "file").write_text("not a directory")

    with pytest.raises(errors.StoreUnavailable):
        SqliteStore(str(tmp_path / "file" / "fleet.db"))


def test_a_file_that_is_not_a_database_is_unavailable(path):
    with open(path, "wb") as file:
        file.write(b"this is not a database" * 100)

    with pytest.raises(errors.StoreUnavailable) as refused:
        SqliteStore(path)

    assert refused.value.reason is StoreFault.UNAVAILABLE


@pytest.mark.parametrize(
    "code, expected, fault",
    [
        (5, errors.StoreBusy, StoreFault.BUSY),  # SQLITE_BUSY
        (517, errors.StoreBusy, StoreFault.BUSY),  # SQLITE_BUSY_SNAPSHOT: extended codes count by their primary
        (6, errors.StoreBusy, StoreFault.BUSY),  # SQLITE_LOCKED
        (8, errors.StoreUnavailable, StoreFault.READ_ONLY),  # SQLITE_READONLY
        (1032, errors.StoreUnavailable, StoreFault.READ_ONLY),  # SQLITE_READONLY_DBMOVED
        (13, errors.StoreUnavailable, StoreFault.FULL),  # SQLITE_FULL
        (3, errors.StoreUnavailable, StoreFault.DENIED),  # SQLITE_PERM
        (14, errors.StoreUnavailable, StoreFault.UNAVAILABLE),  # SQLITE_CANTOPEN
        (10, errors.StoreUnavailable, StoreFault.UNAVAILABLE),  # SQLITE_IOERR
        (26, errors.StoreUnavailable, StoreFault.UNAVAILABLE),  # SQLITE_NOTADB
    ],
)
def test_sqlite_errors_become_the_ports_errors(code, expected, fault):
    exc = sqlite3.OperationalError("boom")
    exc.sqlite_errorcode = code

    domain = sqlite_store.converted(exc)

    assert isinstance(domain, expected) and domain.reason is fault


@pytest.mark.parametrize("code", [1, 19, 21])  # SQLITE_ERROR (bad SQL), CONSTRAINT, MISUSE: bugs or outcomes
def test_other_sqlite_errors_are_no_store_fault(code):
    exc = sqlite3.OperationalError("boom")
    exc.sqlite_errorcode = code

    assert sqlite_store.converted(exc) is None


# The deadline setting


@pytest.mark.parametrize("raw, seconds", [(None, 5.0), ("", 5.0), ("2", 2.0), ("0.5", 0.5), ("300", 300.0)])
def test_the_store_deadline_comes_from_the_environment(raw, seconds):
    env = {} if raw is None else {"FLEET_STORE_TIMEOUT_SECONDS": raw}

    assert config.store_timeout(env) == seconds


@pytest.mark.parametrize("raw", ["0", "-1", "301", "nan", "inf", "five"])
def test_a_store_deadline_that_is_no_bounded_wait_is_refused(raw):
    with pytest.raises(ValueError, match="FLEET_STORE_TIMEOUT_SECONDS"):
        config.store_timeout({"FLEET_STORE_TIMEOUT_SECONDS": raw})


def test_the_sqlite_store_gets_the_deadline(path):
    store = config.store_from({"FLEET_DB": path, "FLEET_STORE_TIMEOUT_SECONDS": "1.5"})

    assert isinstance(store, SqliteStore) and store.timeout == 1.5
    store.close()
