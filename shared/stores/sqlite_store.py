"""`SqliteStore`: the embedded store, one SQLite file in WAL mode.

Documents live in one table keyed by (container, partition key, id), bodies as JSON, with the
fields the indexes key on also in key columns of their own (`sqlite_query.KEYED`; what a write
sets in them is `shared.stores.sqlite_keys`); how queries are turned into SQL, and the indexes
that serve them, is `shared.stores.sqlite_query`.
The few large fields a container's queries never touch (`sqlite_query.COLD`: a job's `bodyMd`)
live in a second table, `cold`, beside their document, so that a write re-keys and rewrites a
small body. A write of a document without such fields is one statement, atomic on its own;
one with them writes both rows in one transaction. A patch applies its operations to the
stored JSON in one statement conditional on the ETag (one it cannot apply so, or one of a
cold field, reads the document, applies them here, and writes it whole as a replace does).

Connections come from a bounded pool (`shared.stores.sqlite_pool`): each store call borrows one
for its statement (or transaction) and gives it back, so a process holds at most `pool_size` connections
however many requests it serves. Every call answers within `timeout` seconds (the store
deadline, `FLEET_STORE_TIMEOUT_SECONDS`): the wait for a free connection and the wait on
another process's lock both count against it.

Driver errors are converted here, at the edge: a lock held past the deadline → `StoreBusy`; a
database that cannot be written or opened (read-only, full, permission denied, missing
directory, not a database, I/O error) → `StoreUnavailable` with its `StoreFault`.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any

from fleet import errors
from fleet.store import MAX_PATCH_OPS, Op, Page, Query, Store, clean, partition_of, projected
from shared.stores import sqlite_keys, sqlite_pool, sqlite_query

#: The key columns (`sqlite_query.KEYED`) follow `body`: `_migrate` adds them, to a new file as
#: to one an older version wrote.
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
#: The cold halves of documents (`sqlite_query.COLD`), keyed as their documents are.
COLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS cold (
    container TEXT NOT NULL,
    pk        TEXT NOT NULL,
    id        TEXT NOT NULL,
    body      TEXT NOT NULL,
    PRIMARY KEY (container, pk, id)
) WITHOUT ROWID
"""

#: The version of the file's layout (`SCHEMA`, `COLD_SCHEMA` and `sqlite_query`'s key columns
#: and indexes), kept in the file's `PRAGMA user_version`: `_migrate` lays out a file of an older
#: one (0: a new file, or one written before the layout had a version) as this version's and
#: stamps it; a file of a newer one it leaves alone, refusing to open it (its own indexes would
#: replace the newer version's under that version's feet). Raise it with any change of the
#: layout (`tests/conformance/test_sqlite_layout.py` pins what it covers).
LAYOUT_VERSION = 2

#: Connections a file store keeps at most: the dev host's concurrent requests share them.
POOL_SIZE = 8
#: Seconds a store call may take before it gives up (`FLEET_STORE_TIMEOUT_SECONDS`' default).
TIMEOUT = 5.0

#: Primary SQLite result code → what it means to an operator. Codes not here (a malformed
#: statement, a constraint) are bugs or domain outcomes, not store faults.
FAULTS: dict[int, errors.StoreFault] = {
    3: errors.StoreFault.DENIED,  # SQLITE_PERM
    5: errors.StoreFault.BUSY,  # SQLITE_BUSY: another connection held the lock past the deadline
    6: errors.StoreFault.BUSY,  # SQLITE_LOCKED: a table lock (shared-cache in-memory databases)
    8: errors.StoreFault.READ_ONLY,  # SQLITE_READONLY: file mode, read-only mount, file moved away
    10: errors.StoreFault.UNAVAILABLE,  # SQLITE_IOERR
    11: errors.StoreFault.UNAVAILABLE,  # SQLITE_CORRUPT
    13: errors.StoreFault.FULL,  # SQLITE_FULL
    14: errors.StoreFault.UNAVAILABLE,  # SQLITE_CANTOPEN
    15: errors.StoreFault.BUSY,  # SQLITE_PROTOCOL: a WAL lock race that did not settle
    22: errors.StoreFault.UNAVAILABLE,  # SQLITE_NOLFS
    23: errors.StoreFault.DENIED,  # SQLITE_AUTH
    26: errors.StoreFault.UNAVAILABLE,  # SQLITE_NOTADB
}


