"""SQLite keeps a job's `bodyMd` beside its document, not in its indexed body.

`sqlite_query.COLD` names the large fields no query filters or orders on; `SqliteStore` writes
them to the `cold` table in the same transaction as their document and reads them back into
it, so that a write re-keys and rewrites a small body (the store conformance suite holds the
port's behaviour; these tests hold the layout). A file written before the layout keeps a
job's `bodyMd` in its body until the job is next written whole.
"""
from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator

import pytest

from fleet import errors
from fleet.store import Filter, Op, Query
from shared.stores import sqlite_keys
from shared.stores.sqlite_store import SqliteStore

BODY = "Fix the flaky retry test.\n" * 200


@pytest.fixture
def store(tmp_path):
    store = SqliteStore(str(tmp_path / "fleet.db"))
    yield store
    store.close()


def rows(store: SqliteStore, id: str) -> tuple[dict, dict | None]:
    """The job's body and its cold half, as the file holds them."""
    with store.connection() as conn:
        (body,) = conn.execute("SELECT body FROM docs WHERE container = 'jobs' AND id = ?", (id,)).fetchone()
        cold = conn.execute("SELECT body FROM cold WHERE container = 'jobs' AND id = ?", (id,)).fetchone()
    return json.loads(body), json.loads(cold[0]) if cold else None


def job(id: str, **more) -> dict:
    return {"id": id, "productId": "p", "stage": "queued", "events": [], "createdAt": "2026-01-01T00:00:00.000Z", **more}


def test_a_jobs_body_is_kept_beside_it_and_read_back_into_it(store):
    created = store.create("jobs", job("p:1", bodyMd=BODY))

    body, cold = rows(store, "p:1")
    assert "bodyMd" not in body and cold == {"bodyMd": BODY}
    assert store.read("jobs", "p", "p:1") == created
    assert store.query(Query("jobs", "p", (Filter("stage", "=", "queued"),))).items == [created]


@contextlib.contextmanager
def cold_writes_refused(store: SqliteStore) -> Iterator[None]:
    """Any change to a row of the cold table fails while in the block (triggers every connection
    of the file sees; an insert that finds the row and leaves it as it is changes nothing)."""
    with store.connection() as conn:
        for event in ("UPDATE", "DELETE"):
            conn.execute(f"CREATE TRIGGER cold_{event} BEFORE {event} ON cold BEGIN SELECT RAISE(ABORT, 'cold written'); END")
    try:
        yield
    finally:
        with store.connection() as conn:
            for event in ("UPDATE", "DELETE"):
                conn.execute(f"DROP TRIGGER cold_{event}")


def test_a_write_that_leaves_the_body_alone_does_not_rewrite_it_and_answers_it_whole(store):
    created = store.create("jobs", job("p:1", bodyMd=BODY))

    with cold_writes_refused(store):
        answered = store.patch(
            "jobs", "p", "p:1", [Op("set", "stage", "assigned"), Op("append", "events", 1)], created["_etag"], answer=True
        )
        replaced = store.replace("jobs", {**answered, "stage": "building"}, answered["_etag"])
        with pytest.raises(sqlite3.IntegrityError, match="cold written"):  # the guard holds
            store.patch("jobs", "p", "p:1", [Op("set", "bodyMd", "x")], replaced["_etag"])

    assert (answered["stage"], answered["events"], answered["bodyMd"]) == ("assigned", [1], BODY)
    assert store.read("jobs", "p", "p:1") == replaced


def test_a_write_of_the_body_itself_moves_it_and_one_without_it_drops_it(store):
    created = store.create("jobs", job("p:1", bodyMd=BODY))

    patched = store.patch("jobs", "p", "p:1", [Op("set", "bodyMd", "short")], created["_etag"], answer=True)
    assert rows(store, "p:1")[1] == {"bodyMd": "short"} and patched["bodyMd"] == "short"

    replaced = store.replace("jobs", {k: v for k, v in patched.items() if k != "bodyMd"}, patched["_etag"])
    assert rows(store, "p:1")[1] is None and "bodyMd" not in store.read("jobs", "p", "p:1")

    store.upsert("jobs", {**replaced, "bodyMd": BODY})
    assert rows(store, "p:1")[1] == {"bodyMd": BODY}
    store.delete("jobs", "p", "p:1")
    with store.connection() as conn:
        assert conn.execute("SELECT COUNT(*) FROM cold").fetchone() == (0,)


def test_a_job_written_before_the_layout_reads_whole_and_moves_on_its_next_whole_write(store):
    old = job("p:1", bodyMd=BODY)
    columns = sqlite_keys.columns("jobs")
    with store.connection() as conn:  # as an older version wrote it: bodyMd in the body (key columns as opening it fills them)
        conn.execute(
            f"INSERT INTO docs (container, pk, id, etag, body, {', '.join(columns)}) "
            f"VALUES ('jobs', 'p', 'p:1', 'e1', ?{', ?' * len(columns)})",
            (json.dumps(old), *sqlite_keys.of_doc("jobs", old)),
        )

    assert store.read("jobs", "p", "p:1")["bodyMd"] == BODY
    projected = store.query(Query("jobs", "p", (Filter("stage", "=", "queued"),), fields=("bodyMd",))).items
    assert [doc["bodyMd"] for doc in projected] == [BODY]
    patched = store.patch("jobs", "p", "p:1", [Op("set", "stage", "assigned")], "e1", answer=True)
    assert patched["bodyMd"] == BODY

    store.replace("jobs", patched, patched["_etag"])
    body, cold = rows(store, "p:1")
    assert "bodyMd" not in body and cold == {"bodyMd": BODY}


def test_a_create_that_loses_to_an_existing_job_leaves_its_body_alone(store):
    store.create("jobs", job("p:1", bodyMd=BODY))

    with pytest.raises(errors.Conflict):
        store.create("jobs", job("p:1", bodyMd="other"))

    assert rows(store, "p:1")[1] == {"bodyMd": BODY}


def test_no_query_filters_or_orders_on_a_field_kept_beside_the_document(store):
    with pytest.raises(ValueError, match="bodyMd"):
        store.query(Query("jobs", "p", (Filter("bodyMd", "=", "x"),)))
    with pytest.raises(ValueError, match="bodyMd"):
        store.query(Query("jobs", "p", order_by=(("bodyMd", False),)))
