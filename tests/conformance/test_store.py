"""Store conformance: every contract of `fleet.store.Store`, pinned once, run against every adapter.

The `store` fixture (conftest.py) runs each test on `SqliteStore` and on `CosmosStore` (the
local Cosmos server, or a real account when `COSMOS_ENDPOINT` is set). Each test writes only to
partitions named after its own `ns`, so tests never see each other's documents; cross-partition
queries are confined with `productId in [...]`. Queries use the shapes the use cases run (claim,
bucket heads, listings, lease sweeps): on Cosmos each needs the composite index
`infra/bicep/containers.json` declares for it, which the local server enforces.
"""
from __future__ import annotations

import base64
import dataclasses
import gc
import json
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
from azure.cosmos import exceptions as cosmos_exceptions

from fleet import errors, store as fleet_store
from fleet.store import Filter, Query, Store
from shared import config
from shared.stores import charge, cosmos_query, cosmos_store, keyset
from shared.stores.cosmos_store import CosmosStore
from shared.stores.local_cosmos import EMULATOR_KEY, CosmosServer, ServerUnavailable, start_cosmos_server
from shared.stores.sqlite_store import SqliteStore
from tests.support.cosmos import unavailable, unverified_loopback

pytestmark = unverified_loopback

T = [f"2025-01-01T00:0{m}:00.000Z" for m in range(6)]  # T[0] < T[1] < … (ISO-8601 sorts as text)


def job(product: str, key: str, **fields: Any) -> dict[str, Any]:
    """A job document in `product` with id `{product}:{key}`."""
    return {
        "id": f"{product}:{key}",
        "productId": product,
        "stage": "queued",
        "priority": "normal",
        "attempts": 0,
        "rankKey": 0,
        "createdAt": T[1],
        **fields,
    }


def keys(docs: list[dict[str, Any]]) -> list[str]:
    """`{product}:{key}` ids → `key`, or `p:key`/`q:key` when the product ends in -p/-q."""
    out = []
    for d in docs:
        product, key = d["id"].split(":", 1)
        out.append(f"{product[-1]}:{key}" if product[-2:] in ("-p", "-q") else key)
    return out