class SqliteStore(Store):
    """The store port over one SQLite file (or `":memory:"`: one in-memory database shared by
    every thread of this store, for tests).

    `timeout` is the store deadline in seconds; `pool_size` the most connections kept open.
    Opening a database that cannot be used raises `StoreUnavailable` (or `StoreBusy` while
    another process holds it locked past the deadline).
    """

    def __init__(self, path: str = ".fleet/fleet.db", timeout: float = TIMEOUT, pool_size: int = POOL_SIZE) -> None:
        self.path = path
        self.timeout = timeout
        self._keepalive: sqlite3.Connection | None = None
        memory = path == ":memory:"
        if memory:
            self.path = f"file:fleet-{uuid.uuid4().hex}?mode=memory&cache=shared"
            # Shared-cache connections refuse each other's table locks at once (SQLITE_LOCKED,
            # no busy wait), so an in-memory store lends one connection at a time.
            pool_size = 1
        try:
            if not memory and not path.startswith("file:") and os.path.dirname(path):  # a URI names its own
                os.makedirs(os.path.dirname(path), exist_ok=True)
        except OSError as exc:
            denied = isinstance(exc, PermissionError)
            fault = errors.StoreFault.DENIED if denied else errors.StoreFault.UNAVAILABLE
            raise errors.StoreUnavailable(f"sqlite: cannot create the directory of {path}: {exc}", fault) from exc
        self._pool = sqlite_pool.Pool(self._connect, pool_size, timeout)
        try:
            with _converted():
                if memory:
                    self._keepalive = self._connect()  # the database lives as long as one connection to it
                with self._pool.connection() as conn:
                    _migrate(conn, "the in-memory database" if memory else path)
        except BaseException:
            self.close()  # an opening that fails keeps no connection open
            raise

    # connections

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            uri=self.path.startswith("file:"),
            timeout=self.timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            if not self.path.startswith("file:"):
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """Borrow a pooled connection for maintenance (`ANALYZE`) and tests; errors are not
        converted."""
        with self._pool.connection() as conn:
            yield conn

    def _run(self, sql: str, params: tuple | list = ()) -> tuple[list[Any], int]:
        """Run one statement on a borrowed connection: its rows and its row count."""
        with _converted(), self._pool.connection() as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall(), cursor.rowcount

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A borrowed connection in a write transaction (`BEGIN IMMEDIATE`: the write lock is
        waited for up front, within the deadline), committed when the block ends, rolled back
        if it raises: a document and its cold half are written together or not at all."""
        with _converted(), self._pool.connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # primitives

    def read(self, container, partition_key, id):
        rows, _ = self._run(
            f"SELECT body, {_cold_of(container)}, etag FROM docs WHERE container = ? AND pk = ? AND id = ?",
            (container, partition_key, id),
        )
        if not rows:
            raise errors.NotFound(f"{container}/{id} not found")
        return _doc(rows[0])

    def create(self, container, doc):
        (hot, cold), etag = _split(container, doc), _etag()
        key = (container, partition_of(container, doc), doc["id"])
        try:
            self._write(key, _insert(container), (*key, etag, hot, *sqlite_keys.of_doc(container, doc)), cold, fresh=True)
        except sqlite3.IntegrityError:
            raise errors.Conflict(f"{container}/{doc['id']} already exists") from None
        return {**clean(doc), "_etag": etag}

    def replace(self, container, doc, etag):
        pk = partition_of(container, doc)
        new_etag = self._rewrite(container, pk, doc["id"], doc, etag)
        if new_etag is None:
            self.read(container, pk, doc["id"])  # raises NotFound if it is gone
            raise errors.PreconditionFailed(f"{container}/{doc['id']} changed since it was read")
        return {**clean(doc), "_etag": new_etag}

    def _rewrite(self, container: str, pk: str, id: str, doc: dict[str, Any], etag: str) -> str | None:
        """Write `doc` whole over the document stored with `etag`: its new ETag, or None if
        the ETag moved (or it is gone)."""
        (hot, cold), new_etag = _split(container, doc), _etag()
        keys = sqlite_keys.of_doc(container, doc)
        count = self._write((container, pk, id), _update(container), (hot, *keys, new_etag, container, pk, id, etag), cold)
        return new_etag if count else None

    def _write(
        self, key: tuple[str, str, str], sql: str, params: tuple, cold: str | None, fresh: bool = False
    ) -> int:
        """Run the write `sql` on the document `key` names and, in a container that keeps
        fields cold, store its cold half `cold` (None: drop any it had) in the same
        transaction, if the statement wrote the row; its row count. One statement alone where
        there is nothing to store beside it: another container's, or a new document (`fresh`)
        without cold fields, which has none to drop."""
        if key[0] not in sqlite_query.COLD or (fresh and cold is None):
            return self._run(sql, params)[1]
        with self._transaction() as conn:
            count = conn.execute(sql, params).rowcount
            if count:
                _write_cold(conn, key, cold)
            return count

    def patch(self, container, partition_key, id, ops, etag, answer=False):
        if len(ops) > MAX_PATCH_OPS:
            raise ValueError(f"a patch carries at most {MAX_PATCH_OPS} operations, not {len(ops)}")
        cold = sqlite_query.COLD.get(container, frozenset())
        statement = None if any(op.field in cold for op in ops) else _patch_in_place(container, ops)
        if statement is not None:
            # One UPDATE applies the operations to the stored JSON: the document is not read.
            # It changes nothing if the ETag moved or an operation does not apply (removing an
            # absent field, appending to what is not an array); the read below tells which.
            sql, params = statement
            new_etag = _etag()
            if answer:
                rows, _ = self._run(
                    sql + f" RETURNING body, {_cold_of(container)}, etag",
                    (*params, new_etag, container, partition_key, id, etag),
                )
                if rows:
                    return _doc(rows[0])
            else:
                _, count = self._run(sql, (*params, new_etag, container, partition_key, id, etag))
                if count:
                    return {"_etag": new_etag}
        stored = self.read(container, partition_key, id)
        if stored["_etag"] != etag:
            raise errors.PreconditionFailed(f"{container}/{id} changed since it was read")
        doc = patched(stored, ops)
        new_etag = self._rewrite(container, partition_key, id, doc, etag)
        if new_etag is None:
            self.read(container, partition_key, id)  # raises NotFound if it is gone
            raise errors.PreconditionFailed(f"{container}/{id} changed since it was read")
        return {**doc, "_etag": new_etag} if answer else {"_etag": new_etag}

    def upsert(self, container, doc):
        (hot, cold), etag = _split(container, doc), _etag()
        key = (container, partition_of(container, doc), doc["id"])
        self._write(key, _upsert(container), (*key, etag, hot, *sqlite_keys.of_doc(container, doc)), cold)
        return {**clean(doc), "_etag": etag}

    def delete(self, container, partition_key, id):
        key = (container, partition_key, id)
        if self._write(key, "DELETE FROM docs WHERE container = ? AND pk = ? AND id = ?", key, None) == 0:
            raise errors.NotFound(f"{container}/{id} not found")

    def increment(self, container, partition_key, id, field, by, initial, stamp=None, also=None):
        stamp, added = stamp or {}, {field: by, **(also or {})}
        if any(name in sqlite_query.COLD.get(container, ()) for name in (*initial, *stamp)):
            raise ValueError(f"an increment keeps its document whole: it cannot hold {sorted(sqlite_query.COLD[container])}")
        fresh = {**initial, **stamp, **added}
        body, etag = _encode(fresh)
        sets = [f"{sqlite_query.path(name)}, coalesce(json_extract(body, {sqlite_query.path(name)}), 0) + ?" for name in added]
        sets += [f"{sqlite_query.path(name)}, json(?)" for name in stamp]
        changes = [*added.values(), *(json.dumps(v) for v in stamp.values())]
        new_body = f"json_set(body, {', '.join(sets)})"
        # A keyed field the increment changes: its column is read out of the body it writes.
        keyed = [f for f in sqlite_query.KEYED.get(container, ()) if f.partition(".")[0] in (*added, *stamp)]
        rekeyed = f", {sqlite_keys.read_out(keyed, new_body)}" if keyed else ""
        rows, _ = self._run(
            _insert(container) + " ON CONFLICT (container, pk, id) DO UPDATE SET "
            f"body = {new_body}{rekeyed}, etag = ? RETURNING body, NULL, etag",
            (
                container, partition_key, id, etag, body, *sqlite_keys.of_doc(container, fresh),
                *changes, *changes * len(keyed), _etag(),
            ),
        )
        return _doc(rows[0])

    def query(self, query: Query, continuation=None):
        statements = sqlite_query.select(query, continuation)
        if statements is None:
            return Page([], None)
        rows = self._read(statements, query.limit + 1)
        items = rows[: query.limit]
        more = len(rows) > query.limit
        read = functools.partial(_projected, query.projection(), query.with_etags) if query.fields else _doc
        return Page([read(r) for r in items], sqlite_query.token(query, items[-1][3:]) if more and items else None)

    def _read(self, statements: list[tuple[str, list[Any]]], wanted: int) -> list[Any]:
        """The first `wanted` rows `statements` read in turn (each binds the rows still wanted
        to its last `LIMIT ?`), from one snapshot: a page is one read, however many ranges."""
        rows: list[Any] = []
        with _converted(), self._pool.connection() as conn:
            if len(statements) > 1:
                conn.execute("BEGIN")
            try:
                for sql, params in statements:
                    rows += conn.execute(sql, [*params, wanted - len(rows)]).fetchall()
                    if len(rows) >= wanted:
                        break
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        return rows

    def count(self, query: Query) -> int:
        statement = sqlite_query.count(query)
        if statement is None:
            return 0
        rows, _ = self._run(*statement)
        return int(rows[0][0])

    def explain(self, query: Query, continuation: str | None = None) -> str:
        """SQLite's plan for one page of `query`, one `EXPLAIN QUERY PLAN` step a line, the
        plan of each of its statements in turn ("" when the query cannot match anything and
        runs no SQL)."""
        statements = sqlite_query.select(query, continuation)
        plans = []
        for sql, params in statements or []:
            rows, _ = self._run("EXPLAIN QUERY PLAN " + sql, [*params, query.limit + 1])
            plans += [row[3] for row in rows]
        return "\n".join(plans)

    def ping(self):
        """Prove the database takes a write now: take the write lock and change the header in
        a transaction that is rolled back (nothing reaches the file). Locked past the deadline:
        `StoreBusy`; read-only or unusable: `StoreUnavailable`."""
        with _converted(), self._pool.connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                (version,) = conn.execute("PRAGMA user_version").fetchone()
                conn.execute(f"PRAGMA user_version = {int(version)}")
            finally:
                conn.execute("ROLLBACK")

    def close(self):
        self._pool.close()
        if self._keepalive is not None:
            self._keepalive.close()


def _migrate(conn: sqlite3.Connection, where: str) -> None:
    """Create the tables, the key columns and the indexes, exactly `sqlite_query.INDEXES`: a
    file an older version wrote gets the key columns it lacks, filled from the bodies, an index
    whose definition changed rebuilt, and one no query uses any more dropped; then it is stamped
    `LAYOUT_VERSION`. A file a newer version laid out (`where`, as the operator named it) is left
    as it is: `StoreUnavailable`, found before taking the write lock (the newer version's writes
    never wait on this one) and again under it. One transaction, so processes opening the same
    file at once do this one at a time."""
    _refuse_newer(conn, where)
    conn.execute("BEGIN IMMEDIATE")
    try:
        layout = _refuse_newer(conn, where)
        conn.execute(SCHEMA)
        conn.execute(COLD_SCHEMA)
        wanted = {name: sqlite_query.index_sql(name, container, keys) for name, container, keys in sqlite_query.INDEXES}
        existing = dict(
            conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'docs' AND sql NOT NULL"
            )
        )
        for name, sql in existing.items():
            if wanted.get(name) != sql:
                conn.execute(f'DROP INDEX "{name}"')
        # An index to build means a version without these indexes wrote the file last (it
        # builds its own on opening), and may have left key columns behind its bodies.
        _add_key_columns(conn, refill=any(existing.get(name) != sql for name, sql in wanted.items()))
        for name, sql in wanted.items():
            if existing.get(name) != sql:
                conn.execute(sql)
        if layout != LAYOUT_VERSION:
            _stamp(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # a BEGIN that timed out left none to roll back
            conn.execute("ROLLBACK")
        raise


def _stamp(conn: sqlite3.Connection) -> None:
    """Stamp the file `LAYOUT_VERSION`; a file that takes no writes (whose layout then needed
    nothing else, or the change would have failed first) stays unstamped: no newer version can
    have laid it out meanwhile, and the first opening that may write it stamps it."""
    try:
        conn.execute(f"PRAGMA user_version = {LAYOUT_VERSION}")
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF != 8:  # SQLITE_READONLY
            raise


def _refuse_newer(conn: sqlite3.Connection, where: str) -> int:
    """The file's layout version; `StoreUnavailable` if a newer version laid it out."""
    (layout,) = conn.execute("PRAGMA user_version").fetchone()
    if layout > LAYOUT_VERSION:
        raise errors.StoreUnavailable(
            f"sqlite: {where} is laid out by a newer version of the coordinator (layout {layout}; "
            f"this version's is {LAYOUT_VERSION}); run that version or a later one on it",
            errors.StoreFault.UNAVAILABLE,
        )
    return layout


