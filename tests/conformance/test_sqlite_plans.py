"""SQLite query plans: every query the use cases run reads its index in order, never a sort.

For each query shape in `fleet/` (`store.Query(` there), `SqliteStore.explain` shows SQLite's
plan for the SQL the adapter sends, over a file seeded with a few thousand documents. The plan
must search the index named for the shape (`SEARCH docs USING INDEX …`; the primary key for
the small containers) and must not sort (`USE TEMP B-TREE FOR ORDER BY`): a sort means reading
every match before the first page. The adapter names each query's index to SQLite
(`serving_index`): these tests pin that choice, that SQLite reads the order off it (also once
`ANALYZE` has measured the file), and that it returns what the table read without an index
does. A continued page is read in stretches of the index after its token, one statement each:
every one must seek into the same index and read it in order too. Each index of `INDEXES`
serves at least one shape here.
"""
from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from fleet import errors
from fleet import store as fleet_store
from fleet.candidates import HEAD_FIELDS
from fleet.store import Filter, Query, clean
from shared.stores import sqlite_store
from shared.stores import sqlite_query
from shared.stores.sqlite_query import INDEXES
from shared.stores.sqlite_store import SqliteStore

PRODUCTS = [f"product-{n}" for n in range(8)]
FACTORIES = [f"factory-{n}" for n in range(20)]
STAGES = ["queued"] * 3 + ["blocked"] * 2 + ["assigned", "building", "review", "testing"] + ["shipped"] * 6 + [
    "done", "failed", "dead_letter", "cancelled"
]
LEASED = {"assigned", "building", "review", "testing"}
PRIORITIES = ["low", "normal", "high", "critical"]
NOW = "2025-06-01T00:00:00.000Z"
PRIMARY_KEY = "PRIMARY KEY"


def at(minute: int) -> str:
    return f"2025-05-{1 + minute // 1440:02d}T{minute // 60 % 24:02d}:{minute % 60:02d}:00.000Z"


def job(rng: random.Random, n: int) -> dict[str, Any]:
    product = rng.choice(PRODUCTS)
    stage = rng.choice(STAGES)
    created = rng.randrange(40_000)
    doc: dict[str, Any] = {
        "id": f"{product}:{n:06d}",
        "productId": product,
        "idempotencyKey": f"k{n}",
        "stage": stage,
        "priority": rng.choice(PRIORITIES),
        "attempts": rng.randrange(3),
        "rankKey": rng.uniform(-1000, 1000),
        "deps": [f"k{rng.randrange(10)}" for _ in range(rng.randrange(3))],
        "parentId": f"{product}:parent-{n % 5}" if rng.random() < 0.1 else None,
        "lease": None,
        "createdAt": at(created),
        "updatedAt": at(created + rng.randrange(2_000)),
    }
    if stage in LEASED:
        doc["lease"] = {"leaseId": f"l{n}", "factoryId": rng.choice(FACTORIES), "expiresAt": at(created + 5)}
    if rng.random() < 0.02:
        doc["accrualPending"] = True
    if stage == "queued" and rng.random() < 0.1:
        doc["retryAt"] = at(created + rng.randrange(2_000))  # waiting to retry
    # A few order keys null or absent, as a document written before the field existed.
    if n % 37 == 0:
        doc["rankKey"] = None
    if n % 41 == 0:
        del doc["createdAt"]
    if n % 43 == 0:
        del doc["updatedAt"]
    cap_key = rng.choice(["", "", "", "gpu", "py", "gpu,py", None])  # None: written before capKey
    if cap_key is not None:
        doc["capKey"] = cap_key
    return doc


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteStore]:
    store = SqliteStore(str(tmp_path_factory.mktemp("plans") / "fleet.db"))
    rng = random.Random(7)
    for n in range(4000):
        store.create("jobs", job(rng, n))
    for product in PRODUCTS:
        store.create("jobs", {"id": "queue-state", "productId": product, "version": 3, "capSetsComplete": True})
        store.create("jobs", {"id": "weights", "productId": product, "rekeying": product == PRODUCTS[0]})
        store.create("budgets", {"id": "budget", "productId": product, "ceilingUsd": 100, "accruals": ["a1"]})
    for factory in FACTORIES:
        store.create("factories", {"id": factory, "seatLimit": 2})
    yield store
    store.close()


QUEUED = Filter("stage", "=", "queued")
BLOCKED = Filter("stage", "=", "blocked")
LISTED = Filter("createdAt", "!=", None)
P = PRODUCTS[1]


