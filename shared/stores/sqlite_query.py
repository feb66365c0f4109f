"""How `SqliteStore` reads: the indexes, and the SQL of a query.

Queries filter and order on document fields: the key column of a field an index keys on
(`KEYED`), `json_extract` of the body for any other. The indexes below make every query
the use cases run an index range scan read in index order (no sort), so its cost does not grow
with the number of documents; `tests/conformance/test_sqlite_plans.py` pins each plan.

Every order ends with the partition key, then `id`: a total order (the primary key), and the
one every index ends with (SQLite appends the primary key to each index of a `WITHOUT ROWID`
table), so the index serves the tiebreak too. Within a partition that is `id` order, as on
Cosmos; across partitions it is partition-key order first. The SQL names the index a query is
read by (`serving_index`, as `shared.stores.cosmos_query` picks a composite index) instead of leaving
it to SQLite's planner, which without statistics prefers the primary key and a sort.

Pages continue by keyset, as on Cosmos (`shared.stores.keyset`): a token is the last row's
values of that total order, and the next page is read from where they sit in the index
(`_after`), never `OFFSET`, which reads and drops every row before the page, so that paging
deep through a query cost the square of its depth.
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

from fleet.store import PARTITION_KEYS, Query
from shared.stores import keyset


#: (name, container, key expressions). A key is a dotted field (`@pk`: the partition key),
#: optionally with " DESC". Each index implicitly ends with (pk, id) ascending, the tiebreak of
#: every query: a query is read off the index whose keys, past those its equality filters pin,
#: begin with its order (`serving_index`), so a descending order needs a descending key.
INDEXES: list[tuple[str, str, tuple[str, ...]]] = [
    # claim, fast path: queued jobs of a product by rankKey …
    ("jobs_rank", "jobs", ("@pk", "stage", "rankKey DESC", "createdAt")),
    # … and of one capability set (capKey), once a first page did not settle the claim.
    ("jobs_rank_caps", "jobs", ("@pk", "stage", "capKey", "rankKey DESC", "createdAt")),
    # claim, bucket path: the head of each (priority, attempts) bucket, oldest first (newest
    # first, for a negative age weight, read backwards) …
    ("jobs_bucket", "jobs", ("@pk", "stage", "priority", "attempts", "createdAt")),
    # … and of one capability set.
    ("jobs_bucket_caps", "jobs", ("@pk", "stage", "capKey", "priority", "attempts", "createdAt")),
    # listings, newest first, with and without a product or a stage.
    ("jobs_product_created", "jobs", ("@pk", "createdAt DESC")),
    ("jobs_product_stage_created", "jobs", ("@pk", "stage", "createdAt DESC")),
    ("jobs_stage_created", "jobs", ("stage", "createdAt DESC")),
    ("jobs_created", "jobs", ("createdAt DESC",)),
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
    # sweep: jobs waiting to retry, by when their wait ends.
    ("jobs_retry", "jobs", ("retryAt",)),
    # sweep: one reserved document of every product (its queue-state), by id across products.
    ("jobs_id", "jobs", ("id",)),
]

#: The documents each index holds: every index is partial, holding only the documents whose
#: field is not null (None) or equals a literal. A write re-keys every index on a column it
#: changes (`KEYED`) that holds the document before or after it, so what an index leaves out
#: costs no write: the claim indexes hold queued jobs only (a job's later stages and counters
#: in the container re-key none of them), the listings jobs only (not the queue-states,
#: version and day counters beside them), the lease indexes leased jobs only. The two listings
#: by `createdAt` alone hold the documents with a `createdAt`, which only jobs have and no
#: write changes, rather than those with a `stage`: a stage change re-keys the indexes whose
#: condition it changes, and these it spares. A query is read off an index only when its
#: filters imply what the index holds (`_holds`), spelt so that SQLite sees it (`_filters`).
MEMBERS: dict[str, tuple[str, str | None]] = {
    "jobs_rank": ("stage", "queued"),
    "jobs_rank_caps": ("stage", "queued"),
    "jobs_bucket": ("stage", "queued"),
    "jobs_bucket_caps": ("stage", "queued"),
    "jobs_product_created": ("createdAt", None),
    "jobs_product_stage_created": ("stage", None),
    "jobs_stage_created": ("stage", None),
    "jobs_created": ("createdAt", None),
    "jobs_stage_updated": ("stage", None),
    "jobs_lease_expiry": ("lease.expiresAt", None),
    "jobs_lease_factory": ("lease.factoryId", None),
    "jobs_parent": ("parentId", None),
    "jobs_rekeying": ("rekeying", None),
    "jobs_accrual": ("accrualPending", None),
    "jobs_retry": ("retryAt", None),
    "jobs_id": ("id", "queue-state"),
}


#: The fields a container's documents also keep in columns of their own beside the body, one
#: `key_column` each: every field an index keys on or is partial on. An index on `json_extract`
#: expressions parses the body, before and after, on every write of a document it may hold, and
#: SQLite cannot tell which of them a new body leaves as they were, so a write re-keyed all of
#: them (and a counter beside the jobs, every increment, parsed its body for every partial
#: index's condition). On columns, a write sets the columns of the fields it changes
#: (`shared.stores.sqlite_keys`) and SQLite re-keys only the indexes on those; a filter, an order
#: and a page's position read the column. A column holds its field as `json_extract` reads it
#: (null for an absent field, 1 and 0 for booleans, JSON text for an object or an array), so
#: queries compare, sort and page as they did on the expressions.
KEYED: dict[str, tuple[str, ...]] = {
    container: tuple(sorted(
        ({k.removesuffix(" DESC") for _, c, keys in INDEXES if c == container for k in keys}
         | {MEMBERS[name][0] for name, c, _ in INDEXES if c == container})
        - {"@pk", "id"}
    ))
    for container in {c for _, c, _ in INDEXES}
}


def key_column(field: str) -> str:
    """The column a keyed field (`KEYED`) is kept in."""
    return "k_" + field.replace(".", "_")


assert all(len({key_column(f) for f in fields}) == len(fields) for fields in KEYED.values())


@functools.lru_cache(maxsize=512)
def column(container: str, field: str) -> str:
    """The SQL expression for a dotted field of `container`'s documents (`@pk`: the
    partition-key column): its key column if it is keyed (`KEYED`), else `json_extract`."""
    if field == "@pk":
        return "pk"
    if field == "id":
        return "id"
    if field in KEYED.get(container, ()):
        return key_column(field)
    return f"json_extract(body, {path(field)})"


def select(query: Query, continuation: str | None = None) -> list[tuple[str, list[Any]]] | None:
    """The statements that read one page of `query`, after the position `continuation` names
    (`ValueError` for a token this store did not hand out); `None` when nothing can match
    (`in []`). Each ends in `LIMIT ?`, left for the caller to bind: the rows still wanted, one
    more than the page holds to tell whether another follows. Read them in turn until that
    many rows are in: together they read the rows after the position in order (`_after`).

    A row is `(body, cold, etag, *order values)` (`body, cold`: what `selected` reads): its
    values of `page_order(query)`, as SQLite compares them, from which `token` makes the
    position after it."""
    order = page_order(query)
    last = position(order, continuation) if continuation else None
    if _filters(query) is None:
        return None
    container = query.container
    index = serving_index(query, order)
    source = "docs" if index is None else "docs NOT INDEXED" if index == PRIMARY_KEY else f"docs INDEXED BY {index}"
    values = "".join(f", {column(container, name)}" for name, _ in order)
    statements = []
    stretches = [Stretch(frozenset(), [], [], order)] if last is None else _after(container, order, last, _never_null(query))
    for stretch in stretches:
        where, params = _filters(query, stretch.tied, MEMBERS.get(index)) or ([], [])
        # The container as a literal: SQLite uses a partial index (`WHERE container = 'jobs'`)
        # only for a query whose WHERE it can see implies the index's.
        sql = f"SELECT {selected(query)}, etag{values} FROM {source} WHERE container = '{container}'"
        sql += "".join(f" AND {w}" for w in [*where, *stretch.conditions])
        statements.append((sql + _order_by(container, stretch.order) + " LIMIT ?", [*params, *stretch.params]))
    return statements


def page_order(query: Query) -> list[tuple[str, bool]]:
    """The total order `query` is read in, as `INDEXES` names keys: its `order_by`, then the
    partition key, then `id`, less the keys its equality filters pin.

    A key an equality filter pins is the same in every row: ordering by it changes nothing,
    and SQLite reads an order off an index only past the keys its equalities consume."""
    pinned = _pinned(query)
    order: list[tuple[str, bool]] = []
    for name, desc in [*((key(query.container, f), desc) for f, desc in query.order_by), ("@pk", False), ("id", False)]:
        if name not in pinned and all(name != seen for seen, _ in order):
            order.append((name, desc))
    return order


def _pinned(query: Query) -> set[str]:
    """The keys `query`'s equality filters (and its partition key) hold to one value."""
    pinned = {key(query.container, f.field) for f in query.where if f.op == "=" and f.value is not None}
    if query.partition_key is not None:
        pinned.add("@pk")
    return pinned


