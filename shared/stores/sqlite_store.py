"""`SqliteStore`: the embedded store, one SQLite file in WAL mode.

Documents live in one table keyed by (container, partition key, id), bodies as JSON; how
queries are turned into SQL, and the indexes that serve them, is `shared.stores.sqlite_query`. Each
thread gets its own connection; every write is one statement, so each is atomic on its
document without an explicit transaction.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from typing import Any

from fleet import errors
from fleet.store import Page, Query, Store, clean, partition_of
from shared.stores import sqlite_query

SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    container TEXT NOT NULL,
    pk        TEXT NOT NULL,
    id        TEXT NOT NULL,
    etag      TEXT NOT NULL,
    body      TEXT NOT NULL,
    PRIMARY KEY (container, pk, id)
) WITHOUT ROWID
"""

class SqliteStore(Store):
    def __init__(self, path: str = ".fleet/fleet.db") -> None:
        self.path = path
        if path != ":memory:" and os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        if path == ":memory:":
            # One shared in-memory database for every thread of this store.
            self.path = f"file:fleet-{uuid.uuid4().hex}?mode=memory&cache=shared"
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._keepalive = self._connect()
        _migrate(self._keepalive)

    # connections

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, uri=self.path.startswith("file:"), timeout=30, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA busy_timeout = 30000")
        if not self.path.startswith("file:"):
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        with self._lock:
            self._all.append(conn)
        return conn

    @property
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _run(self, sql: str, params: tuple | list = ()) -> sqlite3.Cursor:
        try:
            return self._conn.execute(sql, params)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise errors.StoreBusy(f"sqlite: {exc}") from exc
            raise

    # primitives

    def read(self, container, partition_key, id):
        row = self._run(
            "SELECT body, etag FROM docs WHERE container = ? AND pk = ? AND id = ?", (container, partition_key, id)
        ).fetchone()
        if row is None:
            raise errors.NotFound(f"{container}/{id} not found")
        return _doc(row)

    def create(self, container, doc):
        body, etag = _encode(doc)
        try:
            self._run(
                "INSERT INTO docs (container, pk, id, etag, body) VALUES (?, ?, ?, ?, ?)",
                (container, partition_of(container, doc), doc["id"], etag, body),
            )
        except sqlite3.IntegrityError:
            raise errors.Conflict(f"{container}/{doc['id']} already exists") from None
        return {**clean(doc), "_etag": etag}

    def replace(self, container, doc, etag):
        body, new_etag = _encode(doc)
        pk = partition_of(container, doc)
        cur = self._run(
            "UPDATE docs SET body = ?, etag = ? WHERE container = ? AND pk = ? AND id = ? AND etag = ?",
            (body, new_etag, container, pk, doc["id"], etag),
        )
        if cur.rowcount == 0:
            self.read(container, pk, doc["id"])  # raises NotFound if it is gone
            raise errors.PreconditionFailed(f"{container}/{doc['id']} changed since it was read")
        return {**clean(doc), "_etag": new_etag}

    def upsert(self, container, doc):
        body, etag = _encode(doc)
        self._run(
            "INSERT INTO docs (container, pk, id, etag, body) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (container, pk, id) DO UPDATE SET body = excluded.body, etag = excluded.etag",
            (container, partition_of(container, doc), doc["id"], etag, body),
        )
        return {**clean(doc), "_etag": etag}

    def delete(self, container, partition_key, id):
        cur = self._run("DELETE FROM docs WHERE container = ? AND pk = ? AND id = ?", (container, partition_key, id))
        if cur.rowcount == 0:
            raise errors.NotFound(f"{container}/{id} not found")

    def increment(self, container, partition_key, id, field, by, initial, stamp=None):
        stamp = stamp or {}
        body, etag = _encode({**initial, **stamp, field: by})
        sets = [f"{sqlite_query.path(field)}, coalesce(json_extract(body, {sqlite_query.path(field)}), 0) + ?"]
        sets += [f"{sqlite_query.path(name)}, json(?)" for name in stamp]
        row = self._run(
            "INSERT INTO docs (container, pk, id, etag, body) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (container, pk, id) DO UPDATE SET "
            f"body = json_set(body, {', '.join(sets)}), etag = ? "
            "RETURNING body, etag",
            (container, partition_key, id, etag, body, by, *(json.dumps(v) for v in stamp.values()), uuid.uuid4().hex),
        ).fetchone()
        return _doc(row)

    def query(self, query: Query, continuation=None):
        offset = sqlite_query.offset(continuation)
        statement = sqlite_query.select(query, offset)
        if statement is None:
            return Page([], None)
        rows = self._run(*statement).fetchall()
        more = len(rows) > query.limit
        return Page([_doc(r) for r in rows[: query.limit]], str(offset + query.limit) if more else None)

    def explain(self, query: Query, continuation: str | None = None) -> str:
        """SQLite's plan for one page of `query`, one `EXPLAIN QUERY PLAN` step a line ("" when
        the query cannot match anything and runs no SQL)."""
        statement = sqlite_query.select(query, sqlite_query.offset(continuation))
        if statement is None:
            return ""
        sql, params = statement
        return "\n".join(row[3] for row in self._run("EXPLAIN QUERY PLAN " + sql, params).fetchall())

    def ping(self):
        self._run("SELECT 1").fetchone()

    def close(self):
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


def _migrate(conn: sqlite3.Connection) -> None:
    """Create the table and make its indexes exactly `sqlite_query.INDEXES`: a file an older version wrote
    gets an index whose definition changed rebuilt, and one no query uses any more dropped.
    One transaction, so processes opening the same file at once do this one at a time."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(SCHEMA)
        wanted = {name: sqlite_query.index_sql(name, container, keys) for name, container, keys in sqlite_query.INDEXES}
        existing = dict(
            conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'docs' AND sql NOT NULL"
            )
        )
        for name, sql in existing.items():
            if wanted.get(name) != sql:
                conn.execute(f'DROP INDEX "{name}"')
        for name, sql in wanted.items():
            if existing.get(name) != sql:
                conn.execute(sql)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _encode(doc: dict[str, Any]) -> tuple[str, str]:
    return json.dumps(clean(doc), separators=(",", ":")), uuid.uuid4().hex


def _doc(row: tuple[str, str]) -> dict[str, Any]:
    doc = json.loads(row[0])
    doc["_etag"] = row[1]
    return doc
