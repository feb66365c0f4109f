"""`CosmosStore`: the production store, Azure Cosmos DB for NoSQL through the `azure-cosmos` v4 SDK.

One container per store container (`jobs`, `factories`, `budgets`), partitioned as
`fleet.store.PARTITION_KEYS` says; their definitions (partition keys, indexing policies, the
composite indexes the queries need) come from `infra/bicep/containers.json`, which Bicep deploys
too. Primitives map one-to-one onto SDK calls: point reads, `create_item`, `replace_item` with
`If-Match`, `upsert_item`, `delete_item`, `patch_item` `incr`, and parameterised queries.

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

Driver errors are converted here, at the edge: 404 → `NotFound`, 409 → `Conflict`, 412 →
`PreconditionFailed`, 429 (after the SDK's own retries), 408, 449, 503 and connection failures →
`StoreBusy` (with the service's `x-ms-retry-after-ms` when it sent one). Every HTTP response's
`x-ms-request-charge` is added to `shared.charge`'s meter.
"""
from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from azure.core import MatchConditions
from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.cosmos import CosmosClient, PartitionKey, exceptions

from fleet import errors
from fleet.store import Page, Query, Store, clean, partition_of
from shared import charge

#: The container definitions shared with Bicep.
CONTAINERS_FILE = Path(__file__).resolve().parent.parent / "infra" / "bicep" / "containers.json"

#: Status codes that mean "try again shortly": throttled (429, after the SDK's retries), request
#: timeout (408), a write conflicting with a concurrent one on the service side (449),
#: unavailable (503).
BUSY_STATUSES = frozenset({408, 429, 449, 503})

_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_TRUTHY = {"1", "true", "yes"}
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


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