def _order_by(container: str, order: list[tuple[str, bool]]) -> str:
    if not order:
        return ""
    return " ORDER BY " + ", ".join(column(container, name) + (" DESC" if desc else "") for name, desc in order)


#: Fields a container's documents keep out of their indexed body, in the `cold` table beside
#: `docs` (same key): large, written once, never filtered or ordered on. A write rewrites the
#: whole row, and a projection's `->` parses the whole body: a job's 4 KB `bodyMd` in its body
#: made every one of those move it again. A document written before this layout keeps them in
#: its body until it is next written whole; a read takes the cold table's where it has them,
#: else the body's.
COLD: dict[str, frozenset[str]] = {"jobs": frozenset({"bodyMd"})}

#: The cold half of the document a `docs` row holds (NULL if none), as a scalar subquery.
COLD_BODY = "(SELECT c.body FROM cold AS c WHERE c.container = docs.container AND c.pk = docs.pk AND c.id = docs.id)"


def selected(query: Query) -> str:
    """What a row of `query` reads: the whole body then its cold half (`COLD_BODY`), or (a
    projection) a JSON array of the projected fields' values, in `query.projection()` order
    (`->` keeps objects and arrays JSON, and gives NULL for an absent field), then NULL.

    A projection reads its fields out of the body, keyed or not: SQLite parses a row's body
    once for all the `->` of it, so a field read from its key column instead saves nothing."""
    fields = query.projection()
    if not fields:
        return f"body, {COLD_BODY}" if COLD.get(query.container) else "body, NULL"
    return "json_array(" + ", ".join(_projected_value(query.container, f) for f in fields) + "), NULL"