def bucket(newest_first: bool, cap_key: str | None = None) -> Query:
    caps = () if cap_key is None else (Filter("capKey", "=", cap_key),)
    where = (QUEUED, *caps, Filter("priority", "=", "high"), Filter("attempts", "=", 1))
    order = (("createdAt", True), ("id", True)) if newest_first else (("createdAt", False),)  # as candidates reads them
    return Query("jobs", P, where, order, 8, HEAD_FIELDS)


def changed(stage: str, since: str | None) -> Query:
    where = (Filter("stage", "=", stage),) + ((Filter("updatedAt", ">=", since),) if since else ())
    return Query("jobs", None, where, (("updatedAt", False),), limit=200)


SHAPES = [
    # candidates.rank_stream: the claim, fast path
    pytest.param(
        Query("jobs", P, (QUEUED,), (("rankKey", True), ("createdAt", False)), 8, HEAD_FIELDS), "jobs_rank", id="claim"
    ),
    # candidates.bucket_streams: the head of one (priority, attempts) bucket
    pytest.param(bucket(newest_first=False), "jobs_bucket", id="claim bucket, oldest first"),
    pytest.param(bucket(newest_first=True), "jobs_bucket", id="claim bucket, newest first (read backwards)"),
    # the same, narrowed to one capability set (candidates.Stream.narrowed)
    pytest.param(
        Query("jobs", P, (QUEUED, Filter("capKey", "=", "gpu")), (("rankKey", True), ("createdAt", False)), 8, HEAD_FIELDS),
        "jobs_rank_caps",
        id="claim, one capability set",
    ),
    pytest.param(
        Query("jobs", P, (QUEUED, Filter("capKey", "=", "")), (("rankKey", True), ("createdAt", False)), 8, HEAD_FIELDS),
        "jobs_rank_caps",
        id="claim, the jobs needing no capability",
    ),
    pytest.param(bucket(newest_first=False, cap_key=""), "jobs_bucket_caps", id="claim bucket, one capability set"),
    pytest.param(
        bucket(newest_first=True, cap_key=""), "jobs_bucket_caps", id="claim bucket, one set, newest first (backwards)"
    ),
    # capability_sets: whether a set still has a queued job; every product's queue-state
    pytest.param(
        Query("jobs", P, (QUEUED, Filter("capKey", "=", "gpu,py")), (("rankKey", True), ("createdAt", False)), 1),
        "jobs_rank_caps",
        id="a set's queued job",
    ),
    pytest.param(
        Query("jobs", P, (QUEUED, Filter("capKey", "=", None)), (("rankKey", True), ("createdAt", False)), 100),
        "jobs_rank",
        id="queued jobs older than capKey",
    ),
    pytest.param(Query("jobs", None, (Filter("id", "=", "queue-state"),), limit=200), "jobs_id", id="queue-states"),
    # listing.page: newest first, with and without a product and a stage (limit + offset)
    pytest.param(Query("jobs", None, (LISTED,), (("createdAt", True),), 70), "jobs_created", id="listing"),
    pytest.param(
        Query("jobs", P, (LISTED,), (("createdAt", True),), 70), "jobs_product_created", id="listing, product"
    ),
    pytest.param(
        Query("jobs", None, (Filter("stage", "=", "review"),), (("createdAt", True),), 70),
        "jobs_stage_created",
        id="listing, stage",
    ),
    pytest.param(
        Query("jobs", P, (Filter("stage", "=", "review"),), (("createdAt", True),), 70),
        "jobs_product_stage_created",
        id="listing, product and stage",
    ),
    # effects.release_dependents (a product's blocked jobs naming the finished job's key, read
    # as its listing of the stage is); weight_registry's re-key (queued jobs, in claim order)
    pytest.param(
        Query("jobs", P, (BLOCKED, Filter("deps", "contains", "k7")), (("createdAt", True),), limit=200),
        "jobs_product_stage_created",
        id="blocked dependents of a finished dep",
    ),
    pytest.param(
        Query("jobs", P, (QUEUED,), (("rankKey", True), ("createdAt", False)), limit=200),
        "jobs_rank",
        id="re-key a product's queued jobs",
    ),
    # sweep.changed: jobs in one stage changed since a moment (or ever), across products
    pytest.param(changed("queued", at(30_000)), "jobs_stage_updated", id="queued since"),
    pytest.param(changed("blocked", at(30_000)), "jobs_stage_updated", id="blocked since"),
    pytest.param(changed("shipped", at(30_000)), "jobs_stage_updated", id="shipped since"),
    pytest.param(changed("done", at(30_000)), "jobs_stage_updated", id="done since"),
    pytest.param(changed("blocked", None), "jobs_stage_updated", id="blocked, oldest change first"),
    # sweep.expired_leases
    pytest.param(
        Query("jobs", None, (Filter("lease.expiresAt", "<", NOW),), (("lease.expiresAt", False),), limit=200),
        "jobs_lease_expiry",
        id="sweep: expired leases",
    ),
    # factories.held_leases: one factory's, or every held lease
    pytest.param(
        Query("jobs", None, (Filter("lease.factoryId", "=", "factory-3"),), (("lease.factoryId", False),), 500),
        "jobs_lease_factory",
        id="seats: one factory's leases",
    ),
    pytest.param(
        Query("jobs", None, (Filter("lease.factoryId", "!=", None),), (("lease.factoryId", False),), 500),
        "jobs_lease_factory",
        id="seats: every held lease",
    ),
    # factories.heartbeat: one factory's leases in no order (projected to the lease, which
    # changes what a row sends, not the plan)
    pytest.param(
        Query("jobs", None, (Filter("lease.factoryId", "=", "factory-3"),), limit=500),
        "jobs_lease_factory",
        id="heartbeat: one factory's leases",
    ),
    # sweep.rekeys, spend.replay_pending
    pytest.param(
        Query("jobs", None, (Filter("rekeying", "=", True),), limit=100), "jobs_rekeying", id="sweep: re-keying"
    ),
    pytest.param(
        Query("jobs", None, (Filter("accrualPending", "=", True),), limit=200), "jobs_accrual", id="sweep: accruals"
    ),
    # sweep.due_retries: jobs whose retry wait has passed, across products
    pytest.param(
        Query("jobs", None, (Filter("retryAt", "<=", at(20_000)),), (("retryAt", False),), 200, ("productId",)),
        "jobs_retry", id="sweep: retries due",
    ),
    # a composite job's children (the DAG reads them by id today; the index stays for the query)
    pytest.param(Query("jobs", P, (Filter("parentId", "=", f"{P}:parent-0"),)), "jobs_parent", id="children of a job"),
    # factories.list_all, budgets: the whole (small) container, by primary key
    pytest.param(Query("factories", None, order_by=(("id", False),), limit=500), PRIMARY_KEY, id="factories"),
    pytest.param(Query("budgets", None, limit=200), PRIMARY_KEY, id="budgets"),
]


