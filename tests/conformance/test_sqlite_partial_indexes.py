"""SQLite's indexes are partial: a write re-keys only the indexes that hold its document.

Every index of the jobs container holds only the documents its queries can match
(`sqlite_query.MEMBERS`): the claim indexes queued jobs, the listings jobs (not the counters
that share the container), the lease indexes leased jobs. These tests read what each index
holds off SQLite itself, by the condition its `CREATE INDEX` names, and check that a query read
off a partial index still finds every document a table scan does.
"""
from __future__ import annotations

import json

import pytest

from fleet import activity, queue_state
from fleet.store import Filter, Query
from shared.stores import sqlite_query
from shared.stores.sqlite_query import INDEXES, MEMBERS
from shared.stores.sqlite_store import SqliteStore

CLAIM = {name for name, (_, literal) in MEMBERS.items() if literal == "queued"}


@pytest.fixture
def store(tmp_path):
    store = SqliteStore(str(tmp_path / "fleet.db"))
    yield store
    store.close()


def held_by(store: SqliteStore, index: str) -> set[str]:
    """The ids of the documents `index` holds, read through it by its own condition."""
    condition = sqlite_query.member_condition("jobs", *MEMBERS[index])
    with store.connection() as conn:
        rows = conn.execute(f"SELECT id FROM docs INDEXED BY {index} WHERE container = 'jobs' AND {condition}")
        return {id for (id,) in rows}


def job(id: str, stage: str, **more) -> dict:
    return {"id": id, "productId": "p", "stage": stage, "priority": "normal", "attempts": 0, "rankKey": 1.0,
            "capKey": "", "createdAt": "2026-01-01T00:00:00.000Z", "updatedAt": "2026-01-01T00:00:00.000Z", **more}


def test_every_index_is_partial_and_names_what_it_holds(store):
    with store.connection() as conn:
        definitions = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql NOT NULL"))
    assert set(MEMBERS) == {name for name, _, _ in INDEXES}
    for name, (field, literal) in MEMBERS.items():
        assert definitions[name].endswith(" AND " + sqlite_query.member_condition("jobs", field, literal)), definitions[name]


def test_the_counters_beside_the_jobs_are_in_no_job_index(store):
    # A queue-state bump and an activity bump (on the day's rollup) re-key no index of the jobs
    # (the queue-states are in the one index that finds every product's queue-state).
    day = activity.DAY_PREFIX + "2026-01-01"
    store.increment("jobs", "p", queue_state.DOC_ID, "version", 1, {"id": queue_state.DOC_ID, "productId": "p"})
    store.increment("jobs", "-", day, "version", 1, {"id": day, "productId": "-"}, also={"shipped": 1})
    products_day = day + ".0123456789abcdef"  # a product's counts of that day
    store.increment("jobs", "-", products_day, "finished_0123456789abcdef_shipped", 1,
                    {"id": products_day, "productId": "-", "product": "p"})
    store.create("jobs", job("p:1", "queued"))

    for index in MEMBERS:
        held = held_by(store, index)
        assert day not in held and products_day not in held, index
        assert (queue_state.DOC_ID in held) == (index == "jobs_id"), index


def test_a_job_is_in_the_claim_indexes_only_while_queued_and_in_the_lease_ones_only_while_leased(store):
    doc = store.create("jobs", job("p:1", "queued"))
    assert {index for index in MEMBERS if "p:1" in held_by(store, index)} == CLAIM | {
        "jobs_product_created", "jobs_product_stage_created", "jobs_stage_created", "jobs_created", "jobs_stage_updated"
    }

    lease = {"leaseId": "l1", "factoryId": "f1", "expiresAt": "2026-01-01T00:10:00.000Z"}
    doc = store.replace("jobs", {**doc, "stage": "building", "lease": lease}, doc["_etag"])
    holding = {index for index in MEMBERS if "p:1" in held_by(store, index)}
    assert not holding & CLAIM and {"jobs_lease_expiry", "jobs_lease_factory"} <= holding

    store.replace("jobs", {**doc, "stage": "shipped", "lease": None}, doc["_etag"])
    holding = {index for index in MEMBERS if "p:1" in held_by(store, index)}
    assert not holding & (CLAIM | {"jobs_lease_expiry", "jobs_lease_factory"}) and "jobs_created" in holding


@pytest.mark.parametrize(
    "query",
    [
        Query("jobs", "p", (Filter("stage", "=", "queued"),), (("rankKey", True), ("createdAt", False))),
        Query("jobs", None, (Filter("createdAt", "!=", None),), (("createdAt", True),)),
        Query("jobs", None, (Filter("lease.factoryId", "=", "f1"),)),
        Query("jobs", None, (Filter("id", "=", queue_state.DOC_ID),)),
    ],
    ids=["claim", "listing", "one factory's leases", "queue-states"],
)
def test_a_query_read_off_a_partial_index_finds_what_a_table_scan_does(store, query):
    lease = {"leaseId": "l1", "factoryId": "f1", "expiresAt": "2026-01-01T00:10:00.000Z"}
    for n, stage in enumerate(["queued", "queued", "building", "shipped", "blocked"]):
        store.create("jobs", job(f"p:{n}", stage, lease=lease if stage == "building" else None))
    store.increment("jobs", "p", queue_state.DOC_ID, "version", 1, {"id": queue_state.DOC_ID, "productId": "p"})
    ((sql, params),) = sqlite_query.select(query)
    index = sql.split(" INDEXED BY ")[1].split()[0]
    with store.connection() as conn:
        scanned = [json.loads(body)["id"] for body, *_ in conn.execute(
            sql.replace(f"INDEXED BY {index}", "NOT INDEXED"), [*params, 100]
        )]

    found = [doc["id"] for doc in store.query(query).items]

    assert found == scanned and found