class CosmosStore(Store):
    """The store port over Cosmos DB for NoSQL.

    `key` absent: `DefaultAzureCredential` (the Function App's managed identity in Azure, your
    `az login` on a workstation). `verify_tls=False` is for a local emulator's self-signed
    certificate only. `create=True` creates the database and containers from `containers.json`
    (local emulators: in Azure, data-plane RBAC cannot, and Bicep does). Extra keyword
    arguments go to `CosmosClient` (e.g. `retry_total`, `connection_timeout`).
    """

    def __init__(
        self,
        endpoint: str,
        key: str | None = None,
        database: str = "fleet",
        verify_tls: bool = True,
        create: bool = False,
        **client_options: Any,
    ) -> None:
        self.endpoint = endpoint
        self.database_name = database
        _quiet_sdk_logs()
        self.specs = load_containers()
        if not verify_tls:
            _allow_unverified_https(endpoint)
        if key:
            self._credential: Any = key
        else:
            from azure.identity import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
        with _converted():
            self._client = CosmosClient(
                endpoint,
                credential=self._credential,
                connection_verify=verify_tls,
                raw_response_hook=_meter_charge,
                **client_options,
            )
            if create:
                self.create_containers()
        self._database = self._client.get_database_client(database)
        self._containers = {name: self._database.get_container_client(name) for name in self.specs}

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> CosmosStore:
        """A store from `COSMOS_ENDPOINT`, `COSMOS_KEY`, `COSMOS_DATABASE` (default `fleet`),
        `COSMOS_VERIFY_TLS` (default true; `0`/`false`/`no` turn it off) and `COSMOS_CREATE`."""
        endpoint = environ.get("COSMOS_ENDPOINT")
        if not endpoint:
            raise ValueError("COSMOS_ENDPOINT is not set")
        verify = environ.get("COSMOS_VERIFY_TLS", "true").strip().lower() not in {"0", "false", "no"}
        return cls(
            endpoint,
            key=environ.get("COSMOS_KEY") or None,
            database=environ.get("COSMOS_DATABASE") or "fleet",
            verify_tls=verify,
            create=environ.get("COSMOS_CREATE", "").strip().lower() in _TRUTHY,
        )

    def create_containers(self) -> None:
        """Create the database and every container of `containers.json` if missing (emulators)."""
        with _converted():
            database = self._client.create_database_if_not_exists(self.database_name)
            for spec in self.specs.values():
                database.create_container_if_not_exists(
                    id=spec.name,
                    partition_key=PartitionKey(path=spec.partition_key_path),
                    indexing_policy=spec.cosmos_indexing_policy(),
                )

    # primitives

    def read(self, container, partition_key, id):
        with _converted(f"{container}/{id}"):
            return _public(self._container(container).read_item(item=id, partition_key=partition_key))

    def create(self, container, doc):
        with _converted(f"{container}/{doc.get('id')}"):
            return _public(self._container(container).create_item(body=self._body(container, doc)))

    def replace(self, container, doc, etag):
        with _converted(f"{container}/{doc.get('id')}"):
            return _public(
                self._container(container).replace_item(
                    item=doc["id"],
                    body=self._body(container, doc),
                    etag=etag,
                    match_condition=MatchConditions.IfNotModified,
                )
            )

    def upsert(self, container, doc):
        with _converted(f"{container}/{doc.get('id')}"):
            return _public(self._container(container).upsert_item(body=self._body(container, doc)))

    def delete(self, container, partition_key, id):
        with _converted(f"{container}/{id}"):
            self._container(container).delete_item(item=id, partition_key=partition_key)

    def increment(self, container, partition_key, id, field, by, initial, stamp=None):
        stamp = stamp or {}
        for name in (field, *stamp):
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
                raise ValueError(f"increment takes top-level fields, not {name!r}")
        client = self._container(container)
        ops = [{"op": "incr", "path": f"/{field}", "value": by}]
        ops += [{"op": "set", "path": f"/{name}", "value": value} for name, value in stamp.items()]
        if len(ops) > 10:
            raise ValueError("Cosmos DB patches at most 10 fields at once")
        # A patch is one atomic server-side write; only a missing document needs a create, and
        # a create that loses the race to a concurrent one falls back to the patch.
        with _converted(f"{container}/{id}"):
            try:
                return _public(client.patch_item(item=id, partition_key=partition_key, patch_operations=ops))
            except exceptions.CosmosResourceNotFoundError:
                pass
            key_field = self.specs[container].partition_key_field
            body = {**clean(initial), **stamp, "id": id, key_field: partition_key, field: by}
            try:
                return _public(client.create_item(body=body))
            except exceptions.CosmosResourceExistsError:
                return _public(client.patch_item(item=id, partition_key=partition_key, patch_operations=ops))

    def query(self, query: Query, continuation=None):
        client = self._container(query.container)
        sql, parameters, order = build_query(self.specs[query.container], query, continuation)
        if sql is None:
            return Page([], None)
        options: dict[str, Any] = {"max_item_count": query.limit + 1}
        if query.partition_key is None:
            options["enable_cross_partition_query"] = True
        else:
            options["partition_key"] = query.partition_key
        with _converted(query.container):
            rows = list(islice(client.query_items(sql, parameters=parameters, **options), query.limit + 1))
        items = [_public(r) for r in rows[: query.limit]]
        more = len(rows) > query.limit
        return Page(items, encode_token(order, items[-1]) if more else None)

    def ping(self):
        # Reading the database proves the endpoint answers, the credential is accepted and the
        # database exists; any failure means "not usable now" to the health check.
        try:
            with _converted("database"):
                self._database.read()
        except errors.StoreBusy:
            raise
        except errors.FleetError as exc:
            raise errors.StoreBusy(f"cosmos: {exc.detail}") from exc
        except exceptions.CosmosHttpResponseError as exc:
            raise errors.StoreBusy(f"cosmos: {exc.status_code} {exc.reason}") from exc

    def close(self):
        self._client.close()
        if hasattr(self._credential, "close"):
            self._credential.close()

    # helpers

    def _container(self, name: str):
        try:
            return self._containers[name]
        except KeyError:
            raise ValueError(f"unknown container {name!r}") from None

    def _body(self, container: str, doc: dict[str, Any]) -> dict[str, Any]:
        partition_of(container, doc)  # the same ValueError SqliteStore raises for a doc without one
        return clean(doc)


# queries


def build_query(
    spec: ContainerSpec, query: Query, continuation: str | None
) -> tuple[str | None, list[dict[str, Any]], tuple[tuple[str, bool], ...]]:
    """The parameterised SQL for one page of `query`, its parameters, and the order it pages
    by (`query.order_by` plus `id`). `None` for SQL when nothing can match (`in []`)."""
    params: list[dict[str, Any]] = []

    def param(value: Any) -> str:
        name = f"@p{len(params)}"
        params.append({"name": name, "value": value})
        return name

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
                return None, [], ()
            # IN, not ARRAY_CONTAINS(@values, …): the service serves IN from the range index.
            where.append(f"{ref} IN ({', '.join(param(v) for v in values)})")
        elif f.value is None and f.op in ("=", "!="):
            where.append(_is_null(ref) if f.op == "=" else f"IS_DEFINED({ref}) AND NOT IS_NULL({ref})")
        elif f.op == "!=":
            # As in SQL (and SqliteStore): a null or absent field is not "different from v".
            where.append(f"{ref} != {param(f.value)} AND IS_DEFINED({ref}) AND NOT IS_NULL({ref})")
        else:
            where.append(f"{ref} {f.op} {param(f.value)}")
    order = page_order(query)
    if continuation:
        where.append(_after(order, decode_token(order, continuation), param))
    sql = f"SELECT TOP {param(query.limit + 1)} * FROM c"
    if where:
        sql += " WHERE " + " AND ".join(where)
    keys = index_order(spec, query)
    sql += " ORDER BY " + ", ".join(f"{field_ref(f)} {'DESC' if desc else 'ASC'}" for f, desc in keys)
    return sql, params, order


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