def _add_key_columns(conn: sqlite3.Connection, refill: bool) -> None:
    """Add the key columns `docs` lacks (all of them, to a new file), each filled from its field
    in the bodies of its container's documents (every one, with `refill`): after the indexes
    that change are dropped, before they are built on the columns."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(docs)")}
    for container, fields in sqlite_query.KEYED.items():
        missing = [field for field in fields if sqlite_query.key_column(field) not in present]
        for field in missing:
            conn.execute(f"ALTER TABLE docs ADD COLUMN {sqlite_query.key_column(field)}")
            present.add(sqlite_query.key_column(field))
        missing = list(fields) if refill else missing
        if missing:
            conn.execute(f"UPDATE docs SET {sqlite_keys.read_out(missing)} WHERE container = ?", (container,))


@contextlib.contextmanager
def _converted() -> Iterator[None]:
    """Turn SQLite's errors into the port's; any other error (a bug) passes through."""
    try:
        yield
    except sqlite3.Error as exc:
        domain = converted(exc)
        if domain is None:
            raise
        raise domain from exc


#: What SQLite says when a statement names an index (`INDEXED BY`) that the file lacks or that
#: cannot serve it: a process of another version opened the file since and rebuilt its indexes.
_FOREIGN_INDEXES = ("no such index", "no query solution")


def converted(exc: sqlite3.Error) -> errors.FleetError | None:
    """The port's error for a SQLite error, or None when it is no store fault."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == 1 and str(exc).startswith(_FOREIGN_INDEXES):  # SQLITE_ERROR
        return errors.StoreUnavailable(
            f"sqlite: {exc}: the file's indexes are not this version's (a coordinator of another "
            "version opened it since); run one version on a file at a time",
            errors.StoreFault.UNAVAILABLE,
        )
    fault = FAULTS.get(code)
    if fault is None:
        return None
    if fault is errors.StoreFault.BUSY:
        return errors.StoreBusy(f"sqlite: {exc}", reason=fault)
    return errors.StoreUnavailable(f"sqlite: {exc}", fault)