def seed(store: Store, docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        store.create("jobs", doc)


def race(n: int, work: Callable[[int], None]) -> None:
    """Run `work(i)` on n threads released at the same moment; re-raise the first failure."""
    barrier = threading.Barrier(n)
    failures: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            work(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]


# Point reads and writes


def test_read_returns_the_stored_document_with_its_etag(store, ns):
    created = store.create("jobs", job(ns, "a", title="hello", lease={"factoryId": "f1"}))

    got = store.read("jobs", ns, f"{ns}:a")

    assert got == created
    assert got["title"] == "hello" and got["lease"] == {"factoryId": "f1"}
    assert isinstance(got["_etag"], str) and got["_etag"]


def test_read_of_a_missing_document_raises_not_found(store, ns):
    store.create("jobs", job(ns, "a"))

    with pytest.raises(errors.NotFound):
        store.read("jobs", ns, f"{ns}:missing")
    with pytest.raises(errors.NotFound):  # the right id in another partition
        store.read("jobs", f"{ns}-other", f"{ns}:a")


def test_the_same_id_in_two_partitions_is_two_documents(store, ns):
    p, q = f"{ns}-p", f"{ns}-q"
    store.create("jobs", {"id": "queue-state", "productId": p, "version": 1})
    store.create("jobs", {"id": "queue-state", "productId": q, "version": 2})

    assert store.read("jobs", p, "queue-state")["version"] == 1
    assert store.read("jobs", q, "queue-state")["version"] == 2


def test_create_of_an_existing_id_conflicts_and_keeps_the_first(store, ns):
    first = store.create("jobs", job(ns, "a", title="first"))

    with pytest.raises(errors.Conflict):
        store.create("jobs", job(ns, "a", title="second"))

    assert store.read("jobs", ns, f"{ns}:a") == first


def test_a_document_without_its_partition_key_is_refused(store, ns):
    with pytest.raises(ValueError):
        store.create("jobs", {"id": f"{ns}:a", "stage": "queued"})


def test_store_owned_fields_are_not_persisted(store, ns):
    created = store.create("jobs", job(ns, "a", _scratch=1, _etag="mine"))
    replaced = store.replace("jobs", {**created, "_scratch": 2, "title": "b"}, created["_etag"])
    upserted = store.upsert("jobs", {**replaced, "_scratch": 3, "title": "c"})

    got = store.read("jobs", ns, f"{ns}:a")
    for doc in (created, replaced, upserted, got):
        assert [k for k in doc if k.startswith("_")] == ["_etag"]
    assert created["_etag"] != "mine"
    assert got["title"] == "c"


def test_every_write_returns_the_etag_a_read_then_sees(store, ns):
    id = f"{ns}:a"
    seen = []
    doc = store.create("jobs", job(ns, "a"))
    seen.append(doc["_etag"])
    assert store.read("jobs", ns, id)["_etag"] == doc["_etag"]
    doc = store.replace("jobs", {**doc, "title": "b"}, doc["_etag"])
    seen.append(doc["_etag"])
    assert store.read("jobs", ns, id)["_etag"] == doc["_etag"]
    doc = store.upsert("jobs", {**doc, "title": "c"})
    seen.append(doc["_etag"])
    assert store.read("jobs", ns, id)["_etag"] == doc["_etag"]
    doc = store.increment("jobs", ns, id, "attempts", 1, {})
    seen.append(doc["_etag"])
    assert store.read("jobs", ns, id)["_etag"] == doc["_etag"]

    assert len(set(seen)) == 4  # every write changes the ETag


def test_replace_with_the_current_etag_writes(store, ns):
    v1 = store.create("jobs", job(ns, "a", stage="queued"))

    v2 = store.replace("jobs", {**v1, "stage": "assigned"}, v1["_etag"])

    assert v2["stage"] == "assigned"
    assert store.read("jobs", ns, f"{ns}:a") == v2


def test_replace_with_a_stale_etag_fails_and_writes_nothing(store, ns):
    v1 = store.create("jobs", job(ns, "a", stage="queued"))
    v2 = store.replace("jobs", {**v1, "stage": "assigned"}, v1["_etag"])

    with pytest.raises(errors.PreconditionFailed):
        store.replace("jobs", {**v1, "stage": "cancelled"}, v1["_etag"])

    assert store.read("jobs", ns, f"{ns}:a") == v2


def test_replace_of_a_deleted_document_raises_not_found_and_writes_nothing(store, ns):
    v1 = store.create("jobs", job(ns, "a"))
    store.delete("jobs", ns, f"{ns}:a")

    with pytest.raises(errors.NotFound):
        store.replace("jobs", {**v1, "stage": "assigned"}, v1["_etag"])

    with pytest.raises(errors.NotFound):
        store.read("jobs", ns, f"{ns}:a")


def test_patch_sets_removes_and_appends_top_level_fields(store, ns):
    v1 = store.create("jobs", job(ns, "a", stage="queued", lease={"factoryId": "f1"}, events=[{"kind": "submitted"}]))
    ops = [
        fleet_store.Op("set", "stage", "building"),
        fleet_store.Op("set", "note", {"text": "new field", "n": [1, 2]}),
        fleet_store.Op("remove", "lease"),
        fleet_store.Op("append", "events", {"kind": "stage"}),
        fleet_store.Op("append", "events", {"kind": "note"}),
    ]

    written = store.patch("jobs", ns, f"{ns}:a", ops, v1["_etag"])

    got = store.read("jobs", ns, f"{ns}:a")
    assert got["_etag"] == written["_etag"] != v1["_etag"]
    assert {k: v for k, v in got.items() if k != "_etag"} == {
        **{k: v for k, v in v1.items() if k not in ("_etag", "lease")},
        "stage": "building",
        "note": {"text": "new field", "n": [1, 2]},
        "events": [{"kind": "submitted"}, {"kind": "stage"}, {"kind": "note"}],
    }


@pytest.mark.parametrize("answer", [False, True])
@pytest.mark.parametrize(
    "fields",
    [{}, {"runs": None}, {"runs": {"not": "an array"}}],
    ids=["absent", "null", "an object"],
)
def test_an_append_to_a_field_holding_no_array_is_refused_whole(store, ns, fields, answer):
    # Given a job document whose `runs` is absent, null or not an array (an older release's)
    v1 = store.create("jobs", job(ns, "a", events=[], **fields))
    ops = [
        fleet_store.Op("set", "stage", "assigned"),
        fleet_store.Op("append", "runs", {"runId": "r1"}),
        fleet_store.Op("append", "events", {"kind": "claimed"}),
    ]
    # Then a patch appending to it is refused, as the port says (Cosmos: a 400)
    with pytest.raises(ValueError):
        store.patch("jobs", ns, f"{ns}:a", ops, v1["_etag"], answer=answer)
    # and writes nothing: not its sets, not the other field's append, not a stray field
    assert store.read("jobs", ns, f"{ns}:a") == v1
    # while a stale ETag still answers as a race lost, whatever the operations
    store.patch("jobs", ns, f"{ns}:a", [fleet_store.Op("set", "n", 1)], v1["_etag"])
    with pytest.raises(errors.PreconditionFailed):
        store.patch("jobs", ns, f"{ns}:a", ops, v1["_etag"], answer=answer)


def test_an_append_to_an_array_set_earlier_in_the_patch_applies(store, ns):
    v1 = store.create("jobs", job(ns, "a"))
    ops = [fleet_store.Op("set", "runs", [{"runId": "r1"}]), fleet_store.Op("append", "runs", {"runId": "r2"})]

    store.patch("jobs", ns, f"{ns}:a", ops, v1["_etag"])

    assert store.read("jobs", ns, f"{ns}:a")["runs"] == [{"runId": "r1"}, {"runId": "r2"}]


def test_patch_with_a_stale_etag_fails_and_writes_nothing(store, ns):
    v1 = store.create("jobs", job(ns, "a", stage="queued"))
    v2 = store.patch("jobs", ns, f"{ns}:a", [fleet_store.Op("set", "stage", "assigned")], v1["_etag"])

    with pytest.raises(errors.PreconditionFailed):
        store.patch("jobs", ns, f"{ns}:a", [fleet_store.Op("set", "stage", "cancelled")], v1["_etag"])

    got = store.read("jobs", ns, f"{ns}:a")
    assert (got["stage"], got["_etag"]) == ("assigned", v2["_etag"])


def test_patch_of_a_missing_document_raises_not_found(store, ns):
    v1 = store.create("jobs", job(ns, "a"))
    store.delete("jobs", ns, f"{ns}:a")

    with pytest.raises(errors.NotFound):
        store.patch("jobs", ns, f"{ns}:a", [fleet_store.Op("set", "stage", "assigned")], v1["_etag"])
    with pytest.raises(errors.NotFound):
        store.patch("jobs", ns, f"{ns}:never", [fleet_store.Op("set", "stage", "assigned")], v1["_etag"])


def test_a_patch_of_more_than_ten_operations_is_refused_before_it_writes(store, ns):
    v1 = store.create("jobs", job(ns, "a"))
    ops = [fleet_store.Op("set", f"f{i}", i) for i in range(fleet_store.MAX_PATCH_OPS + 1)]

    with pytest.raises(ValueError):
        store.patch("jobs", ns, f"{ns}:a", ops, v1["_etag"])

    assert store.read("jobs", ns, f"{ns}:a") == v1


@pytest.mark.parametrize("kind, field", [("unset", "stage"), ("set", "lease/factoryId"), ("set", "_etag")])
def test_a_patch_names_known_operations_on_top_level_fields(kind, field):
    with pytest.raises(ValueError):
        fleet_store.Op(kind, field, 1)


Op = fleet_store.Op
BEFORE = {"id": "p:1", "productId": "p", "stage": "queued", "lease": {"f": 1}, "events": [1, 2], "n": 1}


@pytest.mark.parametrize(
    "after, ops",
    [
        ({**BEFORE}, []),
        ({**BEFORE, "stage": "building"}, [Op("set", "stage", "building")]),
        ({**BEFORE, "note": None}, [Op("set", "note", None)]),
        ({k: v for k, v in BEFORE.items() if k != "lease"}, [Op("remove", "lease")]),
        ({**BEFORE, "events": [1, 2, 3, 4]}, [Op("append", "events", 3), Op("append", "events", 4)]),
        ({**BEFORE, "events": [2, 3]}, [Op("set", "events", [2, 3])]),  # the ring dropped its oldest
        ({**BEFORE, "events": [1]}, [Op("set", "events", [1])]),
        ({**BEFORE, "events": [1, 2, *range(11)]}, [Op("set", "events", [1, 2, *range(11)])]),  # too many to append
        ({**BEFORE, "n": True}, [Op("set", "n", True)]),  # JSON tells true from 1
        ({**BEFORE, "n": 1.0}, [Op("set", "n", 1.0)]),
        ({**BEFORE, "lease": {"f": True}}, [Op("set", "lease", {"f": True})]),
        ({**BEFORE, "events": [True, 2]}, [Op("set", "events", [True, 2])]),  # nested, too
        ({**BEFORE, "_etag": "x", "stage": "done"}, [Op("set", "stage", "done")]),  # store-owned fields aside
        ({**BEFORE, **{f"f{i}": i for i in range(11)}}, None),  # more than one patch carries
        ({**BEFORE, "id": "p:2"}, None),
        ({**BEFORE, "productId": "q"}, None),
        ({**BEFORE, "a/b": 1}, None),
    ],
)
def test_diff_is_the_top_level_patch_between_two_documents(after, ops):
    assert fleet_store.diff({**BEFORE, "_etag": "e"}, after) == ops


def test_a_patch_asked_to_answer_sends_the_document_as_it_stands(store, ns):
    v1 = store.create("jobs", job(ns, "a", events=[1], bodyMd="b" * 3000))
    ops = [fleet_store.Op("set", "stage", "assigned"), fleet_store.Op("append", "events", 2)]

    answered = store.patch("jobs", ns, f"{ns}:a", ops, v1["_etag"], answer=True)

    stored = store.read("jobs", ns, f"{ns}:a")
    assert answered == stored
    assert (answered["stage"], answered["events"], answered["bodyMd"]) == ("assigned", [1, 2], "b" * 3000)
    with pytest.raises(errors.PreconditionFailed):
        store.patch("jobs", ns, f"{ns}:a", ops, v1["_etag"], answer=True)
    with pytest.raises(errors.NotFound):
        store.patch("jobs", ns, f"{ns}:gone", ops, v1["_etag"], answer=True)


def test_racing_patchers_on_one_etag_leave_exactly_one_winner(store, ns):
    n = 8
    v1 = store.create("jobs", job(ns, "a", events=[]))
    won: list[int] = []

    def patch(i: int) -> None:
        try:
            store.patch("jobs", ns, f"{ns}:a", [fleet_store.Op("set", "owner", i), fleet_store.Op("append", "events", i)], v1["_etag"])
        except errors.PreconditionFailed:
            return
        won.append(i)

    race(n, patch)

    got = store.read("jobs", ns, f"{ns}:a")
    assert len(won) == 1
    assert (got["owner"], got["events"]) == (won[0], [won[0]])


def test_racing_answered_patchers_on_one_etag_leave_one_winner_answered_as_stored(store, ns):
    n = 8
    v1 = store.create("jobs", job(ns, "a", events=[], bodyMd="b" * 2000))
    won: list[tuple[int, dict[str, Any]]] = []

    def patch(i: int) -> None:
        ops = [fleet_store.Op("set", "owner", i), fleet_store.Op("append", "events", i)]
        try:
            answered = store.patch("jobs", ns, f"{ns}:a", ops, v1["_etag"], answer=True)
        except errors.PreconditionFailed:
            return
        won.append((i, answered))

    race(n, patch)

    got = store.read("jobs", ns, f"{ns}:a")
    assert len(won) == 1
    assert (got["owner"], got["events"]) == (won[0][0], [won[0][0]])
    assert won[0][1] == got


def test_an_answered_patch_keeps_the_etag_and_drops_the_other_system_fields(store, ns):
    v1 = store.create("jobs", job(ns, "a", events=[]))
    answered = store.patch("jobs", ns, f"{ns}:a", [fleet_store.Op("set", "stage", "assigned")], v1["_etag"], answer=True)
    assert answered["_etag"] and answered["_etag"] != v1["_etag"]
    assert not {"_rid", "_self", "_ts", "_attachments"} & set(answered)
    assert answered == store.read("jobs", ns, f"{ns}:a")
    store.patch("jobs", ns, f"{ns}:a", [fleet_store.Op("set", "stage", "building")], answered["_etag"])


def test_racing_diff_updates_each_apply_exactly_once(store, ns):
    n = 8
    store.create("jobs", job(ns, "a", attempts=0, events=[]))

    def add_one(i: int) -> None:
        fleet_store.swap(
            store, "jobs", ns, f"{ns}:a", lambda d: {**d, "attempts": d["attempts"] + 1, "events": [*d["events"], i]},
            attempts=50, patch=True,
        )

    race(n, add_one)

    got = store.read("jobs", ns, f"{ns}:a")
    assert got["attempts"] == n
    assert sorted(got["events"]) == list(range(n))


def test_a_diff_update_answers_the_document_as_stored(store, ns):
    store.create("jobs", job(ns, "a", stage="queued", lease={"factoryId": "f1"}, events=[1]))

    swapped = fleet_store.swap(
        store, "jobs", ns, f"{ns}:a",
        lambda d: {**{k: v for k, v in d.items() if k != "lease"}, "stage": "building", "events": [*d["events"], 2]},
        patch=True,
    )

    assert swapped.wrote
    assert swapped.doc == store.read("jobs", ns, f"{ns}:a")
    assert "lease" not in swapped.doc and swapped.doc["events"] == [1, 2]


def test_upsert_creates_then_replaces_whatever_the_etag(store, ns):
    created = store.upsert("jobs", job(ns, "a", title="one"))
    assert store.read("jobs", ns, f"{ns}:a") == created

    replaced = store.upsert("jobs", {**job(ns, "a", title="two"), "_etag": "stale"})

    assert replaced["title"] == "two" and replaced["_etag"] != created["_etag"]
    assert store.read("jobs", ns, f"{ns}:a") == replaced


def test_delete_removes_the_document_once(store, ns):
    store.create("jobs", job(ns, "a"))

    store.delete("jobs", ns, f"{ns}:a")

    with pytest.raises(errors.NotFound):
        store.read("jobs", ns, f"{ns}:a")
    with pytest.raises(errors.NotFound):
        store.delete("jobs", ns, f"{ns}:a")


def test_the_other_containers_are_partitioned_by_their_own_keys(store, ns):
    factory = store.create("factories", {"id": f"{ns}-f1", "seatLimit": 2})
    budget = store.create("budgets", {"id": "budget", "productId": ns, "ceilingUsd": 10})

    assert store.read("factories", f"{ns}-f1", f"{ns}-f1") == factory
    assert store.read("budgets", ns, "budget") == budget


# Increment: the queue-state version is bumped without a read-modify-write


def test_increment_of_a_missing_document_creates_it_from_initial(store, ns):
    initial = {"id": "queue-state", "productId": ns, "kind": "queue-state", "version": 100}

    doc = store.increment("jobs", ns, "queue-state", "version", 1, initial)

    assert doc["version"] == 1  # `initial` with the field set to `by`
    assert doc["kind"] == "queue-state"
    assert store.read("jobs", ns, "queue-state") == doc


def test_increment_adds_to_the_current_value_and_keeps_other_fields(store, ns):
    initial = {"id": "queue-state", "productId": ns, "version": 0, "updatedAt": T[0]}
    store.increment("jobs", ns, "queue-state", "version", 1, initial)
    store.increment("jobs", ns, "queue-state", "version", 2, {**initial, "updatedAt": T[5]})

    doc = store.increment("jobs", ns, "queue-state", "version", 0.5, initial)

    assert doc["version"] == 3.5  # 1 + 2 + 0.5
    assert doc["updatedAt"] == T[0]  # `initial` only matters when the document is missing


def test_increment_of_a_field_the_document_lacks_starts_it_at_by(store, ns):
    # (a product's queue-state counts weight changes beside its version, either created first)
    initial = {"id": "queue-state", "productId": ns}
    store.increment("jobs", ns, "queue-state", "version", 1, initial)

    doc = store.increment("jobs", ns, "queue-state", "weightChanges", 1, initial)

    assert (doc["version"], doc["weightChanges"]) == (1, 1)
    assert store.increment("jobs", ns, "queue-state", "version", 1, initial)["weightChanges"] == 1


def test_increment_stamps_fields_in_the_same_write(store, ns):
    initial = {"id": "queue-state", "productId": ns, "version": 0, "updatedAt": None}

    created = store.increment("jobs", ns, "queue-state", "version", 1, initial, stamp={"updatedAt": T[1]})
    bumped = store.increment(
        "jobs", ns, "queue-state", "version", 1, initial, stamp={"updatedAt": T[2], "by": {"factory": "f1"}}
    )

    assert (created["version"], created["updatedAt"]) == (1, T[1])
    assert (bumped["version"], bumped["updatedAt"], bumped["by"]) == (2, T[2], {"factory": "f1"})
    assert store.read("jobs", ns, "queue-state") == bumped


def test_increment_adds_to_other_fields_in_the_same_write(store, ns):
    # (a finish bumps the activity version and counts itself on the day's rollup at once)
    initial = {"id": "day", "productId": ns, "day": "2026-01-01"}

    created = store.increment("jobs", ns, "day", "version", 1, initial, also={"shipped": 1})
    counted = store.increment("jobs", ns, "day", "version", 1, initial, also={"shipped": 1, "spentUsd": 0.25})
    bumped = store.increment("jobs", ns, "day", "version", 1, initial, stamp={"updatedAt": T[1]}, also={})

    assert (created["version"], created["shipped"], created["day"]) == (1, 1, "2026-01-01")
    assert (counted["version"], counted["shipped"], counted["spentUsd"]) == (2, 2, 0.25)
    assert (bumped["version"], bumped["shipped"], bumped["spentUsd"], bumped["updatedAt"]) == (3, 2, 0.25, T[1])
    assert store.read("jobs", ns, "day") == bumped


def test_concurrent_increments_never_lose_an_update(store, ns):
    threads, each = 8, 5
    initial = {"id": "queue-state", "productId": ns, "version": 0}

    def bump(i: int) -> None:
        for _ in range(each):
            store.increment(
                "jobs", ns, "queue-state", "version", 1, initial, stamp={"updatedAt": T[i % 6]}, also={"seen": i % 2}
            )

    race(threads, bump)  # all start on a missing document: exactly one create wins

    doc = store.read("jobs", ns, "queue-state")
    assert (doc["version"], doc["seen"]) == (threads * each, threads // 2 * each)


# The shared compare-and-swap loop over every adapter


def test_racing_updates_each_apply_exactly_once(store, ns):
    n = 8
    store.create("jobs", job(ns, "a", attempts=0))

    def add_one(_: int) -> None:
        fleet_store.update(store, "jobs", ns, f"{ns}:a", lambda d: {**d, "attempts": d["attempts"] + 1}, attempts=50)

    race(n, add_one)

    assert store.read("jobs", ns, f"{ns}:a")["attempts"] == n


def test_an_update_that_decides_nothing_writes_nothing(store, ns):
    before = store.create("jobs", job(ns, "a"))

    after = fleet_store.update(store, "jobs", ns, f"{ns}:a", lambda d: None)

    assert after == before == store.read("jobs", ns, f"{ns}:a")


def test_an_update_whose_decision_raises_writes_nothing(store, ns):
    before = store.create("jobs", job(ns, "a"))

    def refuse(doc):
        raise errors.IllegalTransition()

    with pytest.raises(errors.IllegalTransition):
        fleet_store.update(store, "jobs", ns, f"{ns}:a", refuse)

    assert store.read("jobs", ns, f"{ns}:a") == before


# Query filters


def filter_docs(p: str) -> list[dict[str, Any]]:
    return [
        job(p, "a", stage="queued", attempts=0, createdAt=T[0], parentId=None,
            lease={"expiresAt": T[1], "factoryId": "f1"}),
        job(p, "b", stage="building", attempts=1, createdAt=T[1],
            lease={"expiresAt": T[3], "factoryId": "f2"}),
        job(p, "c", stage="queued", attempts=2, createdAt=T[2], parentId="P", lease=None),
        job(p, "d", stage="shipped", attempts=3, createdAt=T[3]),
    ]


FILTERS = [
    # doc:            a         b          c        d
    # stage:          queued    building   queued   shipped
    # attempts:       0         1          2        3
    # createdAt:      T0        T1         T2       T3
    # parentId:       null      (absent)   "P"      (absent)
    # lease:          T1/f1     T3/f2      null     (absent)
    pytest.param([Filter("stage", "=", "queued")], "ac", id="="),
    pytest.param([Filter("stage", "!=", "queued")], "bd", id="!="),
    pytest.param([Filter("attempts", "<", 2)], "ab", id="<"),
    pytest.param([Filter("attempts", "<=", 2)], "abc", id="<="),
    pytest.param([Filter("attempts", ">", 2)], "d", id=">"),
    pytest.param([Filter("attempts", ">=", 1)], "bcd", id=">="),
    pytest.param([Filter("createdAt", ">=", T[2])], "cd", id=">= on text"),
    pytest.param([Filter("stage", "in", ["building", "shipped"])], "bd", id="in"),
    pytest.param([Filter("attempts", "in", [0, 3])], "ad", id="in numbers"),
    pytest.param([Filter("stage", "in", [])], "", id="in nothing"),
    pytest.param([Filter("parentId", "=", None)], "abd", id="= None is null or absent"),
    pytest.param([Filter("parentId", "!=", None)], "c", id="!= None is present and not null"),
    pytest.param([Filter("parentId", "!=", "Q")], "c", id="!= value skips null and absent"),
    pytest.param([Filter("lease", "=", None)], "cd", id="= None on an object"),
    pytest.param([Filter("lease.expiresAt", "<", T[2])], "a", id="dotted <"),
    pytest.param([Filter("lease.factoryId", "=", "f2")], "b", id="dotted ="),
    pytest.param([Filter("lease.expiresAt", "=", None)], "cd", id="dotted under null or absent"),
    pytest.param([Filter("stage", "=", "queued"), Filter("attempts", ">=", 1)], "c", id="all filters hold"),
]


@pytest.mark.parametrize("where, expected", FILTERS)
def test_filters_select_documents(store, ns, where, expected):
    seed(store, filter_docs(ns))

    page = store.query(Query("jobs", ns, where=tuple(where)))

    assert keys(page.items) == list(expected)  # no order given: by id
    assert page.continuation is None


@pytest.mark.parametrize("where, expected", FILTERS)
def test_count_counts_what_the_filters_select(store, ns, where, expected):
    seed(store, filter_docs(ns))

    assert store.count(Query("jobs", ns, where=tuple(where), limit=1)) == len(expected)  # the limit aside


def test_count_across_partitions(store, ns):
    p, q = f"{ns}-p", f"{ns}-q"
    seed(store, [*filter_docs(p), *filter_docs(q)])

    assert store.count(Query("jobs", None, (both(p, q), Filter("stage", "=", "queued")))) == 4
    assert store.count(Query("jobs", None, (both(p, q), Filter("stage", "=", "review")))) == 0


def test_an_unknown_operator_is_refused():
    with pytest.raises(ValueError):
        Filter("stage", "like", "q%")


# contains: a finished job's blocked dependents name it in their `deps`


def deps_docs(p: str) -> list[dict[str, Any]]:
    return [
        job(p, "a", stage="blocked", deps=["k1", "k2"]),
        job(p, "b", stage="blocked", deps=["k2"]),
        job(p, "c", stage="blocked", deps=[]),
        job(p, "d", stage="blocked"),
        job(p, "e", stage="blocked", deps=None),
        job(p, "f", stage="blocked", deps="k1"),
        job(p, "g", stage="queued", deps=["k1"]),
        job(p, "h", stage="blocked", deps=[["k1"], {"key": "k1"}]),
        job(p, "i", stage="blocked", deps=[1, 2.5]),
        job(p, "j", stage="blocked", deps=[True]),
    ]


CONTAINS = [
    # doc:  a         b      c    d         e     f          g (queued)  h                  i         j
    # deps: [k1, k2]  [k2]   []   (absent)  null  "k1"       [k1]        [[k1], {key: k1}]  [1, 2.5]  [true]
    pytest.param([Filter("deps", "contains", "k1")], "ag", id="an element equal to the value"),
    pytest.param([Filter("deps", "contains", "k2")], "ab", id="any element"),
    pytest.param([Filter("deps", "contains", "k3")], "", id="no element"),
    pytest.param([Filter("deps", "contains", 1)], "i", id="a number, not true"),
    pytest.param([Filter("deps", "contains", 2.5)], "i", id="a fraction"),
    pytest.param([Filter("deps", "contains", True)], "j", id="true, not 1"),
    pytest.param([Filter("deps", "contains", "1")], "", id="text is not a number"),
    pytest.param(
        [Filter("stage", "=", "blocked"), Filter("deps", "contains", "k1")], "a", id="a dep's blocked dependents"
    ),
]


@pytest.mark.parametrize("where, expected", CONTAINS)
def test_contains_matches_arrays_with_an_element_equal_to_the_value(store, ns, where, expected):
    seed(store, deps_docs(ns))

    page = store.query(Query("jobs", ns, where=tuple(where), limit=200))

    assert keys(page.items) == list(expected)  # never a missing, null, empty or non-array field


def test_contains_across_products(store, ns):
    p, q = f"{ns}-p", f"{ns}-q"
    seed(store, [*deps_docs(p), job(q, "a", stage="blocked", deps=["k1"])])

    page = store.query(Query("jobs", None, (both(p, q), Filter("deps", "contains", "k1")), limit=200))

    assert keys(page.items) == ["p:a", "p:g", "q:a"]


@pytest.mark.parametrize("value", [None, ["k1"], {"key": "k1"}])
def test_contains_takes_one_scalar(value):
    with pytest.raises(ValueError):
        Filter("deps", "contains", value)


# Ordering: the shapes the use cases run


def order_docs(p: str, q: str) -> list[dict[str, Any]]:
    return [
        job(p, "a", rankKey=5, createdAt=T[1], updatedAt=T[3], priority="high"),
        job(p, "b", rankKey=5, createdAt=T[1], updatedAt=T[1], attempts=1,
            lease={"expiresAt": T[0], "factoryId": "f2"}),
        job(p, "c", rankKey=5, createdAt=T[0], updatedAt=T[0]),
        job(p, "d", rankKey=9, createdAt=T[2]),
        job(p, "e", rankKey=7, createdAt=T[3], updatedAt=T[4], stage="building",
            lease={"expiresAt": T[2], "factoryId": "f1"}),
        job(q, "a", rankKey=8, createdAt=T[1], updatedAt=T[1], lease={"expiresAt": T[2], "factoryId": "f1"}),
        job(q, "b", rankKey=1, createdAt=T[4], updatedAt=T[5], stage="shipped", parentId=f"{p}:d"),
    ]


def both(p: str, q: str) -> Filter:
    return Filter("productId", "in", [p, q])


ORDERS = [
    # (rankKey, createdAt) of the queued jobs of p: a (5, T1), b (5, T1), c (5, T0), d (9, T2)
    pytest.param(
        lambda p, q: Query("jobs", p, (Filter("stage", "=", "queued"),), (("rankKey", True), ("createdAt", False))),
        ["p:d", "p:c", "p:a", "p:b"],
        id="claim: rankKey desc, older first, then id",
    ),
    # (priority, attempts, createdAt): a (high, 0, T1); b (normal, 1, T1); c (normal, 0, T0); d (normal, 0, T2)
    pytest.param(
        lambda p, q: Query(
            "jobs",
            p,
            (Filter("stage", "=", "queued"),),
            (("priority", False), ("attempts", False), ("createdAt", False)),
        ),
        ["p:a", "p:c", "p:d", "p:b"],
        id="bucket heads: oldest first",
    ),
    pytest.param(
        lambda p, q: Query(
            "jobs",
            p,
            (Filter("stage", "=", "queued"),),
            (("priority", False), ("attempts", False), ("createdAt", True), ("id", True)),
        ),
        ["p:a", "p:d", "p:c", "p:b"],
        id="bucket heads: newest first, ties by id descending",
    ),
    # createdAt: q:b T4, p:e T3, p:d T2, p:a p:b q:a T1, p:c T0
    pytest.param(
        lambda p, q: Query("jobs", None, (both(p, q),), (("createdAt", True),)),
        ["q:b", "p:e", "p:d", "p:a", "p:b", "q:a", "p:c"],
        id="listing across products: newest first, then id",
    ),
    pytest.param(
        lambda p, q: Query("jobs", p, (), (("createdAt", True),)),
        ["p:e", "p:d", "p:a", "p:b", "p:c"],
        id="listing one product: newest first",
    ),
    pytest.param(
        lambda p, q: Query("jobs", None, (both(p, q), Filter("stage", "=", "queued")), (("createdAt", True),)),
        ["p:d", "p:a", "p:b", "q:a", "p:c"],
        id="listing by stage across products",
    ),
    # updatedAt of the queued jobs: p:c T0, p:b T1, q:a T1, p:a T3, p:d (absent)
    pytest.param(
        lambda p, q: Query(
            "jobs",
            None,
            (both(p, q), Filter("stage", "=", "queued"), Filter("updatedAt", ">=", T[1])),
            (("updatedAt", False),),
        ),
        ["p:b", "q:a", "p:a"],
        id="one stage changed since a moment across products: oldest change first, then id",
    ),
    # lease.expiresAt: p:b T0, p:e T2, q:a T2
    pytest.param(
        lambda p, q: Query(
            "jobs", None, (both(p, q), Filter("lease.expiresAt", "<", T[5])), (("lease.expiresAt", False),)
        ),
        ["p:b", "p:e", "q:a"],
        id="sweep: leases by expiry across products",
    ),
    pytest.param(
        lambda p, q: Query("jobs", None, (both(p, q), Filter("lease.factoryId", "=", "f1"))),
        ["p:e", "q:a"],
        id="seats: the leases one factory holds",
    ),
    pytest.param(
        lambda p, q: Query("jobs", q, (Filter("parentId", "=", f"{p}:d"),), (("createdAt", False),)),
        ["q:b"],
        id="DAG: children of a job",
    ),
]


@pytest.mark.parametrize("make_query, expected", ORDERS)
def test_queries_return_documents_in_order(store, ns, make_query, expected):
    p, q = f"{ns}-p", f"{ns}-q"
    seed(store, order_docs(p, q))

    page = store.query(make_query(p, q))

    assert keys(page.items) == expected
    assert page.continuation is None


def test_a_single_partition_query_sees_only_its_partition(store, ns):
    p, q = f"{ns}-p", f"{ns}-q"
    seed(store, order_docs(p, q))

    page = store.query(Query("jobs", q))

    assert keys(page.items) == ["q:a", "q:b"]


# Paging with continuation tokens


def paging_docs(p: str, q: str) -> list[dict[str, Any]]:
    # Ties on rankKey and createdAt put page boundaries inside runs of equal keys; a null
    # rankKey sorts last in descending order.
    return [
        job(p, "a", rankKey=3, createdAt=T[1], updatedAt=T[1]),
        job(p, "b", rankKey=3, createdAt=T[1], updatedAt=T[1]),
        job(p, "c", rankKey=3, createdAt=T[1], updatedAt=T[0]),
        job(p, "d", rankKey=3, createdAt=T[0], updatedAt=T[2]),
        job(p, "e", rankKey=9, createdAt=T[2], updatedAt=T[1]),
        job(p, "f", rankKey=None, createdAt=T[1]),
        job(p, "g", rankKey=-1, createdAt=T[1], updatedAt=T[1]),
        job(q, "a", rankKey=4, createdAt=T[1], updatedAt=T[1]),
        job(q, "b", rankKey=4, createdAt=T[3], updatedAt=T[3]),
    ]


PAGED = [
    pytest.param(
        lambda p, q: Query("jobs", p, (Filter("stage", "=", "queued"),), (("rankKey", True), ("createdAt", False))),
        ["p:e", "p:d", "p:a", "p:b", "p:c", "p:g", "p:f"],
        id="claim order",
    ),
    pytest.param(
        lambda p, q: Query("jobs", None, (both(p, q),), (("createdAt", True),)),
        ["q:b", "p:e", "p:a", "p:b", "p:c", "p:f", "p:g", "q:a", "p:d"],
        id="listing across products",
    ),
    pytest.param(
        lambda p, q: Query(
            "jobs", p, (Filter("stage", "=", "queued"), Filter("priority", "=", "normal"), Filter("attempts", "=", 0)),
            (("createdAt", True),),
        ),
        ["p:e", "p:a", "p:b", "p:c", "p:f", "p:g", "p:d"],
        id="one bucket, newest first",
    ),
    pytest.param(
        lambda p, q: Query(
            "jobs", None, (both(p, q), Filter("stage", "=", "queued"), Filter("updatedAt", ">=", T[1])),
            (("updatedAt", False),),
        ),
        ["p:a", "p:b", "p:e", "p:g", "q:a", "p:d", "q:b"],
        id="one stage changed since a moment, across products",
    ),
    pytest.param(
        lambda p, q: Query("jobs", None, (both(p, q), Filter("stage", "=", "queued"))),
        ["p:a", "p:b", "p:c", "p:d", "p:e", "p:f", "p:g", "q:a", "q:b"],
        id="one stage across products, no order given",
    ),
]


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 50])
@pytest.mark.parametrize("make_query, expected", PAGED)
def test_pages_cover_every_document_exactly_once_in_order(store, ns, make_query, expected, limit):
    p, q = f"{ns}-p", f"{ns}-q"
    seed(store, paging_docs(p, q))
    query = make_query(p, q)
    query = Query(query.container, query.partition_key, query.where, query.order_by, limit=limit)

    pages = list(fleet_store.pages(store, query))

    assert [keys(page.items) for page in pages] == [expected[i : i + limit] for i in range(0, len(expected), limit)]
    assert pages[-1].continuation is None
    assert all(page.continuation for page in pages[:-1])


