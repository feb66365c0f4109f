"""`CosmosStore`: the production store, Azure Cosmos DB for NoSQL through the `azure-cosmos` v4 SDK.

One container per store container (`jobs`, `factories`, `budgets`), partitioned as
`fleet.store.PARTITION_KEYS` says; their definitions (partition keys, indexing policies, the
composite indexes the queries need) come from `infra/bicep/containers.json`, which Bicep deploys
too. Primitives map one-to-one onto SDK calls: point reads, `create_item`, `replace_item` and
`patch_item` with `If-Match`, `upsert_item`, `delete_item`, `patch_item` `incr`, and
parameterised queries, which
`shared.stores.cosmos_query` builds and pages with keyset continuation tokens of our own.

Every call has a deadline (`timeout`, from `FLEET_STORE_TIMEOUT_SECONDS`): the SDK's absolute
per-operation timeout, which spans its retries, and connection and socket-read timeouts of the
same length for each attempt (the SDK's own default read timeout is 65 s), with throttling
retries waiting at most that long in all. A stalled endpoint therefore costs a request one
deadline, not minutes.

Driver errors are converted here, at the edge: 404 → `NotFound`, 409 → `Conflict`, 412 →
`PreconditionFailed`, 429 (after the SDK's own retries), 408, 449, 503, a deadline that ran out
and connection failures → `StoreBusy` (with the service's `x-ms-retry-after-ms` when it sent
one); a refused credential or permission (401, 403), a read-only account (403 write forbidden)
and a full partition (403 quota) → `StoreUnavailable`. Every HTTP response's
`x-ms-request-charge` is added to `shared.stores.charge`'s meter.

One `CosmosClient` per store, and one store per process (`shared.config.context`): the SDK keeps
one HTTP connection pool (azure-core's `requests` session: at most 10 idle connections kept per
host; more concurrent calls open short-lived extra ones), so nothing grows with requests.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
import warnings
from collections.abc import Iterator
from itertools import islice
from typing import Any
from urllib.parse import urlsplit

from azure.core import MatchConditions
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError, ServiceResponseError
from azure.core.utils import CaseInsensitiveDict
from azure.cosmos import CosmosClient, PartitionKey, exceptions

from fleet import errors
from fleet.store import MAX_PATCH_OPS, Op, Page, Query, Store, clean, partition_of
from shared.stores import charge, cosmos_query

#: Status codes that mean "try again shortly": throttled (429, after the SDK's retries), request
#: timeout (408), a write conflicting with a concurrent one on the service side (449),
#: unavailable (503).
log = logging.getLogger("fleet.store.cosmos")

BUSY_STATUSES = frozenset({408, 429, 449, 503})

LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})

#: Seconds a store call may take (`FLEET_STORE_TIMEOUT_SECONDS`' default).
TIMEOUT = 5.0

#: 403 sub-statuses that name what is wrong: writes refused (a read-only region or account),
#: and a logical partition at its storage quota.
WRITE_FORBIDDEN = 3
PARTITION_FULL = 1014


class _ThreadsOwnHeaders:
    """`last_response_headers` of one SDK client connection, one per thread (see
    `_headers_per_thread`)."""

    def __get__(self, connection: Any, owner: type | None = None) -> Any:
        if connection is None:
            return self
        mine = connection.__dict__["_headers_by_thread"]
        headers = getattr(mine, "headers", None)
        if headers is None:
            headers = mine.headers = CaseInsensitiveDict()
        return headers

    def __set__(self, connection: Any, headers: Any) -> None:
        connection.__dict__["_headers_by_thread"].headers = headers


#: The SDK's connection class → its subclass whose `last_response_headers` is per thread.
_PER_THREAD: dict[type, type] = {}


def _headers_per_thread(connection: Any) -> None:
    """Give each thread its own `last_response_headers` on the SDK's client connection.

    azure-cosmos (4.17.1, the latest) keeps the headers of the last response on the
    connection every thread shares: a call sets it to its response's headers and then stamps
    retry counts into it, while a concurrent query copies the headers it was given, which may
    be that very dict. The copy fails (`RuntimeError: OrderedDict mutated during iteration`),
    after the service has answered: a 500 for a write that was applied. Every call of the SDK
    sets and reads the attribute on the thread it runs on, so one per thread keeps what each
    call sees its own and changes nothing else (a thread's entry goes with the thread)."""
    cls = type(connection)
    if cls not in _PER_THREAD:
        _PER_THREAD[cls] = type(cls.__name__, (cls,), {"last_response_headers": _ThreadsOwnHeaders()})
    current = connection.__dict__.pop("last_response_headers", None)
    connection.__dict__["_headers_by_thread"] = threading.local()
    connection.__class__ = _PER_THREAD[cls]
    if current is not None:
        connection.last_response_headers = current


class CosmosStore(Store):
    """The store port over Cosmos DB for NoSQL.

    `key` absent: `DefaultAzureCredential` (the Function App's managed identity in Azure, your
    `az login` on a workstation). `verify_tls=False` is for a local emulator's self-signed
    certificate only. `create=True` creates the database and containers from `containers.json`
    (local emulators: in Azure, data-plane RBAC cannot, and Bicep does). `timeout` is the
    deadline of every call, in seconds. Extra keyword arguments go to `CosmosClient` and win
    over the ones the deadline sets (e.g. `retry_total`, `connection_timeout`).
    """

    def __init__(
        self,
        endpoint: str,
        key: str | None = None,
        database: str = "fleet",
        verify_tls: bool = True,
        create: bool = False,
        timeout: float = TIMEOUT,
        **client_options: Any,
    ) -> None:
        self.endpoint = endpoint
        self.database_name = database
        self.timeout = timeout
        _quiet_sdk_logs()
        self.specs = cosmos_query.load_containers()
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
                **{**deadline_options(timeout), **client_options},
            )
            _headers_per_thread(self._client.client_connection)
            if create:
                self.create_containers()
        self._database = self._client.get_database_client(database)
        self._containers = {name: self._database.get_container_client(name) for name in self.specs}

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
            return _public(
                self._container(container).read_item(item=id, partition_key=partition_key, timeout=self.timeout)
            )

    # Writes ask the service not to send the written document back (`no_response`: the
    # `Prefer: return=minimal` header): the caller has it already, and the new ETag comes in a
    # header, so a write moves the document once, not twice.

    def create(self, container, doc):
        with _converted(f"{container}/{doc.get('id')}"):
            body = self._body(container, doc)
            return _written(body, self._container(container).create_item(body=body, timeout=self.timeout, no_response=True))

    def replace(self, container, doc, etag):
        with _converted(f"{container}/{doc.get('id')}"):
            body = self._body(container, doc)
            written = self._container(container).replace_item(
                item=doc["id"],
                body=body,
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
                timeout=self.timeout,
                no_response=True,
            )
            return _written(body, written)

    def patch(self, container, partition_key, id, ops, etag, answer=False):
        if len(ops) > MAX_PATCH_OPS:
            raise ValueError(f"Cosmos DB patches at most {MAX_PATCH_OPS} operations at once, not {len(ops)}")
        with _converted(f"{container}/{id}"):
            try:
                written = self._container(container).patch_item(
                    item=id,
                    partition_key=partition_key,
                    patch_operations=[_patch_operation(op) for op in ops],
                    etag=etag,
                    match_condition=MatchConditions.IfNotModified,
                    timeout=self.timeout,
                    no_response=not answer,
                )
            except exceptions.CosmosHttpResponseError as exc:
                # 400: an operation does not apply to the document as stored (an append to a
                # field holding no array, a remove of an absent one): nothing was written, and
                # the port says so as SQLite does, with a ValueError.
                if exc.status_code == 400:
                    raise ValueError(f"{container}/{id}: the patch does not apply: {exc.message}") from exc
                raise
            if answer:
                return _public(written)
            return {"_etag": written.get_response_headers()["etag"]}

    def upsert(self, container, doc):
        with _converted(f"{container}/{doc.get('id')}"):
            body = self._body(container, doc)
            return _written(body, self._container(container).upsert_item(body=body, timeout=self.timeout, no_response=True))

    def delete(self, container, partition_key, id):
        with _converted(f"{container}/{id}"):
            self._container(container).delete_item(item=id, partition_key=partition_key, timeout=self.timeout)

    def increment(self, container, partition_key, id, field, by, initial, stamp=None, also=None):
        stamp, added = stamp or {}, {field: by, **(also or {})}
        for name in (*added, *stamp):
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
                raise ValueError(f"increment takes top-level fields, not {name!r}")
        client = self._container(container)
        ops = [{"op": "incr", "path": f"/{name}", "value": value} for name, value in added.items()]
        ops += [{"op": "set", "path": f"/{name}", "value": value} for name, value in stamp.items()]
        if len(ops) > 10:
            raise ValueError("Cosmos DB patches at most 10 fields at once")
        # A patch is one atomic server-side write; only a missing document needs a create, and
        # a create that loses the race to a concurrent one falls back to the patch.
        patch = functools.partial(
            client.patch_item, item=id, partition_key=partition_key, patch_operations=ops, timeout=self.timeout
        )
        with _converted(f"{container}/{id}"):
            try:
                return _public(patch())
            except exceptions.CosmosResourceNotFoundError:
                pass
            key_field = self.specs[container].partition_key_field
            body = {**clean(initial), **stamp, "id": id, key_field: partition_key, **added}
            try:
                return _public(client.create_item(body=body, timeout=self.timeout))
            except exceptions.CosmosResourceExistsError:
                return _public(patch())

    def query(self, query: Query, continuation=None):
        client = self._container(query.container)
        sql, parameters, order = cosmos_query.build_query(self.specs[query.container], query, continuation)
        if sql is None:
            return Page([], None)
        options = {**self._query_options(query), "max_item_count": query.limit + 1}
        with _converted(query.container):
            rows = list(islice(client.query_items(sql, parameters=parameters, **options), query.limit + 1))
        read = functools.partial(cosmos_query.projected_row, query) if query.fields else _public
        items = [read(r) for r in rows[: query.limit]]
        more = len(rows) > query.limit
        return Page(items, cosmos_query.row_token(query, order, rows[query.limit - 1]) if more else None)

    def count(self, query: Query) -> int:
        sql, parameters = cosmos_query.build_count(self.specs[query.container], query)
        if sql is None:
            return 0
        with _converted(query.container):
            # A cross-partition aggregate arrives as one partial count per partition range.
            answers = self._container(query.container).query_items(sql, parameters=parameters, **self._query_options(query))
            return int(sum(answers))

    def ping(self):
        # Reading the database proves the endpoint answers, the credential is accepted and the
        # database exists; any failure means "not usable now" to the health check.
        try:
            with _converted("database"):
                self._database.read(timeout=self.timeout)
        except (errors.StoreBusy, errors.StoreUnavailable):
            raise
        except errors.NotFound as exc:
            raise errors.StoreUnavailable(f"cosmos: database {self.database_name} does not exist") from exc
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

    def _query_options(self, query: Query) -> dict[str, Any]:
        """The SDK options of a query: its partition (or cross-partition) and one deadline for
        the whole read (the SDK counts it from when the query is built)."""
        options: dict[str, Any] = {"timeout": self.timeout}
        if query.partition_key is None:
            options["enable_cross_partition_query"] = True
        else:
            options["partition_key"] = query.partition_key
        return options

    def _body(self, container: str, doc: dict[str, Any]) -> dict[str, Any]:
        partition_of(container, doc)  # the same ValueError SqliteStore raises for a doc without one
        return clean(doc)