def assert_reads_in_order(plan: str, index: str) -> None:
    """Every read of `docs` in `plan` (one a statement: a continued page may run several) is a
    search of `index`, and nothing is sorted."""
    using = f"USING {index}" if index == PRIMARY_KEY else f"USING INDEX {index} "
    reads = [line for line in plan.splitlines() if line.startswith(("SEARCH docs ", "SCAN docs"))]
    assert plan.splitlines()[0].startswith("SEARCH docs "), plan
    assert all(line.startswith("SEARCH docs ") and using in line for line in reads), plan
    assert "TEMP B-TREE" not in plan, plan  # no sort
    assert "SCAN docs" not in plan, plan


def continuations(store: SqliteStore, query: Query) -> list[str]:
    """Tokens of continued pages of `query`: paged 3 rows at a time, the first after each mix of
    null and set order keys (after a null, a key reads in stretches of its own); and one after
    a row of zeros, which every shape has a page after."""
    order = sqlite_query.page_order(query)
    tokens = {(): sqlite_query.token(query, [P if name in ("@pk", "id") else 0 for name, _ in order])}
    for page in fleet_store.pages(store, replace(query, limit=3)):
        if page.continuation:
            nulls = tuple(v is None for v in sqlite_query.position(order, page.continuation))
            tokens.setdefault(nulls, page.continuation)
    return list(tokens.values())


@pytest.mark.parametrize("query, index", SHAPES)
def test_each_query_shape_searches_its_index_without_a_sort(store, query, index):
    assert_reads_in_order(store.explain(query), index)


@pytest.mark.parametrize("query, index", SHAPES)
def test_a_continued_page_searches_the_same_index_without_a_sort(store, query, index):
    for token in continuations(store, query):
        assert_reads_in_order(store.explain(query, continuation=token), index)


