"""SQLite keeps each indexed field of a job in a column of its own beside the body.

`sqlite_query.KEYED` names the fields the indexes key on or are partial on; every write sets
their columns (`shared.stores.sqlite_keys`) so that a column holds what `json_extract` reads of
its field in the body, whatever the write and whatever the value: queries compare, order and
page on the columns as they did on the expressions. A patch sets only the columns of the
fields it changes, so SQLite re-keys only the indexes on those. A file an older version wrote
gets the columns, filled from the bodies, when it is opened.
"""
from __future__ import annotations

import json
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet import errors
from fleet.store import Filter, Op, Query, projected
from shared.stores import sqlite_keys, sqlite_query, sqlite_store
from shared.stores.sqlite_store import SqliteStore

KEYED = sqlite_query.KEYED["jobs"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = SqliteStore(str(tmp_path_factory.mktemp("keys") / "fleet.db"))
    yield store
    store.close()


def diverging(store: SqliteStore) -> list[tuple]:
    """Rows of `jobs` where a key column differs, in value or SQL type, from `json_extract` of
    its field in the body."""
    differs = " OR ".join(
        f"{sqlite_query.key_column(f)} IS NOT json_extract(body, {sqlite_query.path(f)}) "
        f"OR typeof({sqlite_query.key_column(f)}) != typeof(json_extract(body, {sqlite_query.path(f)}))"
        for f in KEYED
    )
    columns = ", ".join(sqlite_query.key_column(f) for f in KEYED)
    with store.connection() as conn:
        return conn.execute(f"SELECT id, body, {columns} FROM docs WHERE container = 'jobs' AND ({differs})").fetchall()


def assert_projections_read_what_the_document_holds(store: SqliteStore) -> None:
    doc = store.read("jobs", "p", "p:1")
    for fields in [(*KEYED, "title"), ("rankKey", "createdAt", "stage"), ("lease.expiresAt",)]:
        query = Query("jobs", "p", (Filter("id", "=", "p:1"),), fields=fields)
        expected = projected({f: dig(doc, f) for f in query.projection()})
        assert store.query(query).items == [expected], fields


def dig(doc, field):
    for part in field.split("."):
        doc = doc.get(part) if isinstance(doc, dict) else None
    return doc


# Values of every JSON kind, including those SQL has no type for (booleans, objects, arrays)
# and an integer past 64 bits, which `json_extract` reads as a real.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from([2**70, -(2**70)]),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from(["queued", "assigned", "é", "2026-01-01T00:00:00.000Z"]),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=2),
    st.dictionaries(st.sampled_from(["expiresAt", "factoryId", "leaseId"]), scalars, max_size=3),
)
#: The top-level names of the keyed fields, and one that is not.
FIELDS = sorted({f.partition(".")[0] for f in KEYED} | {"title"})
fields = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6)
ops = st.lists(
    st.tuples(st.sampled_from(["set", "remove", "append"]), st.sampled_from(FIELDS), values), min_size=1, max_size=4
)
writes = st.lists(
    st.one_of(
        st.tuples(st.just("replace"), fields),
        st.tuples(st.just("upsert"), fields),
        st.tuples(st.just("patch"), ops),
        st.tuples(st.just("increment"), st.sampled_from(["attempts", "title"]), st.sampled_from(FIELDS)),
    ),
    max_size=6,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=fields, writes=writes)
def test_every_write_keeps_each_key_column_what_json_extract_reads(store, first, writes):
    doc = store.create("jobs", {**first, "id": "p:1", "productId": "p"})
    try:
        assert diverging(store) == []
        for write in writes:
            kind = write[0]
            if kind in ("replace", "upsert"):
                whole = {**write[1], "id": "p:1", "productId": "p"}
                doc = store.replace("jobs", whole, doc["_etag"]) if kind == "replace" else store.upsert("jobs", whole)
            elif kind == "patch":
                try:
                    doc = {**doc, **store.patch("jobs", "p", "p:1", [Op(*op) for op in write[1]], doc["_etag"], answer=True)}
                except ValueError:
                    pass  # an operation that does not apply (removing an absent field): nothing written
            else:
                try:
                    doc = store.increment("jobs", "p", "p:1", write[1], 1, {}, stamp={write[2]: "2026-01-02"})
                except (ValueError, errors.FleetError):
                    pass  # adding to what is not a number
            assert diverging(store) == [], write
            assert_projections_read_what_the_document_holds(store)
    finally:
        store.delete("jobs", "p", "p:1")


