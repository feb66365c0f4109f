"""The queries `CosmosStore` sends, and the container definitions they are served by.

The definitions (partition keys, indexing policies, the composite indexes the queries need)
come from `infra/bicep/containers.json`, which Bicep deploys too.

Queries page with **keyset continuation tokens** of our own (the last document's order values),
read with `SELECT TOP n … WHERE <filters> AND <after the token> ORDER BY …`, not the SDK's
continuation tokens: the Python SDK supports those for single-partition queries only, and
cross-partition `ORDER BY` ones are rejected by the service on resume
(Azure/azure-sdk-for-python#41434). `OFFSET … LIMIT` is never used: its cost grows with the
offset.

Every query is ordered by a composite index from `containers.json` that covers it: the query's
`order_by` plus `id`, preceded by as many of its equality-filtered fields as an index has (the
same order, and the index range scan that makes the claim query's cost independent of the
number of jobs). A multi-key order no index covers raises `ValueError` naming the index to add,
instead of failing at the service with a 400.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.store import Query, projected
from shared.stores import keyset

#: The container definitions shared with Bicep.
CONTAINERS_FILE = Path(__file__).resolve().parents[2] / "infra" / "bicep" / "containers.json"

_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class ContainerSpec:
    """One container of `containers.json`."""

    name: str
    partition_key_path: str
    indexing_policy: dict[str, Any]
    #: Each composite index as `((field, descending), …)`, dotted fields (`lease.expiresAt`).
    composite_indexes: tuple[tuple[tuple[str, bool], ...], ...]

    @property
    def partition_key_field(self) -> str:
        return path_field(self.partition_key_path)

    def cosmos_indexing_policy(self) -> dict[str, Any]:
        """The indexing policy as the service takes it (what Bicep deploys)."""
        return {
            **self.indexing_policy,
            "compositeIndexes": [
                [{"path": field_path(f), "order": "descending" if desc else "ascending"} for f, desc in index]
                for index in self.composite_indexes
            ],
        }


def load_containers(path: Path = CONTAINERS_FILE) -> dict[str, ContainerSpec]:
    """The container definitions in `path`, by name."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} is missing: CosmosStore needs the container definitions (deploy infra/bicep with the app)"
        ) from None
    specs = {}
    for c in raw["containers"]:
        composites = tuple(
            tuple((path_field(p["path"]), p["order"] == "descending") for p in index["paths"])
            for index in c["compositeIndexes"]
        )
        specs[c["name"]] = ContainerSpec(c["name"], c["partitionKey"], c["indexingPolicy"], composites)
    return specs


def path_field(path: str) -> str:
    """`/lease/expiresAt` → `lease.expiresAt`."""
    return path.strip("/").replace("/", ".")


def field_path(field: str) -> str:
    """`lease.expiresAt` → `/lease/expiresAt`."""
    return "/" + field.replace(".", "/")


class _Parameters(list):
    """A query's parameters, each added under the next name (`@p0`, `@p1`, ...)."""

    def add(self, value: Any) -> str:
        name = f"@p{len(self)}"
        self.append({"name": name, "value": value})
        return name


def build_query(
    spec: ContainerSpec, query: Query, continuation: str | None
) -> tuple[str | None, list[dict[str, Any]], tuple[tuple[str, bool], ...]]:
    """The parameterised SQL for one page of `query`, its parameters, and the order it pages
    by (`query.order_by` plus `id`). `None` for SQL when nothing can match (`in []`)."""
    params = _Parameters()
    param = params.add
    where = _conditions(spec, query, param)
    if where is None:
        return None, [], ()
    order = page_order(query)
    if continuation:
        where.append(_after(order, decode_token(order, continuation), param))
    sql = f"SELECT TOP {param(query.limit + 1)} {selected(query)} FROM c"
    if where:
        sql += " WHERE " + " AND ".join(where)
    keys = index_order(spec, query)
    sql += " ORDER BY " + ", ".join(f"{field_ref(f)} {'DESC' if desc else 'ASC'}" for f, desc in keys)
    return sql, params, order