@pytest.mark.parametrize("query, index", SHAPES)
def test_a_continued_page_seeks_to_where_it_starts(store, query, index):
    # The range after the row's last tied key is bounded by its value: SQLite starts there.
    order = sqlite_query.page_order(query)
    token = sqlite_query.token(query, [P if name in ("@pk", "id") else 0 for name, _ in order])
    first = store.explain(query, continuation=token).splitlines()[0]
    name, desc = order[-1]
    assert f"{'id' if name == 'id' else 'pk' if name == '@pk' else '<expr>'}{'<' if desc else '>'}?" in first, first


def test_every_index_serves_a_query_shape():
    assert {name for name, _, _ in INDEXES} <= {p.values[1] for p in SHAPES}


def table_scan(store: SqliteStore, query: Query, index: str) -> list[dict[str, Any]]:
    """What `query`'s first page holds read off the table, not its index: every match, sorted,
    whole (a projected shape is compared on the documents it projects)."""
    ((sql, params),) = sqlite_query.select(replace(query, fields=()))
    conn = sqlite3.connect(store.path)
    try:
        rows = conn.execute(sql.replace(f"INDEXED BY {index}", "NOT INDEXED"), [*params, query.limit + 1]).fetchall()
        return [json.loads(row[0]) for row in rows]
    finally:
        conn.close()


@pytest.mark.parametrize("query, index", SHAPES)
def test_a_shape_read_through_its_index_returns_what_a_table_scan_does(store, query, index):
    scanned = table_scan(store, query, index)

    page = store.query(replace(query, fields=()))

    assert scanned  # the seed gives every shape something to find
    assert [clean(doc) for doc in page.items] == scanned[: query.limit]


@pytest.mark.parametrize("query, index", SHAPES)
def test_paging_a_shape_returns_what_one_table_scan_does(store, query, index):
    scanned = table_scan(store, replace(query, limit=10_000), index)

    pages = list(fleet_store.pages(store, replace(query, limit=13, fields=())))

    assert [clean(doc) for page in pages for doc in page.items] == scanned


def test_measured_statistics_do_not_change_the_plans(store):
    with store.connection() as conn:
        conn.execute("ANALYZE")
    try:
        fresh = SqliteStore(store.path)  # loads the statistics
        for param in SHAPES:
            query, index = param.values
            assert_reads_in_order(fresh.explain(query), index)
            for token in continuations(fresh, query):
                assert_reads_in_order(fresh.explain(query, continuation=token), index)
        fresh.close()
    finally:
        with store.connection() as conn:
            conn.execute("DROP TABLE IF EXISTS sqlite_stat1")


def test_an_index_an_older_version_defined_differently_is_rebuilt_and_an_unused_one_dropped(tmp_path):
    path = str(tmp_path / "old.db")
    SqliteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP INDEX jobs_created")
    conn.execute(
        "CREATE INDEX jobs_created ON docs(container, json_extract(body, '$.createdAt')) WHERE container = 'jobs'"
    )
    conn.execute("CREATE INDEX jobs_retired ON docs(container, json_extract(body, '$.title'))")
    conn.commit()
    conn.close()

    store = SqliteStore(path)

    with store.connection() as conn:
        indexes = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql NOT NULL"))
    assert indexes == {name: sqlite_query.index_sql(name, c, keys) for name, c, keys in INDEXES}
    assert_reads_in_order(store.explain(Query("jobs", None, (LISTED,), (("createdAt", True),))), "jobs_created")
    store.close()


@pytest.mark.parametrize(
    "rebuilt",
    [
        "DROP INDEX jobs_created",  # an index it names is gone
        # or holds other documents than its queries imply (SQLite then has no plan for them)
        "DROP INDEX jobs_created; CREATE INDEX jobs_created ON docs(container, k_createdAt DESC)"
        " WHERE container = 'jobs' AND k_stage IS NOT NULL",
    ],
    ids=["dropped", "redefined"],
)
def test_indexes_another_version_rebuilt_make_a_query_unavailable_not_a_crash(tmp_path, rebuilt):
    path = str(tmp_path / "shared.db")
    store = SqliteStore(path)
    conn = sqlite3.connect(path)  # the other version, opening the file while this one runs
    conn.executescript(rebuilt)
    conn.close()

    with pytest.raises(errors.StoreUnavailable, match="another version") as raised:
        store.query(Query("jobs", None, (LISTED,), (("createdAt", True),)))
    assert raised.value.reason is errors.StoreFault.UNAVAILABLE
    store.close()


def test_a_query_that_cannot_match_runs_nothing(store):
    assert store.explain(Query("jobs", None, (Filter("stage", "in", []),))) == ""
