"""How `SqliteStore` reads: the expression indexes, and the SQL of a query.

Queries filter and order on `json_extract` expressions; the indexes below make every query
the use cases run an index range scan read in index order (no sort), so its cost does not grow
with the number of documents; `tests/conformance/test_sqlite_plans.py` pins each plan.

Every order ends with the partition key, then `id`: a total order (the primary key), and the
one every index ends with (SQLite appends the primary key to each index of a `WITHOUT ROWID`
table), so the index serves the tiebreak too. Within a partition that is `id` order, as on
Cosmos; across partitions it is partition-key order first. The SQL names the index a query is
read by (`serving_index`, as `shared.stores.cosmos_query` picks a composite index) instead of leaving
it to SQLite's planner, which without statistics prefers the primary key and a sort.
"""
from __future__ import annotations

from typing import Any

from fleet.store import PARTITION_KEYS, Query


#: The largest continuation token (an offset) a query takes: SQLite's integers are 64-bit.
MAX_OFFSET = 2**63 - 1

#: (name, container, key expressions). A key is a dotted field (`@pk`: the partition key),
#: optionally with " DESC". Each index implicitly ends with (pk, id) ascending, the tiebreak of
#: every query: a query is read off the index whose keys, past those its equality filters pin,
#: begin with its order (`serving_index`), so a descending order needs a descending key.
INDEXES: list[tuple[str, str, tuple[str, ...]]] = [
    # claim, fast path: queued jobs of a product by rankKey …
    ("jobs_rank", "jobs", ("@pk", "stage", "rankKey DESC", "createdAt")),
    # … and of one capability set (capKey), once a first page did not settle the claim.
    ("jobs_rank_caps", "jobs", ("@pk", "stage", "capKey", "rankKey DESC", "createdAt")),
    # claim, bucket path: the head of each (priority, attempts) bucket, oldest first …
    ("jobs_bucket", "jobs", ("@pk", "stage", "priority", "attempts", "createdAt")),
    # … and newest first (a negative age weight) …
    ("jobs_bucket_newest", "jobs", ("@pk", "stage", "priority", "attempts", "createdAt DESC")),
    # … and of one capability set, either way.
    ("jobs_bucket_caps", "jobs", ("@pk", "stage", "capKey", "priority", "attempts", "createdAt")),
    ("jobs_bucket_caps_newest", "jobs", ("@pk", "stage", "capKey", "priority", "attempts", "createdAt DESC")),
    # listings, newest first, with and without a product or a stage.
    ("jobs_product_created", "jobs", ("@pk", "createdAt DESC")),
    ("jobs_product_stage_created", "jobs", ("@pk", "stage", "createdAt DESC")),
    ("jobs_stage_created", "jobs", ("stage", "createdAt DESC")),
    ("jobs_created", "jobs", ("createdAt DESC",)),
    # jobs in one stage, of one product or of all, any order (blocked jobs for the sweep and
    # for a finished dep's dependents, a product's queued jobs to re-key).
    ("jobs_stage", "jobs", ("stage",)),
    # jobs in one stage changed since a moment, oldest change first, across products.
    ("jobs_stage_updated", "jobs", ("stage", "updatedAt")),
    # sweeps and seats: leases by expiry and by holder.
    ("jobs_lease_expiry", "jobs", ("lease.expiresAt",)),
    ("jobs_lease_factory", "jobs", ("lease.factoryId",)),
    ("jobs_parent", "jobs", ("@pk", "parentId")),
    # sweep: products whose weight change is still re-keying jobs.
    ("jobs_rekeying", "jobs", ("rekeying",)),
    # sweep: runs whose cost is not yet on the budget.
    ("jobs_accrual", "jobs", ("accrualPending",)),
    # sweep: one reserved document of every product (its queue-state), by id across products.
    ("jobs_id", "jobs", ("id",)),
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


def select(query: Query, offset: int = 0) -> tuple[str, list[Any]] | None:
    """The SQL and parameters that read one page of `query` (one row more than its limit, to
    tell whether another page follows) from `offset`; `None` when nothing can match (`in []`)."""
    filtered = _filters(query)
    if filtered is None:
        return None
    where, params = filtered
    container = query.container
    # A key an equality filter pins is the same in every row: ordering by it changes nothing,
    # and SQLite reads an order off an index only past the keys its equalities consume.
    pinned = {key(container, f.field) for f in query.where if f.op == "=" and f.value is not None}
    if query.partition_key is not None:
        pinned.add("@pk")
    order: list[tuple[str, bool]] = []
    for name, desc in [*((key(container, f), desc) for f, desc in query.order_by), ("@pk", False), ("id", False)]:
        if name not in pinned and all(name != seen for seen, _ in order):
            order.append((name, desc))
    index = serving_index(container, pinned, order)
    source = "docs" if index is None else "docs NOT INDEXED" if index == PRIMARY_KEY else f"docs INDEXED BY {index}"
    # The container as a literal: SQLite uses a partial index (`WHERE container = 'jobs'`) only
    # for a query whose WHERE it can see implies the index's.
    sql = f"SELECT {selected(query)}, etag FROM {source} WHERE container = '{container}'"
    sql += "".join(f" AND {w}" for w in where)
    sql += " ORDER BY " + ", ".join(column(name) + (" DESC" if desc else "") for name, desc in order)
    sql += " LIMIT ? OFFSET ?"
    return sql, [*params, query.limit + 1, offset]


def selected(query: Query) -> str:
    """What a row of `query` reads: the whole body, or (a projection) a JSON array of the
    projected fields' values, in `query.projection()` order (`->` keeps objects and arrays
    JSON, and gives NULL for an absent field)."""
    fields = query.projection()
    if not fields:
        return "body"
    return "json_array(" + ", ".join("id" if f == "id" else f"body -> {path(f)}" for f in fields) + ")"


def count(query: Query) -> tuple[str, list[Any]] | None:
    """The SQL and parameters that count the documents matching `query` (its order and limit
    aside); `None` when nothing can match."""
    filtered = _filters(query)
    if filtered is None:
        return None
    where, params = filtered
    sql = f"SELECT COUNT(*) FROM docs WHERE container = '{query.container}'" + "".join(f" AND {w}" for w in where)
    return sql, params


def _filters(query: Query) -> tuple[list[str], list[Any]] | None:
    """`query`'s partition and filters as SQL conditions and their parameters; `None` when
    nothing can match (`in []`)."""
    container = query.container
    if container not in PARTITION_KEYS:
        raise ValueError(f"unknown container {container!r}")
    where: list[str] = []
    params: list[Any] = []
    if query.partition_key is not None:
        where.append("pk = ?")
        params.append(query.partition_key)
    for f in query.where:
        expr = column(key(container, f.field))
        if f.op == "in":
            values = list(f.value)
            if not values:
                return None
            where.append(f"{expr} IN ({', '.join('?' * len(values))})")
            params.extend(values)
        elif f.op == "contains":
            # As Cosmos's ARRAY_CONTAINS: only an array's elements count (json_each also walks a
            # scalar or an object's members), and only of the value's JSON type (`true` is 1 here).
            array = path(f.field)
            where.append(
                f"json_type(body, {array}) = 'array' AND EXISTS (SELECT 1 FROM json_each(docs.body, {array}) AS e "
                f"WHERE e.type IN ({json_types(f.value)}) AND e.value = ?)"
            )
            params.append(f.value)
        elif f.value is None and f.op in ("=", "!="):
            where.append(f"{expr} IS {'NOT ' if f.op == '!=' else ''}NULL")
        else:
            where.append(f"{expr} {f.op} ?")
            params.append(f.value)
    return where, params


#: `serving_index`'s name for the table itself, (container, pk, id).
PRIMARY_KEY = "primary key"


def serving_index(container: str, pinned: set[str], order: list[tuple[str, bool]]) -> str | None:
    """The index that reads a query in `order` without a sort, narrowed by the most `pinned`
    keys (equality-filtered ones); `PRIMARY_KEY` for the table itself, `None` when none does.

    An index serves when its keys, after the pinned ones it starts with, begin with `order`.
    `SqliteStore` names that index to SQLite (`INDEXED BY`) rather than leave the choice to
    its planner: with no statistics it takes `container = 'jobs'` for as selective as any
    index and would read every job by primary key, then sort (and `ANALYZE` would measure a
    small file, in which every `accrualPending` is null and the index looks useless).
    """
    best, narrowed = None, -1
    candidates = [(PRIMARY_KEY, ("@pk",))] + [(name, keys) for name, c, keys in INDEXES if c == container]
    for name, keys in candidates:
        full = [(k.removesuffix(" DESC"), k.endswith(" DESC")) for k in keys]
        full += [(k, False) for k in ("@pk", "id") if all(k != f for f, _ in full)]  # SQLite appends the primary key
        lead = 0
        while lead < len(full) and full[lead][0] in pinned:
            lead += 1
        if full[lead : lead + len(order)] == order and lead > narrowed:
            best, narrowed = name, lead
    return best


def key(container: str, field: str) -> str:
    """A document field as `INDEXES` names it: `@pk` for the container's partition-key field."""
    return "@pk" if field == PARTITION_KEYS[container] else field


def index_sql(name: str, container: str, keys: tuple[str, ...]) -> str:
    """The `CREATE INDEX` statement of one of `INDEXES`, as SQLite keeps it in its schema."""
    exprs = ", ".join(column(k.removesuffix(" DESC")) + (" DESC" if k.endswith(" DESC") else "") for k in keys)
    return f"CREATE INDEX {name} ON docs(container, {exprs}) WHERE container = '{container}'"


def offset(continuation: str | None) -> int:
    """The offset a continuation token names; `ValueError` for anything this store did not hand out."""
    if not continuation:
        return 0
    if not (isinstance(continuation, str) and continuation.isascii() and continuation.isdigit()):
        raise ValueError(f"bad continuation token {continuation!r}")
    offset = int(continuation)
    if offset > MAX_OFFSET:
        raise ValueError(f"bad continuation token {continuation!r}: out of range")
    return offset


def json_types(value: Any) -> str:
    """The `json_each` types a scalar `value` may equal, as an SQL list."""
    if isinstance(value, bool):
        return "'true'" if value else "'false'"
    return "'integer', 'real'" if isinstance(value, (int, float)) else "'text'"


def path(field: str) -> str:
    """The quoted JSON path of a dotted field."""
    return column(field).removeprefix("json_extract(body, ").removesuffix(")")