def patched(doc: dict[str, Any], ops: list[Op]) -> dict[str, Any]:
    """`doc` with `ops` applied in order, as Cosmos DB applies them."""
    doc = clean(doc)
    for op in ops:
        if op.kind == "set":
            doc[op.field] = op.value
        elif op.kind == "remove":
            if op.field not in doc:
                raise ValueError(f"cannot remove {op.field!r}: the document has no such field")
            del doc[op.field]
        else:
            if not isinstance(doc.get(op.field), list):
                raise ValueError(f"cannot append to {op.field!r}: it holds no array")
            doc[op.field] = [*doc[op.field], op.value]
    return doc


def _patch_in_place(container: str, ops: list[Op]) -> tuple[str, list[Any]] | None:
    """The UPDATE that applies `ops` to the stored body with SQLite's JSON functions, and sets
    the key columns of the fields they change, guarded so that it applies only where `patched`
    would (the caller binds the new ETag and the document's key and ETag); None when a field
    is named by operations of different kinds, whose guards on the stored body would not say
    what the earlier ones leave, or an append changes a keyed field (`sqlite_keys.of_ops`)."""
    kinds: dict[str, str] = {}
    for op in ops:
        if kinds.setdefault(op.field, op.kind) != op.kind:
            return None
    keys = sqlite_keys.of_ops(container, ops)
    if keys is None:
        return None
    # One `json_set` takes every set and append (`[#]`: past an array's end), applied in turn;
    # one `json_remove` then every remove: SQLite parses and writes the body once a function, so
    # a patch costs two passes over a large document, not one per operation. A field is named
    # by operations of one kind only, so sets, appends and removes of other fields commute.
    changes, params, removed, guards = [], [], [], []
    for op in ops:
        path = f"'$.{op.field}'"  # a top-level name (`Op` checks it): nothing to quote
        if op.kind == "set":
            changes.append(f"{path}, {_bound(op.value, params)}")
        elif op.kind == "remove":
            removed.append(path)
            guards.append(f"json_type(body, {path}) IS NOT NULL")
        else:
            changes.append(f"'$.{op.field}[#]', {_bound(op.value, params)}")
            guards.append(f"json_type(body, {path}) = 'array'")
    body = f"json_set(body, {', '.join(changes)})" if changes else "body"
    if removed:
        body = f"json_remove({body}, {', '.join(dict.fromkeys(removed))})"
    where = "".join(f" AND {guard}" for guard in dict.fromkeys(guards))
    sql = f"UPDATE docs SET body = {body}{_sets(keys)}, etag = ? WHERE container = ? AND pk = ? AND id = ? AND etag = ?{where}"
    return sql, [*params, *keys.values()]


