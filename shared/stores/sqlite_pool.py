"""`Pool`: a bounded set of SQLite connections, each lent to one caller at a time.

The dev host serves every request on a thread of its own, so connections must not belong to
threads: a pool keeps at most `size` of them, opened on first need and reused, and a store call
borrows one for the length of one statement. However many requests come and go, the process
holds at most `size` connections (two file descriptors each: the database and its `-wal`).

Every wait is bounded by the pool's `timeout` (the store deadline): waiting for a free
connection, and then waiting on another process's lock (SQLite's busy timeout is set, on each
borrow, to what is left of the deadline, rounded down to a tenth of a second: a connection
already set to that is not set again, so a borrow that did not wait costs no statement). A
wait that runs out raises `StoreBusy`.
"""
from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator

from fleet import errors

#: Primary SQLite result codes after which a connection is still good for the next caller:
#: a lock held elsewhere (SQLITE_BUSY, SQLITE_LOCKED) and a refused constraint. After any other
#: database error (read-only, I/O, full, corrupt...) the connection is closed and the next
#: borrower opens a fresh one, which sees the file as it is now (e.g. writable again).
REUSABLE_CODES = frozenset({5, 6, 19})


class Pool:
    """At most `size` connections made by `connect`, lent one borrower at a time."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], size: int, timeout: float) -> None:
        if size < 1:
            raise ValueError("a pool needs at least one connection")
        self.size = size
        self.timeout = timeout
        self._connect = connect
        self._free = threading.BoundedSemaphore(size)  # one permit per connection that may be lent
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []  # last returned, first lent: warm caches
        self._lent: set[sqlite3.Connection] = set()
        #: Each open connection's busy timeout, in milliseconds, as last set.
        self._busy: dict[sqlite3.Connection, int] = {}
        self._closed = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """Borrow a connection for the block. Waits at most `timeout` for one to be free, then
        raises `StoreBusy`; errors from opening one propagate (as `sqlite3.Error`)."""
        started = time.monotonic()
        if not self._free.acquire(timeout=self.timeout):
            raise errors.StoreBusy(
                f"sqlite: all {self.size} connections stayed busy for {self.timeout:g} s",
                reason=errors.StoreFault.TIMEOUT,
            )
        try:
            conn = self._take()
        except BaseException:
            self._free.release()
            raise
        try:
            left = max(0.0, self.timeout - (time.monotonic() - started))
            busy = max(1, int(left * 10) * 100)
            if self._busy.get(conn) != busy:
                conn.execute(f"PRAGMA busy_timeout = {busy}")
                self._busy[conn] = busy
            yield conn
        except BaseException as exc:
            self._give_back(conn, reusable=_reusable(exc))
            raise
        else:
            self._give_back(conn, reusable=True)

    def close(self) -> None:
        """Close every idle connection now and every lent one when it comes back; a borrow
        after this raises `StoreUnavailable`."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            self._busy.pop(conn, None)
            conn.close()

    @property
    def open_connections(self) -> int:
        """Connections open now, idle or lent (for tests and health)."""
        with self._lock:
            return len(self._idle) + len(self._lent)

    def _take(self) -> sqlite3.Connection:
        with self._lock:
            if self._closed:
                raise errors.StoreUnavailable("sqlite: the store is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()  # outside the lock: opening may wait on the file
        with self._lock:
            self._lent.add(conn)
        return conn

    def _give_back(self, conn: sqlite3.Connection, reusable: bool) -> None:
        with self._lock:
            self._lent.discard(conn)
            keep = reusable and not self._closed and not conn.in_transaction
            if keep:
                self._idle.append(conn)
        if not keep:
            self._busy.pop(conn, None)
            conn.close()
        self._free.release()


def _reusable(exc: BaseException) -> bool:
    """Whether a connection whose statement raised `exc` may serve the next borrower."""
    if isinstance(exc, sqlite3.Error):
        return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in REUSABLE_CODES
    return not isinstance(exc, (KeyboardInterrupt, SystemExit))