def selected(query: Query) -> str:
    """What a row of `query` reads: `*`, or (a projection) an object of the projected fields'
    values under positional names `f0`, `f1`, … in `query.projection()` order (an absent field
    is left out of it), and `_etag` if asked for; `projected_row` puts them back under their
    fields."""
    fields = query.projection()
    if not fields:
        return "*"
    values = [f'"f{i}": {field_ref(f)}' for i, f in enumerate(fields)]
    if query.with_etags:
        values.append('"_etag": c["_etag"]')
    return "VALUE {" + ", ".join(values) + "}"


def projected_row(query: Query, row: dict[str, Any]) -> dict[str, Any]:
    """A row of `selected(query)` as the projected document the port answers."""
    fields = query.projection()
    doc = projected({f: row.get(f"f{i}") for i, f in enumerate(fields)})
    if query.with_etags:
        doc["_etag"] = row.get("_etag")
    return doc


def build_count(spec: ContainerSpec, query: Query) -> tuple[str | None, list[dict[str, Any]]]:
    """The parameterised SQL that counts the documents matching `query` (its order and limit
    aside), and its parameters. `None` for SQL when nothing can match (`in []`)."""
    params = _Parameters()
    param = params.add
    where = _conditions(spec, query, param)
    if where is None:
        return None, []
    sql = "SELECT VALUE COUNT(1) FROM c"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql, params


def _conditions(spec: ContainerSpec, query: Query, param) -> list[str] | None:
    """`query`'s partition and filters as SQL conditions (parameters added through `param`);
    `None` when nothing can match (`in []`)."""
    where: list[str] = []
    if query.partition_key is not None:
        # Redundant with the request's partition key on a real account; the local test server
        # refuses a single-partition query whose WHERE does not name its partition key.
        where.append(f"{field_ref(spec.partition_key_field)} = {param(query.partition_key)}")
    for f in query.where:
        ref = field_ref(f.field)
        if f.op == "in":
            values = list(f.value)
            if not values:
                return None
            # IN, not ARRAY_CONTAINS(@values, …): the service serves IN from the range index.
            where.append(f"{ref} IN ({', '.join(param(v) for v in values)})")
        elif f.op == "contains":
            # Served by the range index on the array's elements (`/deps/[]/?`, under `/*`).
            where.append(f"ARRAY_CONTAINS({ref}, {param(f.value)})")
        elif f.value is None and f.op in ("=", "!="):
            where.append(_is_null(ref) if f.op == "=" else f"IS_DEFINED({ref}) AND NOT IS_NULL({ref})")
        elif f.op == "!=":
            # As in SQL (and SqliteStore): a null or absent field is not "different from v".
            where.append(f"{ref} != {param(f.value)} AND IS_DEFINED({ref}) AND NOT IS_NULL({ref})")
        else:
            where.append(f"{ref} {f.op} {param(f.value)}")
    return where


def page_order(query: Query) -> tuple[tuple[str, bool], ...]:
    """`query.order_by` with `id` ascending last (the port's total order)."""
    order = tuple(query.order_by)
    if not any(f == "id" for f, _ in order):
        order += (("id", False),)
    return order


def index_order(spec: ContainerSpec, query: Query) -> tuple[tuple[str, bool], ...]:
    """The ORDER BY keys for `query`: the composite index of `spec` that covers it with the
    most equality-filtered fields in front (a field filtered by `=` is one value, so ordering by
    it first changes nothing but lets the service range-scan the index). A single key needs no
    composite index; a multi-key order without one is refused, as the service would."""
    order = page_order(query)
    equal = {
        f.field
        for f in query.where
        if f.op == "=" and isinstance(f.value, (str, int, float, bool)) and f.field != spec.partition_key_field
    }
    best: tuple[tuple[str, bool], ...] | None = None
    for index in spec.composite_indexes:
        if len(index) < len(order):
            continue
        head, tail = index[: len(index) - len(order)], index[len(index) - len(order) :]
        if tail == order and all(f in equal for f, _ in head) and (best is None or len(index) > len(best)):
            best = index
    if best is not None:
        return best
    if len(order) == 1:
        return order
    wanted = ", ".join(f"{field_path(f)} {'descending' if d else 'ascending'}" for f, d in order)
    raise ValueError(f"no composite index on {spec.name} serves ORDER BY {wanted}: add one to {CONTAINERS_FILE.name}")