def _bound(value: Any, params: list[Any]) -> str:
    """The SQL of `value` as a `json_set` argument, its parameter appended to `params`: ASCII
    text and an integer as they are (SQLite sets a JSON string, a JSON integer), anything else
    as its JSON (a real as SQL would lose digits: `json_set` renders one with 15; other text,
    which may hold what UTF-8 cannot, escaped as the body holds it)."""
    if type(value) is str and value.isascii() or type(value) is int and -(2**63) <= value < 2**63:
        params.append(value)
        return "?"
    params.append(_json(value))
    return "json(?)"


@functools.lru_cache(maxsize=16)
def _insert(container: str) -> str:
    """The INSERT of a new row of `container`: its key, ETag, body and key columns."""
    columns = sqlite_keys.columns(container)
    return f"INSERT INTO docs (container, pk, id, etag, body{_names(columns)}) VALUES (?, ?, ?, ?, ?{', ?' * len(columns)})"


@functools.lru_cache(maxsize=16)
def _update(container: str) -> str:
    """The UPDATE of a whole row of `container` stored with an ETag: body, key columns, ETag."""
    return (
        f"UPDATE docs SET body = ?{_sets(sqlite_keys.columns(container))}, etag = ? "
        "WHERE container = ? AND pk = ? AND id = ? AND etag = ?"
    )