# Keyset continuation. Cosmos orders undefined < null < false < true < numbers < strings, so a
# token records whether each value was absent, null, or a value, and "after the token" is spelt
# per class. The token carries its order's field names so a token of another query is refused.

_UNDEFINED = object()


def encode_token(order: tuple[tuple[str, bool], ...], doc: dict[str, Any]) -> str:
    values = []
    for f, _ in order:
        value = _get(doc, f)
        values.append([] if value is _UNDEFINED else [value])
    raw = json.dumps({"o": [f for f, _ in order], "v": values}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(order: tuple[tuple[str, bool], ...], token: str) -> list[Any]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        fields, values = raw["o"], raw["v"]
        if fields != [f for f, _ in order] or len(values) != len(order):
            raise ValueError("continuation token belongs to another query")
        return [v[0] if v else _UNDEFINED for v in values]
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ValueError(f"bad continuation token: {exc}") from None


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
    if value is _UNDEFINED:
        return f"NOT IS_DEFINED({ref})"
    if value is None:
        return f"IS_NULL({ref})"
    return f"{ref} = {param(value)}"


def _above(ref: str, value: Any, param) -> list[list[str]]:
    """Values after `value` in ascending order, as alternatives of conjunctions."""
    if value is _UNDEFINED:
        return [[f"IS_DEFINED({ref})"]]
    if value is None:
        return [[f"IS_DEFINED({ref})", f"NOT IS_NULL({ref})"]]
    return [[f"{ref} > {param(value)}"]]


def _below(ref: str, value: Any, param) -> list[list[str]]:
    """Values after `value` in descending order (null, then absent, come last)."""
    if value is _UNDEFINED:
        return []
    if value is None:
        return [[f"NOT IS_DEFINED({ref})"]]
    return [[f"{ref} < {param(value)}"], [f"IS_NULL({ref})"], [f"NOT IS_DEFINED({ref})"]]


def _get(doc: dict[str, Any], field: str) -> Any:
    value: Any = doc
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return _UNDEFINED
        value = value[part]
    return value


# the edge


def _public(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored document as the port hands it out: system fields dropped, `_etag` kept."""
    return {k: v for k, v in doc.items() if not k.startswith("_") or k == "_etag"}


def _meter_charge(response: Any) -> None:
    """`raw_response_hook`: runs in the calling thread for every HTTP response."""
    value = response.http_response.headers.get("x-ms-request-charge")
    if value:
        charge.add(float(value))


@contextlib.contextmanager
def _converted(what: str = "") -> Iterator[None]:
    """Turn SDK errors into the port's errors."""
    try:
        yield
    except exceptions.CosmosHttpResponseError as exc:
        domain = converted(exc, what)
        if domain is exc:
            raise
        raise domain from exc
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise errors.StoreBusy(f"cosmos unreachable: {exc}") from exc


def converted(exc: exceptions.CosmosHttpResponseError, what: str = "") -> Exception:
    """The port's error for an SDK error (the error itself when it is none of them)."""
    status = exc.status_code
    if status == 404:
        return errors.NotFound(f"{what} not found")
    if status == 409:
        return errors.Conflict(f"{what} already exists")
    if status == 412:
        return errors.PreconditionFailed(f"{what} changed since it was read")
    if status in BUSY_STATUSES:
        headers = exc.headers or {}
        retry_ms = headers.get("x-ms-retry-after-ms")
        retry_after = float(retry_ms) / 1000 if retry_ms else 1.0
        return errors.StoreBusy(f"cosmos {status} on {what}", retry_after=retry_after, status=status)
    return exc


def _quiet_sdk_logs() -> None:
    """The SDK logs every HTTP request and response at INFO: that would drown the app's own
    logs (and fill Application Insights). Keep its warnings; leave alone a level someone set."""
    for name in ("azure.cosmos._cosmos_http_logging_policy", "azure.core.pipeline.policies.http_logging_policy"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


def _allow_unverified_https(endpoint: str) -> None:
    """A local emulator serves a self-signed certificate, so its client runs with verification
    off, and urllib3 would warn on every request (an error under `-W error`). Silence exactly
    that warning for exactly this host; any other unverified host still warns."""
    import urllib3

    host = urlsplit(endpoint).hostname or ""
    # The SDK talks to the address the account document names, which for an emulator on
    # loopback may be another spelling of loopback than the endpoint's.
    hosts = LOOPBACK if host in LOOPBACK else {host}
    for name in sorted(hosts):
        warnings.filterwarnings(
            "ignore",
            message=rf"Unverified HTTPS request is being made to host '{re.escape(name)}'",
            category=urllib3.exceptions.InsecureRequestWarning,
        )