@pytest.mark.parametrize("limit", [1, 2, 50])
@pytest.mark.parametrize("make_query, expected", PAGED)
def test_a_projected_query_pages_as_the_whole_one_does(store, ns, make_query, expected, limit):
    p, q = f"{ns}-p", f"{ns}-q"
    seed(store, paging_docs(p, q))
    query = make_query(p, q)
    query = Query(query.container, query.partition_key, query.where, query.order_by, limit=limit, fields=("stage", "_etag"))

    pages = list(fleet_store.pages(store, query))

    assert [keys(page.items) for page in pages] == [expected[i : i + limit] for i in range(0, len(expected), limit)]
    whole = {d["id"]: d for d in fleet_store.query_all(store, Query(query.container, query.partition_key, query.where))}
    for doc in (d for page in pages for d in page.items):
        kept = {"id", "stage", "_etag", *(f.split(".")[0] for f, _ in query.order_by)}
        assert set(doc) <= kept and doc["stage"] == whole[doc["id"]]["stage"]
        assert doc["_etag"] == whole[doc["id"]]["_etag"]


def test_a_projection_keeps_the_shape_and_leaves_out_what_is_absent_or_null(store, ns):
    lease = {"leaseId": "l1", "factoryId": "f1", "expiresAt": T[2]}
    seed(
        store,
        [
            job(ns, "a", lease=lease, bodyMd="x" * 4000, capabilities=["gpu", "py"], checkpoint={"step": 2}),
            job(ns, "b", lease=None, capabilities=[]),
            job(ns, "c"),
        ],
    )

    query = Query(
        "jobs", ns, fields=("productId", "_etag", "lease.leaseId", "lease.expiresAt", "capabilities", "checkpoint", "nowhere.deep")
    )
    docs = {d["id"]: d for d in fleet_store.query_all(store, query)}

    assert {k: v for k, v in docs[f"{ns}:a"].items() if k != "_etag"} == {
        "id": f"{ns}:a",
        "productId": ns,
        "lease": {"leaseId": "l1", "expiresAt": T[2]},
        "capabilities": ["gpu", "py"],
        "checkpoint": {"step": 2},
    }
    assert {k: v for k, v in docs[f"{ns}:b"].items() if k != "_etag"} == {"id": f"{ns}:b", "productId": ns, "capabilities": []}
    assert {k: v for k, v in docs[f"{ns}:c"].items() if k != "_etag"} == {"id": f"{ns}:c", "productId": ns}
    assert all(d["_etag"] == store.read("jobs", ns, d["id"])["_etag"] for d in docs.values())