@functools.lru_cache(maxsize=16)
def _upsert(container: str) -> str:
    """The INSERT of a row of `container` that, where the row exists, writes it whole instead."""
    columns = ["body", "etag", *sqlite_keys.columns(container)]
    return _insert(container) + " ON CONFLICT (container, pk, id) DO UPDATE SET " + ", ".join(
        f"{name} = excluded.{name}" for name in columns
    )


def _names(columns) -> str:
    return "".join(f", {name}" for name in columns)


def _sets(columns) -> str:
    """`, column = ?` for each of `columns`, for an UPDATE's SET."""
    return "".join(f", {name} = ?" for name in columns)


def _etag() -> str:
    """A new document's ETag: 128 random bits, as Cosmos DB's are opaque and never reused."""
    return os.urandom(16).hex()


def _encode(doc: dict[str, Any]) -> tuple[str, str]:
    return _json(clean(doc)), _etag()


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _split(container: str, doc: dict[str, Any]) -> tuple[str, str | None]:
    """`doc` as stored: the JSON of its body, and of its cold half (`sqlite_query.COLD`; None
    when it has none: a null field stays in the body, as it reads)."""
    doc = clean(doc)
    cold_fields = sqlite_query.COLD.get(container)
    if not cold_fields:
        return _json(doc), None
    cold = {name: doc[name] for name in cold_fields if doc.get(name) is not None}
    if not cold:
        return _json(doc), None
    return _json({k: v for k, v in doc.items() if k not in cold}), _json(cold)


def _write_cold(conn: sqlite3.Connection, key: tuple[str, str, str], cold: str | None) -> None:
    """Store a document's cold half beside it (none: drop any it had), in its transaction;
    one unchanged is not written again."""
    if cold is None:
        conn.execute("DELETE FROM cold WHERE container = ? AND pk = ? AND id = ?", key)
    else:
        conn.execute(
            "INSERT INTO cold (container, pk, id, body) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (container, pk, id) DO UPDATE SET body = excluded.body WHERE body IS NOT excluded.body",
            (*key, cold),
        )


def _cold_of(container: str) -> str:
    """What a statement on `docs` selects for a row's cold half."""
    return sqlite_query.COLD_BODY if container in sqlite_query.COLD else "NULL"


def _projected(projection: tuple[str, ...], with_etags: bool, row: tuple[Any, ...]) -> dict[str, Any]:
    doc = projected(dict(zip(projection, json.loads(row[0]))))
    if with_etags:
        doc["_etag"] = row[2]
    return doc


def _doc(row: tuple[Any, ...]) -> dict[str, Any]:
    """A document from its row: `(body, cold half or NULL, etag)`."""
    doc = json.loads(row[0])
    if row[1] is not None:
        doc.update(json.loads(row[1]))
    doc["_etag"] = row[2]
    return doc