def field_ref(field: str) -> str:
    """`lease.expiresAt` → `c["lease"]["expiresAt"]` (bracket form: no clash with SQL keywords)."""
    if not _FIELD.match(field):
        raise ValueError(f"bad field name {field!r}")
    return "c" + "".join(f'["{part}"]' for part in field.split("."))


def _is_null(ref: str) -> str:
    return f"(NOT IS_DEFINED({ref}) OR IS_NULL({ref}))"


# Keyset continuation (`shared.stores.keyset`). Cosmos orders undefined < null < false < true <
# numbers < strings, so "after the token" is spelt per class of the token's value.


def encode_token(order: tuple[tuple[str, bool], ...], doc: dict[str, Any]) -> str:
    """The continuation token that resumes a query paging by `order` after `doc`."""
    return keyset.encode([f for f, _ in order], [_get(doc, f) for f, _ in order])


def row_token(query: Query, order: tuple[tuple[str, bool], ...], row: dict[str, Any]) -> str:
    """The continuation token that resumes `query` after `row`, as the service sent it: a
    projected row holds a null order value as null and leaves an absent one out, which the
    projected document (`projected_row`, which leaves out both) no longer tells apart."""
    if not query.fields:
        return encode_token(order, row)
    names = {f: f"f{i}" for i, f in enumerate(query.projection())}
    values = [row[names[f]] if names[f] in row else keyset.ABSENT for f, _ in order]
    return keyset.encode([f for f, _ in order], values)


def decode_token(order: tuple[tuple[str, bool], ...], token: str) -> list[Any]:
    """The order values `token` holds; `ValueError` for a malformed token or one of a query
    paging by another order."""
    return keyset.decode([f for f, _ in order], token)


def _after(order, last: list[Any], param) -> str:
    """Documents after `last` in `order`: `k1 after v1 OR k1 = v1 AND k2 after v2 OR …`.

    Spelt flat, as one disjunction of conjunctions: the local server's query parser takes time
    exponential in the nesting of parentheses."""
    alternatives: list[list[str]] = []
    ties: list[str] = []
    for (f, desc), value in zip(order, last):
        ref = field_ref(f)
        for beyond in _below(ref, value, param) if desc else _above(ref, value, param):
            alternatives.append([*ties, *beyond])
        ties.append(_same(ref, value, param))
    if not alternatives:
        return "false"
    return "(" + " OR ".join(" AND ".join(conjunction) for conjunction in alternatives) + ")"


def _same(ref: str, value: Any, param) -> str:
    if value is keyset.ABSENT:
        return f"NOT IS_DEFINED({ref})"
    if value is None:
        return f"IS_NULL({ref})"
    return f"{ref} = {param(value)}"


#: Cosmos's order of JSON scalar types past null, each with the function that tests for it. A
#: comparison across types is undefined (no match), so "after a value" also names the types
#: that sort after its own.
_TYPES = (("IS_BOOL", bool), ("IS_NUMBER", (int, float)), ("IS_STRING", str))


def _rank(value: Any) -> int:
    """Where the type of `value` (a scalar: `keyset.decode` refuses anything else) is in `_TYPES`."""
    return next(i for i, (_, kind) in enumerate(_TYPES) if isinstance(value, kind))


def _above(ref: str, value: Any, param) -> list[list[str]]:
    """Values after `value` in ascending order, as alternatives of conjunctions."""
    if value is keyset.ABSENT:
        return [[f"IS_DEFINED({ref})"]]
    if value is None:
        return [[f"IS_DEFINED({ref})", f"NOT IS_NULL({ref})"]]
    later = [[f"{test}({ref})"] for test, _ in _TYPES[_rank(value) + 1 :]]
    return [[f"{ref} > {param(value)}"], *later]


def _below(ref: str, value: Any, param) -> list[list[str]]:
    """Values after `value` in descending order (null, then absent, come last)."""
    if value is keyset.ABSENT:
        return []
    if value is None:
        return [[f"NOT IS_DEFINED({ref})"]]
    later = [[f"{test}({ref})"] for test, _ in reversed(_TYPES[: _rank(value)])]
    return [[f"{ref} < {param(value)}"], *later, [f"IS_NULL({ref})"], [f"NOT IS_DEFINED({ref})"]]


def _get(doc: dict[str, Any], field: str) -> Any:
    value: Any = doc
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return keyset.ABSENT
        value = value[part]
    return value