def test_a_projection_sends_no_etag_unless_it_names_it(store, ns):
    seed(store, [job(ns, "a", lease={"leaseId": "l1"})])

    (doc,) = store.query(Query("jobs", ns, fields=("lease.leaseId",))).items

    assert doc == {"id": f"{ns}:a", "lease": {"leaseId": "l1"}}


def test_a_projected_field_name_is_checked(store, ns):
    with pytest.raises(ValueError):
        store.query(Query("jobs", ns, fields=("stage') FROM docs --",)))


def test_a_page_ending_exactly_at_the_last_document_has_no_continuation(store, ns):
    seed(store, [job(ns, k) for k in "abc"])

    page = store.query(Query("jobs", ns, limit=3))

    assert keys(page.items) == ["a", "b", "c"]
    assert page.continuation is None


@pytest.mark.parametrize(
    "token", ["not a token", "99999999999999999999", "9" * 400, "-1", "1.5", " 1", "0x10", "\uff11"]
)
def test_a_garbled_continuation_token_is_refused(store, ns, token):
    seed(store, [job(ns, k) for k in "abc"])

    with pytest.raises(ValueError):  # the API answers 400
        store.query(Query("jobs", ns, limit=1), continuation=token)


def absent(doc: dict[str, Any], *fields: str) -> dict[str, Any]:
    """`doc` without `fields`."""
    return {k: v for k, v in doc.items() if k not in fields}