def test_a_patch_sets_only_the_key_columns_of_the_fields_it_changes():
    sql, params = sqlite_store._patch_in_place(
        "jobs", [Op("set", "lease", {"factoryId": "f", "expiresAt": "t"}), Op("append", "events", {"at": "t"})]
    )
    assert "k_lease_factoryId = ?" in sql and "k_lease_expiresAt = ?" in sql and params[-2:] == ["t", "f"]
    assert [c for c in sqlite_keys.columns("jobs") if c in sql] == ["k_lease_expiresAt", "k_lease_factoryId"]

    sql, _ = sqlite_store._patch_in_place("jobs", [Op("set", "runs", []), Op("set", "estimatedCostUsd", 1.0)])
    assert not any(c in sql for c in sqlite_keys.columns("jobs"))
    # An append to a keyed field: only the stored body knows the array, so the patch is read and written whole.
    assert sqlite_store._patch_in_place("jobs", [Op("append", "stage", "x")]) is None


def test_a_counter_beside_the_jobs_is_incremented_without_a_key_column(store):
    store.increment("jobs", "p", "queue-state", "version", 1, {"productId": "p"}, stamp={"changedAt": "t"})
    with store.connection() as conn:
        row = conn.execute(
            f"SELECT {', '.join(sqlite_keys.columns('jobs'))} FROM docs WHERE container = 'jobs' AND id = 'queue-state'"
        ).fetchone()
    assert set(row) == {None}
    store.delete("jobs", "p", "queue-state")


def test_text_no_key_column_can_hold_as_json_extract_reads_it_is_refused_and_nothing_is_written(store):
    for text in ["queued\x00", "\ud800"]:
        with pytest.raises(ValueError, match="indexed field"):
            store.create("jobs", {"id": "p:2", "productId": "p", "stage": text})
        with pytest.raises(errors.NotFound):
            store.read("jobs", "p", "p:2")
    # Elsewhere in a document such text is stored as JSON escapes, by a patch too.
    doc = store.create("jobs", {"id": "p:2", "productId": "p", "stage": "queued", "title": "\ud800"})
    store.patch("jobs", "p", "p:2", [Op("set", "note", "a\x00b\ud800")], doc["_etag"])
    assert store.read("jobs", "p", "p:2")["note"] == "a\x00b\ud800"
    store.delete("jobs", "p", "p:2")


def test_key_columns_an_older_version_left_behind_its_writes_are_filled_again_on_opening(tmp_path):
    path = str(tmp_path / "mixed.db")
    store = SqliteStore(path)
    store.create("jobs", {"id": "p:1", "productId": "p", "stage": "queued", "createdAt": "2026-01-01"})
    store.close()
    conn = sqlite3.connect(path)  # as a version without key columns writes: its own indexes, bodies only
    conn.execute("DROP INDEX jobs_rank")
    conn.execute(
        "CREATE INDEX jobs_rank ON docs(container, pk, json_extract(body, '$.stage')) "
        "WHERE container = 'jobs' AND json_extract(body, '$.stage') = 'queued'"
    )
    conn.execute("UPDATE docs SET body = json_set(body, '$.stage', 'shipped') WHERE id = 'p:1'")
    conn.commit()
    conn.close()

    store = SqliteStore(path)
    try:
        assert diverging(store) == []
        assert store.query(Query("jobs", "p", (Filter("stage", "=", "queued"),))).items == []
    finally:
        store.close()


OLD_SCHEMA = """
CREATE TABLE docs (
    container TEXT NOT NULL, pk TEXT NOT NULL, id TEXT NOT NULL, etag TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (container, pk, id)
) WITHOUT ROWID
"""


def test_a_file_an_older_version_wrote_gets_the_key_columns_filled_from_the_bodies(tmp_path):
    path = str(tmp_path / "old.db")
    conn = sqlite3.connect(path)
    conn.execute(OLD_SCHEMA)
    conn.execute(
        "CREATE INDEX jobs_rank ON docs(container, pk, json_extract(body, '$.stage'), json_extract(body, '$.rankKey') DESC, "
        "json_extract(body, '$.createdAt')) WHERE container = 'jobs' AND json_extract(body, '$.stage') = 'queued'"
    )
    jobs = [
        {"id": f"p:{n}", "productId": "p", "stage": stage, "rankKey": float(n), "createdAt": f"2026-01-0{n}", "rekeying": n == 2}
        for n, stage in [(1, "queued"), (2, "queued"), (3, "shipped")]
    ]
    for job in jobs:
        conn.execute("INSERT INTO docs VALUES ('jobs', 'p', ?, 'e', ?)", (job["id"], json.dumps(job)))
    conn.commit()
    conn.close()

    store = SqliteStore(path)
    try:
        assert diverging(store) == []
        with store.connection() as conn:
            indexes = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql NOT NULL"))
        assert indexes == {name: sqlite_query.index_sql(name, c, keys) for name, c, keys in sqlite_query.INDEXES}
        queued = Query("jobs", "p", (Filter("stage", "=", "queued"),), (("rankKey", True),))
        assert [doc["id"] for doc in store.query(queued).items] == ["p:2", "p:1"]
        assert [doc["id"] for doc in store.query(Query("jobs", None, (Filter("rekeying", "=", True),))).items] == ["p:2"]
    finally:
        store.close()