def _projected_value(container: str, field: str) -> str:
    if field == "id":
        return "id"
    if field.split(".")[0] in COLD.get(container, ()):
        cold = COLD_BODY.replace("SELECT c.body", f"SELECT c.body -> {path(field)}")
        return f"coalesce({cold}, body -> {path(field)})"
    return f"body -> {path(field)}"


def count(query: Query) -> tuple[str, list[Any]] | None:
    """The SQL and parameters that count the documents matching `query` (its order and limit
    aside); `None` when nothing can match."""
    filtered = _filters(query)
    if filtered is None:
        return None
    where, params = filtered
    sql = f"SELECT COUNT(*) FROM docs WHERE container = '{query.container}'" + "".join(f" AND {w}" for w in where)
    return sql, params


def _filters(
    query: Query, tied: frozenset[str] = frozenset(), held: tuple[str, str | None] | None = None
) -> tuple[list[str], list[Any]] | None:
    """`query`'s partition and filters as SQL conditions and their parameters; `None` when
    nothing can match (`in []`).

    `held`: what the partial index the query is read off holds (`MEMBERS`). An equality on its
    literal is spelt with the literal, not a parameter, for SQLite to see that the index holds
    what the query reads; a not-null one it sees in the filter that implies it (`_holds`), and
    needs nothing more (an added `IS NOT NULL` would have it sort what an equality orders).

    A filter on a `tied` key (one a stretch of a continued page holds to one value) is spelt
    `+expr`, which no index serves: SQLite would otherwise read the index by the filter's
    range instead of the tie's equality, and then sort."""
    container = query.container
    if container not in PARTITION_KEYS:
        raise ValueError(f"unknown container {container!r}")
    cold = COLD.get(container, frozenset())
    for name in [*(f.field for f in query.where), *(f for f, _ in query.order_by)]:
        if name.split(".")[0] in cold:
            raise ValueError(f"{container} documents keep {name!r} beside their indexed body: no query filters or orders on it")
    where: list[str] = []
    params: list[Any] = []
    if query.partition_key is not None:
        where.append("pk = ?")
        params.append(query.partition_key)
    for f in query.where:
        expr = column(container, key(container, f.field))
        if key(container, f.field) in tied:
            expr = f"+{expr}"
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
        elif held is not None and held[1] is not None and (f.field, f.op, f.value) == (held[0], "=", held[1]):
            where.append(member_condition(container, *held))
        else:
            where.append(f"{expr} {f.op} ?")
            params.append(f.value)
    return where, params


#: `serving_index`'s name for the table itself, (container, pk, id).
PRIMARY_KEY = "primary key"