# the edge


def deadline_options(timeout: float) -> dict[str, Any]:
    """`CosmosClient` options that keep each attempt, and the SDK's waits between attempts,
    within the store deadline. (The absolute per-operation `timeout` is passed on each call.)"""
    return {
        # Startup's database-account read; each operation gets its own `timeout` too.
        "timeout": timeout,
        # Each attempt: connecting, and waiting for the answer (the SDK waits 65 s by default).
        "connection_timeout": timeout,
        "read_timeout": timeout,
        # Throttled (429) calls are retried until this many seconds were spent waiting.
        "retry_backoff_max": timeout,
        # A connection that fails is retried once; a timed-out read too. The absolute timeout
        # stops the retries anyway, but each wasted attempt costs a deadline.
        "retry_connect": 1,
        "retry_read": 1,
    }


def _public(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored document as the port hands it out: system fields dropped, `_etag` kept."""
    return {k: v for k, v in doc.items() if not k.startswith("_") or k == "_etag"}


def _written(body: dict[str, Any], answer: Any) -> dict[str, Any]:
    """The document a write stored: `body` with the ETag of the answer's headers, or the answer
    itself when the service sent the document back anyway (as the local test server does)."""
    if answer:
        return _public(answer)
    return {**body, "_etag": answer.get_response_headers()["etag"]}


def _patch_operation(op: Op) -> dict[str, Any]:
    """One port patch operation as Cosmos DB's: an `append` adds at the array's end (`/-`)."""
    if op.kind == "remove":
        return {"op": "remove", "path": f"/{op.field}"}
    if op.kind == "append":
        return {"op": "add", "path": f"/{op.field}/-", "value": op.value}
    return {"op": "set", "path": f"/{op.field}", "value": op.value}


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
    except exceptions.CosmosClientTimeoutError as exc:
        raise errors.StoreBusy(f"cosmos did not answer in time on {what}", reason=errors.StoreFault.TIMEOUT) from exc
    # The SDK's own words (hosts, ports, the connection pool) go to the log, not into an answer.
    except ServiceResponseError as exc:  # a read timed out, or the connection broke mid-answer
        log.warning("cosmos did not answer on %s: %s", what, exc)
        raise errors.StoreBusy(f"cosmos did not answer on {what}", reason=errors.StoreFault.TIMEOUT) from exc
    except ServiceRequestError as exc:
        log.warning("cosmos unreachable on %s: %s", what, exc)
        raise errors.StoreBusy(f"cosmos unreachable on {what}", reason=errors.StoreFault.UNREACHABLE) from exc
    except ClientAuthenticationError as exc:
        log.warning("cosmos refused the credential on %s: %s", what, exc)
        raise errors.StoreUnavailable("cosmos: no credential accepted", errors.StoreFault.DENIED) from exc


def converted(exc: exceptions.CosmosHttpResponseError, what: str = "") -> Exception:
    """The port's error for an SDK error (the error itself when it is none of them)."""
    status = exc.status_code
    if status == 404:
        return errors.NotFound(f"{what} not found")
    if status == 409:
        return errors.Conflict(f"{what} already exists")
    if status == 412:
        return errors.PreconditionFailed(f"{what} changed since it was read")
    if status == 413:
        return errors.TooLarge(f"{what} is larger than Cosmos DB accepts")
    if status in (401, 403):
        fault = {WRITE_FORBIDDEN: errors.StoreFault.READ_ONLY, PARTITION_FULL: errors.StoreFault.FULL}.get(
            getattr(exc, "sub_status", None), errors.StoreFault.DENIED
        )
        log.warning("cosmos refused %s with %s: %s", what, status, exc.reason or exc.message)
        return errors.StoreUnavailable(f"cosmos {status} on {what} ({fault.value})", fault)
    if status in BUSY_STATUSES:
        headers = exc.headers or {}
        retry_ms = headers.get("x-ms-retry-after-ms")
        retry_after = float(retry_ms) / 1000 if retry_ms else 1.0
        return errors.StoreBusy(f"cosmos {status} on {what}", retry_after=retry_after)
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