def null_docs(p: str, q: str) -> list[dict[str, Any]]:
    # Every order key null on some documents and absent on others, tied on some and distinct
    # on the rest (integers and floats), so a page boundary falls inside each run.
    return [
        job(p, "a", rankKey=None, createdAt=T[1], updatedAt=T[1], parentId="x"),
        absent(job(p, "b", updatedAt=T[2]), "rankKey", "createdAt"),
        job(p, "c", rankKey=3, createdAt=None, updatedAt=None, parentId=None),
        job(p, "d", rankKey=3, createdAt=T[1], updatedAt=T[1], parentId="x"),
        job(p, "e", rankKey=3, createdAt=T[0], updatedAt=T[0], parentId="y"),
        job(p, "f", rankKey=-1.5, createdAt=None, parentId="x"),
        job(p, "g", rankKey=7.25, createdAt=T[2], updatedAt=None),
        absent(job(p, "h", rankKey=None, updatedAt=T[1], parentId=None), "createdAt"),
        absent(job(p, "i", createdAt=T[1], updatedAt=T[1], parentId="x"), "rankKey"),
        job(p, "j", rankKey=3.5, createdAt=T[1], updatedAt=T[3], parentId="y"),
        job(p, "k", rankKey=None, createdAt=None, updatedAt=None, parentId=None),
        job(p, "l", rankKey=3, createdAt=T[1], updatedAt=T[1], parentId="x", priority="high"),
        absent(job(q, "a", rankKey=None, parentId="x"), "createdAt", "updatedAt"),
        job(q, "b", rankKey=3, createdAt=T[1], updatedAt=None),
        job(q, "c", rankKey=3, createdAt=None, updatedAt=T[1]),
    ]