def serving_index(query: Query, order: list[tuple[str, bool]]) -> str | None:
    """The index that reads `query` in `order` without a sort, narrowed by the most keys its
    equality filters pin; `PRIMARY_KEY` for the table itself, `None` when none does.

    An index serves when it holds every document the query can match (`_holds`) and its keys,
    after the pinned ones it starts with, begin with `order`, or with `order` reversed (every
    key's direction flipped: SQLite reads the index backwards).
    `SqliteStore` names that index to SQLite (`INDEXED BY`) rather than leave the choice to
    its planner: with no statistics it takes `container = 'jobs'` for as selective as any
    index and would read every job by primary key, then sort (and `ANALYZE` would measure a
    small file, in which every `accrualPending` is null and the index looks useless).
    """
    return _serving(query.container, frozenset(_pinned(query)), tuple(order), _shape(query.where))


def _shape(where: tuple) -> tuple:
    """What of `where` decides which partial indexes hold a query (`_holds`): each filter's
    field and operator, whether its value is null, and the value where an index holds a literal."""
    return tuple((f.field, f.op, f.value is None, f.value if _literal(f.field, f.value) else None) for f in where)


def _literal(field: str, value: Any) -> bool:
    return isinstance(value, str) and (field, value) in _LITERALS


@functools.lru_cache(maxsize=512)
def _serving(container: str, pinned: frozenset[str], order: tuple, shape: tuple) -> str | None:
    """`serving_index` of a query shape: the use cases run a few dozen, each many times."""
    best, narrowed = None, -1
    candidates = [(PRIMARY_KEY, ("@pk",))] + [
        (name, keys) for name, c, keys in INDEXES if c == container and _holds(shape, name)
    ]
    for name, keys in candidates:
        full = [(k.removesuffix(" DESC"), k.endswith(" DESC")) for k in keys]
        full += [(k, False) for k in ("@pk", "id") if all(k != f for f, _ in full)]  # SQLite appends the primary key
        lead = 0
        while lead < len(full) and full[lead][0] in pinned:
            lead += 1
        keys = tuple(full[lead : lead + len(order)])
        backwards = tuple((k, not desc) for k, desc in keys)  # SQLite reads an index either way
        if order in (keys, backwards) and lead > narrowed:
            best, narrowed = name, lead
    return best


_LITERALS = {(field, literal) for field, literal in MEMBERS.values() if literal is not None}

#: Filters that, on a field, imply it is not null, as SQLite infers it for a partial index:
#: a comparison (SQL compares nothing to NULL), `IN`, and `!= None` (`IS NOT NULL` itself).
IMPLY_NOT_NULL = ("=", "<", ">", "<=", ">=", "!=", "in")


def _implies_not_null(op: str, null: bool) -> bool:
    """Whether a filter with `op` (and a value that is None: `null`) holds its field not null."""
    return op in IMPLY_NOT_NULL and not (op == "=" and null)


def _holds(shape: tuple, index: str) -> bool:
    """Whether `index` holds every document a query of `shape` (`_shape`) can match: its
    filters require the field the index is partial on to equal its literal, or not to be null."""
    field, literal = MEMBERS[index]
    if literal is not None:
        return any((f, op, value) == (field, "=", literal) for f, op, _, value in shape)
    return any(f == field and _implies_not_null(op, null) for f, op, null, _ in shape)


def member_condition(container: str, field: str, literal: str | None) -> str:
    """The SQL condition that a document's `field` is not null (None) or equals `literal`: what
    a partial index holds (`MEMBERS`), as its `CREATE INDEX` spells it."""
    if literal is None:
        return f"{column(container, field)} IS NOT NULL"
    if not literal.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"bad index literal {literal!r}")
    return f"{column(container, field)} = '{literal}'"


def key(container: str, field: str) -> str:
    """A document field as `INDEXES` names it: `@pk` for the container's partition-key field."""
    return "@pk" if field == PARTITION_KEYS[container] else field


def index_sql(name: str, container: str, keys: tuple[str, ...]) -> str:
    """The `CREATE INDEX` statement of one of `INDEXES`, as SQLite keeps it in its schema."""
    exprs = ", ".join(column(container, k.removesuffix(" DESC")) + (" DESC" if k.endswith(" DESC") else "") for k in keys)
    members = member_condition(container, *MEMBERS[name])
    return f"CREATE INDEX {name} ON docs(container, {exprs}) WHERE container = '{container}' AND {members}"


# Keyset continuation (`shared.stores.keyset`). The position is the last row's values of
# `page_order`, as `select` reads them off the key columns and `json_extract` (so as SQLite
# sorts and compares them): null for a null or absent field alike, integers for booleans, text
# for the rest of JSON.


