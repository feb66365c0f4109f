"""`SqliteStore`: the embedded store, one SQLite file in WAL mode.

Documents live in one table keyed by (container, partition key, id), bodies as JSON. Queries
filter and order on `json_extract` expressions, and the expression indexes below make the
claim, listing and sweep queries index range scans, so their cost does not grow with the
number of documents. Each thread gets its own connection; every write is one statement, so
each is atomic on its document without an explicit transaction.
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

SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    container TEXT NOT NULL,
    pk        TEXT NOT NULL,
    id        TEXT NOT NULL,
    etag      TEXT NOT NULL,
    body      TEXT NOT NULL,
    PRIMARY KEY (container, pk, id)
) WITHOUT ROWID;
"""

#: (name, container, key expressions). A key is a dotted field, optionally with " DESC".
INDEXES: list[tuple[str, str, tuple[str, ...]]] = [
    # claim, fast path: queued jobs of a product by rankKey.
    ("jobs_rank", "jobs", ("@pk", "stage", "rankKey DESC", "createdAt")),
    # claim, bucket path: the head of each (priority, attempts) bucket by age.
    ("jobs_bucket", "jobs", ("@pk", "stage", "priority", "attempts", "createdAt")),
    # listings, newest first, with and without a product or a stage.
    ("jobs_product_created", "jobs", ("@pk", "createdAt")),
    ("jobs_product_stage_created", "jobs", ("@pk", "stage", "createdAt")),
    ("jobs_stage_created", "jobs", ("stage", "createdAt")),
    ("jobs_created", "jobs", ("createdAt",)),
    # sweeps and seats: leases by expiry and by holder.
    ("jobs_lease_expiry", "jobs", ("lease.expiresAt",)),
    ("jobs_lease_factory", "jobs", ("lease.factoryId",)),
    ("jobs_parent", "jobs", ("@pk", "parentId")),
    # sweep: products whose weight change is still re-keying jobs.
    ("jobs_rekeying", "jobs", ("rekeying",)),
    # sweep: runs whose cost is not yet on the budget.
    ("jobs_accrual", "jobs", ("accrualPending",)),
]


def column(field: str) -> str:
    """The SQL expression for a dotted document field (`@pk`: the partition-key column)."""
    if field == "@pk":
        return "pk"
    if field == "id":
        return "id"
    if not all(part.replace("_", "").isalnum() for part in field.split(".")):
        raise ValueError(f"bad field name {field!r}")
    return f"json_extract(body, '$.{field}')"


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
        self._keepalive.executescript(SCHEMA)
        for name, container, keys in INDEXES:
            exprs = ", ".join(
                column(k.removesuffix(" DESC")) + (" DESC" if k.endswith(" DESC") else "") for k in keys
            )
            self._keepalive.execute(
                f"CREATE INDEX IF NOT EXISTS {name} ON docs(container, {exprs}) WHERE container = '{container}'"
            )

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
        sets = [f"{_path(field)}, coalesce(json_extract(body, {_path(field)}), 0) + ?"]
        sets += [f"{_path(name)}, json(?)" for name in stamp]
        row = self._run(
            "INSERT INTO docs (container, pk, id, etag, body) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (container, pk, id) DO UPDATE SET "
            f"body = json_set(body, {', '.join(sets)}), etag = ? "
            "RETURNING body, etag",
            (container, partition_key, id, etag, body, by, *(json.dumps(v) for v in stamp.values()), uuid.uuid4().hex),
        ).fetchone()
        return _doc(row)

    def query(self, query: Query, continuation=None):
        sql = ["SELECT body, etag FROM docs WHERE container = ?"]
        params: list[Any] = [query.container]
        if query.partition_key is not None:
            sql.append("AND pk = ?")
            params.append(query.partition_key)
        for f in query.where:
            expr = column(f.field)
            if f.op == "in":
                values = list(f.value)
                if not values:
                    return Page([], None)
                sql.append(f"AND {expr} IN ({', '.join('?' * len(values))})")
                params.extend(values)
            elif f.value is None and f.op in ("=", "!="):
                sql.append(f"AND {expr} IS {'NOT ' if f.op == '!=' else ''}NULL")
            else:
                sql.append(f"AND {expr} {f.op} ?")
                params.append(f.value)
        order = [f"{column(name)}{' DESC' if desc else ''}" for name, desc in query.order_by]
        sql.append("ORDER BY " + ", ".join([*order, "id"]))
        offset = int(continuation) if continuation else 0
        sql.append("LIMIT ? OFFSET ?")
        params.extend([query.limit + 1, offset])
        rows = self._run(" ".join(sql), params).fetchall()
        more = len(rows) > query.limit
        return Page([_doc(r) for r in rows[: query.limit]], str(offset + query.limit) if more else None)

    def ping(self):
        self._run("SELECT 1").fetchone()

    def close(self):
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


def _path(field: str) -> str:
    """The quoted JSON path of a top-level field."""
    return column(field).removeprefix("json_extract(body, ").removesuffix(")")


def _encode(doc: dict[str, Any]) -> tuple[str, str]:
    return json.dumps(clean(doc), separators=(",", ":")), uuid.uuid4().hex


def _doc(row: tuple[str, str]) -> dict[str, Any]:
    doc = json.loads(row[0])
    doc["_etag"] = row[1]
    return doc