NULL_ORDERS = [
    pytest.param(
        lambda p, q: Query("jobs", p, (Filter("stage", "=", "queued"),), (("rankKey", True), ("createdAt", False))),
        id="claim order: descending, then ascending",
    ),
    pytest.param(
        lambda p, q: Query("jobs", None, (both(p, q),), (("createdAt", True),)), id="descending, across products"
    ),
    pytest.param(
        lambda p, q: Query("jobs", None, (both(p, q), Filter("stage", "=", "queued")), (("updatedAt", False),)),
        id="ascending, across products",
    ),
    pytest.param(
        lambda p, q: Query(
            "jobs", p, (Filter("stage", "=", "queued"), Filter("priority", "=", "normal"), Filter("attempts", "=", 0)),
            (("createdAt", False),),
        ),
        id="ascending, some keys pinned",
    ),
    pytest.param(
        lambda p, q: Query(
            "jobs", p, (Filter("stage", "=", "queued"), Filter("priority", "=", "normal"), Filter("attempts", "=", 0)),
            (("createdAt", True),),
        ),
        id="descending, some keys pinned",
    ),
    pytest.param(
        lambda p, q: Query("jobs", p, (), (("parentId", False), ("createdAt", False))), id="two ascending keys"
    ),
]


@pytest.mark.parametrize("make_query", NULL_ORDERS)
def test_paging_one_document_at_a_time_through_null_absent_and_tied_keys_reads_what_one_page_does(
    store, ns, make_query
):
    p, q = f"{ns}-p", f"{ns}-q"
    docs = null_docs(p, q)
    seed(store, docs)
    query = make_query(p, q)
    whole = store.query(dataclasses.replace(query, limit=100))

    pages = list(fleet_store.pages(store, dataclasses.replace(query, limit=1)))

    assert whole.continuation is None
    assert [keys(page.items) for page in pages] == [[k] for k in keys(whole.items)]
    matching = [
        d
        for d in docs
        if query.partition_key in (None, d["productId"])
        and all(d.get(f.field) == f.value or f.op == "in" and d["productId"] in f.value for f in query.where)
    ]
    assert sorted(keys(whole.items)) == sorted(keys(matching))  # none left out for a null or absent key