def token(query: Query, values: tuple[Any, ...] | list[Any]) -> str:
    """The continuation token of the position after a row of `query` with order `values`."""
    return keyset.encode([name for name, _ in page_order(query)], values)


def position(order: list[tuple[str, bool]], continuation: str) -> list[Any]:
    """The order values `continuation` holds; `ValueError` for a malformed token, one of a query
    in another order, or one holding what `select` cannot have read (the partition key and
    `id` are text; other keys a null, a 64-bit integer, a float but NaN, or text)."""
    values = keyset.decode([name for name, _ in order], continuation)
    for (name, _), value in zip(order, values):
        if name in ("@pk", "id"):
            ok = isinstance(value, str)
        elif isinstance(value, int) and not isinstance(value, bool):
            ok = -(2**63) <= value < 2**63
        else:
            ok = value is None or isinstance(value, str) or isinstance(value, float) and not math.isnan(value)
        if not ok:
            raise ValueError(f"bad continuation token: {name} cannot be {value!r}")
    return values


#: What every value but NULL compares at or above: numbers, and text and blobs, which compare
#: above every number. `k >= BELOW_ALL` is `k IS NOT NULL` spelt as a bound: SQLite seeks past
#: the nulls by it, where it reads them all for `IS NOT NULL` (and, once `ANALYZE` has measured
#: the file, sorts what it reads).
BELOW_ALL = float("-inf")


class Stretch(NamedTuple):
    """Rows in one stretch of the serving index: `conditions` (with their `params`) on top of
    the query's filters, read in `order`."""

    #: The keys the stretch holds to one value (ties on the position).
    tied: frozenset[str]
    conditions: list[str]
    params: list[Any]
    order: list[tuple[str, bool]]


def _never_null(query: Query) -> frozenset[str]:
    """The fields (as `INDEXES` names keys) the filters of `query` hold not null."""
    return frozenset(key(query.container, f.field) for f in query.where if _implies_not_null(f.op, f.value is None))


def _after(
    container: str, order: list[tuple[str, bool]], last: list[Any], never_null: frozenset[str] = frozenset()
) -> list[Stretch]:
    """The rows after `last` in `order`, as stretches to read in turn.

    Stretch i holds the rows tied with `last` on its first i keys and after it on key i+1,
    deepest first, so reading them in turn reads in order. Each is one stretch of the serving
    index, an equality on each tied key and a bound on the next, so SQLite seeks to where the
    page starts instead of reading every row before it (as a single `k1 > v1 OR k1 = v1 AND …`
    would have it do), and reads the order past the tied keys off the index (tied keys are left
    out of ORDER BY, as pinned ones are: SQLite sorts by an expression it has an equality on).

    NULL (a null or absent field) sorts first ascending and last descending, and compares to
    nothing: a tie on it is `IS NULL`, after it ascending is `>= BELOW_ALL`, and after a value
    descending is below the value, then the nulls, a stretch of their own, which a key the
    query's filters hold not null (`never_null`) has none of: left out, as it would match
    nothing, and no index partial on that key could serve it (SQLite would find no plan)."""
    stretches = []
    for i in reversed(range(len(order))):
        ties: list[str] = []
        tied: list[Any] = []
        for (name, _), value in zip(order[:i], last[:i]):
            ties.append(f"{column(container, name)} IS NULL" if value is None else f"{column(container, name)} = ?")
            tied += [] if value is None else [value]
        names = frozenset(name for name, _ in order[:i])
        (name, desc), value, expr = order[i], last[i], column(container, order[i][0])
        if not desc and value is None:
            stretches.append(Stretch(names, [*ties, f"{expr} >= ?"], [*tied, BELOW_ALL], order[i:]))
        elif not desc:
            stretches.append(Stretch(names, [*ties, f"{expr} > ?"], [*tied, value], order[i:]))
        elif value is not None:
            stretches.append(Stretch(names, [*ties, f"{expr} < ?"], [*tied, value], order[i:]))
            if name not in never_null:
                stretches.append(Stretch(names | {name}, [*ties, f"{expr} IS NULL"], tied, order[i + 1 :]))
    return stretches


def json_types(value: Any) -> str:
    """The `json_each` types a scalar `value` may equal, as an SQL list."""
    if isinstance(value, bool):
        return "'true'" if value else "'false'"
    return "'integer', 'real'" if isinstance(value, (int, float)) else "'text'"


@functools.lru_cache(maxsize=256)
def path(field: str) -> str:
    """The quoted JSON path of a dotted field."""
    if not all(part.replace("_", "").isalnum() for part in field.split(".")):
        raise ValueError(f"bad field name {field!r}")
    return f"'$.{field}'"