def test_paging_through_an_order_key_of_mixed_json_types_reads_what_one_page_does(store, ns):
    values = [None, "b", 2, True, "a", 2.5, False, -1, "b", 2, None, True, 0.5, ""]
    docs = [job(ns, f"{n:02d}", rankKey=v, parentId=v) for n, v in enumerate(values)]
    seed(store, [*docs, absent(job(ns, "zz"), "rankKey", "parentId")])
    # Descending and ascending, each as an index serves it on Cosmos.
    for where, order in [
        ((Filter("stage", "=", "queued"),), (("rankKey", True), ("createdAt", False))),
        ((), (("parentId", False),)),
    ]:
        whole = store.query(Query("jobs", ns, where, order, limit=100))

        pages = list(fleet_store.pages(store, Query("jobs", ns, where, order, limit=1)))

        assert [keys(page.items) for page in pages] == [[k] for k in keys(whole.items)]
        assert len(whole.items) == len(docs) + 1


def test_a_token_of_a_query_in_another_order_is_refused(store, ns):
    seed(store, [job(ns, k) for k in "abc"])
    token = store.query(Query("jobs", ns, (), (("createdAt", True),), limit=1)).continuation

    with pytest.raises(ValueError):
        store.query(Query("jobs", ns, (), (("updatedAt", True),), limit=1), continuation=token)


def _forged(token: str, edit: Callable[[dict[str, Any]], Any]) -> str:
    raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    return base64.urlsafe_b64encode(json.dumps(edit(raw)).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "forge",
    [
        lambda token: token + "=",  # padded: not the one spelling handed out
        lambda token: token.replace("-", "+").replace("_", "/") + "A" * (-len(token) % 4),
        lambda token: token[:-2],
        lambda token: _forged(token, lambda raw: {**raw, "x": 1}),
        lambda token: _forged(token, lambda raw: {**raw, "v": raw["v"][:-1]}),
        lambda token: _forged(token, lambda raw: {**raw, "v": ["ab" for _ in raw["v"]]}),
        lambda token: _forged(token, lambda raw: {**raw, "v": [[1, 2] for _ in raw["v"]]}),
        lambda token: _forged(token, lambda raw: raw["v"]),
        lambda token: _forged(token, lambda raw: {**raw, "v": [[["a"]] for _ in raw["v"]]}),
        lambda token: base64.urlsafe_b64encode(b"[" * 100_000).decode(),
    ],
)
def test_an_edited_continuation_token_is_refused(store, ns, forge):
    seed(store, [job(ns, k) for k in "abc"])
    query = Query("jobs", ns, (), (("createdAt", True),), limit=1)
    token = store.query(query).continuation
    forged = forge(token)
    assert forged != token

    with pytest.raises(ValueError):
        store.query(query, continuation=forged)


@pytest.mark.parametrize("value", [[["a"]], [{"a": 1}], [True], [2**63], [float("nan")], []])
def test_a_token_holding_what_sqlite_cannot_have_read_is_refused(tmp_path, value):
    sqlite = SqliteStore(str(tmp_path / "fleet.db"))
    query = Query("jobs", "p", (), (("createdAt", True),), limit=1)
    token = keyset.encode(["createdAt", "id"], [value[0] if value else keyset.ABSENT, "p:a"])

    with pytest.raises(ValueError):
        sqlite.query(query, continuation=token)
    sqlite.close()


def test_ping_answers(store):
    store.ping()


# Request charge


def test_store_calls_are_charged_to_the_request_meter(store, ns):
    with charge.metered() as meter:
        store.create("jobs", job(ns, "a"))
        store.read("jobs", ns, f"{ns}:a")
        store.query(Query("jobs", ns))

    if isinstance(store, CosmosStore):
        assert meter.responses >= 3 and meter.total >= 3  # the local server charges 1 per response
    else:
        assert (meter.responses, meter.total) == (0, 0)  # SQLite costs nothing
    assert charge.total() == 0  # the meter ended with the block


def test_the_meter_totals_what_is_added_until_reset():
    token = charge.start()
    charge.add(1.5)
    charge.add(2.25)

    assert charge.total() == 3.75
    assert charge.reset(token) == 3.75
    assert charge.total() == 0


def test_charges_without_a_meter_go_nowhere():
    charge.add(5)

    assert charge.total() == 0 and charge.current() is None


def test_meters_nest_and_the_outer_one_resumes():
    with charge.metered() as outer:
        charge.add(1)
        with charge.metered() as inner:
            charge.add(10)
        charge.add(2)

    assert (outer.total, inner.total) == (3, 10)


def test_each_thread_meters_its_own_requests():
    totals = {}

    def request(i: int) -> None:
        with charge.metered() as meter:
            for _ in range(100):
                charge.add(i)
        totals[i] = meter.total

    race(4, request)

    assert totals == {0: 0, 1: 100, 2: 200, 3: 300}


@pytest.mark.parametrize("ru, header", [(0, "0"), (1, "1"), (2.5, "2.5"), (10.336, "10.34"), (3.0, "3")])
def test_the_header_value_is_short(ru, header):
    assert charge.header_value(ru) == header


# Cosmos only: the adapter's edge


def busy(status: int, headers: dict[str, str] | None = None) -> cosmos_exceptions.CosmosHttpResponseError:
    exc = cosmos_exceptions.CosmosHttpResponseError(status_code=status, message="busy")
    exc.headers = headers or {}
    return exc


@pytest.mark.parametrize(
    "status, headers, expected, retry_after",
    [
        (404, {}, errors.NotFound, None),
        (409, {}, errors.Conflict, None),
        (412, {}, errors.PreconditionFailed, None),
        (413, {}, errors.TooLarge, None),  # an item over 2 MB
        (429, {"x-ms-retry-after-ms": "250"}, errors.StoreBusy, 0.25),  # after the SDK's own retries
        (429, {}, errors.StoreBusy, 1.0),
        (503, {}, errors.StoreBusy, 1.0),
        (408, {}, errors.StoreBusy, 1.0),
        (403, {}, errors.StoreUnavailable, None),
    ],
)
def test_cosmos_errors_become_the_ports_errors(status, headers, expected, retry_after):
    domain = cosmos_store.converted(busy(status, headers), "jobs/x")

    assert isinstance(domain, expected)
    if retry_after is not None:
        assert domain.retry_after == retry_after
    # and each is answerable over HTTP as its own problem (regression: Cosmos's status code,
    # carried as the error's `status`, collided with the problem's own, a 500)
    from shared import http

    answer = http.from_error(domain)
    assert answer.status_code == http.status_of(domain) != 500
    assert json.loads(answer.get_body())["status"] == answer.status_code


def test_a_cosmos_write_answered_without_its_document_hands_back_what_was_written():
    # The service honours `no_response` with an empty body and the new ETag in a header (the
    # local test server sends the document anyway, which the suite above covers).
    from azure.core.utils import CaseInsensitiveDict
    from azure.cosmos._cosmos_responses import CosmosDict

    body = {"id": "p:a", "productId": "p", "stage": "queued"}
    minimal = CosmosDict({}, response_headers=CaseInsensitiveDict({"etag": '"00-new"', "x-ms-request-charge": "10"}))
    assert cosmos_store._written(body, minimal) == {**body, "_etag": '"00-new"'}
    full = CosmosDict({**body, "_etag": '"00-new"', "_ts": 1, "_rid": "x"}, response_headers=CaseInsensitiveDict())
    assert cosmos_store._written(body, full) == {**body, "_etag": '"00-new"'}


def test_a_cosmos_patch_is_one_conditional_patch_item_answered_with_its_etag():
    from azure.core import MatchConditions
    from azure.core.utils import CaseInsensitiveDict
    from azure.cosmos._cosmos_responses import CosmosDict

    sent = {}

    class Container:
        def patch_item(self, **kwargs):
            sent.update(kwargs)
            return CosmosDict({}, response_headers=CaseInsensitiveDict({"etag": '"00-new"'}))

    store = CosmosStore.__new__(CosmosStore)
    store.timeout, store._containers = 1.0, {"jobs": Container()}
    ops = [fleet_store.Op("set", "stage", "building"), fleet_store.Op("remove", "lease"), fleet_store.Op("append", "events", {"t": 1})]

    assert store.patch("jobs", "p", "p:a", ops, '"00-old"') == {"_etag": '"00-new"'}
    assert sent["patch_operations"] == [
        {"op": "set", "path": "/stage", "value": "building"},
        {"op": "remove", "path": "/lease"},
        {"op": "add", "path": "/events/-", "value": {"t": 1}},
    ]
    assert (sent["etag"], sent["match_condition"], sent["no_response"]) == ('"00-old"', MatchConditions.IfNotModified, True)
    assert "filter_predicate" not in sent


def test_other_cosmos_errors_pass_through():
    exc = busy(400)

    assert cosmos_store.converted(exc) is exc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_cosmos_account_is_busy():
    with pytest.raises(errors.StoreBusy):
        CosmosStore(f"https://127.0.0.1:{free_port()}/", key=EMULATOR_KEY, verify_tls=False)


def test_a_cosmos_server_that_goes_away_makes_the_store_busy():
    try:
        server = start_cosmos_server()
    except ServerUnavailable as exc:
        unavailable(str(exc))
    try:
        # No connection retries: the SDK would spend seconds retrying before giving up.
        store = CosmosStore(
            server.endpoint,
            key=server.key,
            database="gone",
            verify_tls=False,
            create=True,
            retry_total=0,
            retry_connect=0,
        )
        store.upsert("factories", {"id": "f1"})
    finally:
        server.stop()

    with pytest.raises(errors.StoreBusy):
        store.read("factories", "f1", "f1")
    with pytest.raises(errors.StoreBusy):
        store.ping()
    store.close()
    gc.collect()  # the SDK drops the broken connection unclosed: finalize it here, not later


# A second client per test would leave the SDK's background connections to the garbage
# collector; the settings are pure, and the `store` fixture already drives a real client.
def test_from_env_reads_the_cosmos_settings():
    settings = config.cosmos_settings(
        {
            "COSMOS_ENDPOINT": "https://127.0.0.1:8081",
            "COSMOS_KEY": "k",
            "COSMOS_DATABASE": "from-env",
            "COSMOS_VERIFY_TLS": "False",
            "COSMOS_CREATE": "1",
        }
    )
    assert settings == {
        "endpoint": "https://127.0.0.1:8081",
        "key": "k",
        "database": "from-env",
        "verify_tls": False,
        "create": True,
    }


@pytest.mark.parametrize(
    "environ,expected",
    [
        ({"COSMOS_ENDPOINT": "https://a"}, {"key": None, "database": "fleet", "verify_tls": True, "create": False}),
        ({"COSMOS_ENDPOINT": "https://a", "COSMOS_VERIFY_TLS": "no", "COSMOS_CREATE": "yes"}, {"verify_tls": False, "create": True}),
    ],
)
def test_from_env_defaults(environ, expected):
    settings = config.cosmos_settings(environ)
    assert {k: settings[k] for k in expected} == expected


def test_from_env_needs_an_endpoint():
    with pytest.raises(ValueError):
        config.cosmos_settings({})


def test_a_multi_key_order_without_a_composite_index_is_refused_before_the_service_sees_it():
    spec = cosmos_query.load_containers()["jobs"]
    query = Query("jobs", "p", order_by=(("title", False), ("createdAt", True)))

    with pytest.raises(ValueError, match="composite index"):
        cosmos_query.index_order(spec, query)


def test_equality_filters_lead_the_order_when_an_index_has_them():
    spec = cosmos_query.load_containers()["jobs"]
    claim = Query("jobs", "p", (Filter("stage", "=", "queued"),), (("rankKey", True), ("createdAt", False)))
    in_stages = Query("jobs", "p", (Filter("stage", "in", ["queued"]),), (("createdAt", True),))

    assert cosmos_query.index_order(spec, claim) == (
        ("stage", False), ("rankKey", True), ("createdAt", False), ("id", False)
    )
    assert cosmos_query.index_order(spec, in_stages) == (("createdAt", True), ("id", False))


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_a_projected_query_pages_past_null_order_values_as_the_whole_one_does(store, ns, limit):
    # Two jobs with a null rankKey, and one without: the claim order puts them last, so a page
    # can end on a null whose token must say null, not absent (Cosmos orders them apart).
    docs = [
        job(ns, "a", rankKey=3),
        job(ns, "f", rankKey=None),
        job(ns, "h", rankKey=None),
        job(ns, "j", rankKey=None),
    ]
    seed(store, docs)
    order = (("rankKey", True), ("createdAt", False))
    whole = Query("jobs", ns, (Filter("stage", "=", "queued"),), order, limit=limit)
    projected = dataclasses.replace(whole, fields=("stage",))

    expected = [d["id"] for d in fleet_store.query_all(store, whole)]
    assert [d["id"] for d in fleet_store.query_all(store, projected)] == expected
    assert sorted(expected) == sorted(d["id"] for d in docs)
