"""Meters of store traffic: what each store exchange moves, and what it is estimated to cost.

`PortMeter` wraps any store (a `CountingStore` that also logs the JSON bytes of the documents in
and out of each call: on SQLite, a proxy for the wire); `WireMeter` is the Cosmos SDK's HTTP
transport logging the request and response body bytes of every request it sends (retries and
metadata reads included), handed to `CosmosStore(..., transport=WireMeter())`, which passes it
on to `CosmosClient`. `RU_MODEL` prices an exchange in request units. Used by
`bench/store_traffic.py`.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from azure.core.pipeline.transport import RequestsTransport

from fleet.store import CountingStore, clean

KB = 1024


@dataclass(frozen=True)
class Exchange:
    """One store exchange: an HTTP request (Cosmos wire) or a port call (SQLite proxy)."""

    #: read, create, replace, upsert, patch, delete, query, or meta (account, containers).
    op: str
    sent: int
    received: int
    #: The request asked for no document back (`Prefer: return=minimal`, the SDK's
    #: `no_response`): Azure answers it with headers only. The local Cosmos-compatible server
    #: sends the document anyway, so `received` is what it sent and `billed` what Azure would.
    minimal: bool = False

    @property
    def billed(self) -> int:
        """Body bytes as Azure exchanges them: a minimal answer carries none."""
        return self.sent + (0 if self.minimal else self.received)


@dataclass(frozen=True)
class RequestUnits:
    """Estimated request units of one exchange, from Microsoft's published figures (a 1 KB point
    read ≈ 1 RU, a 1 KB insert ≈ 5.5 RU, a replace ≈ 2 × an insert), linear in the KB of the
    document, at least 1 KB. Assumed: an upsert and a patch (`incr`) cost a replace of the
    document; a query costs `query_base` plus `query_per_kb` per KB it returns (no charge for
    the index pages it reads); a delete an insert; a metadata read 1 RU."""

    read_per_kb: float = 1.0
    insert_per_kb: float = 5.5
    replace_per_kb: float = 11.0
    query_base: float = 2.5
    query_per_kb: float = 1.0

    def of(self, exchange: Exchange) -> float:
        # A write's charge follows the document's size, whatever it answers: priced on what the
        # local server sent back (the document) even when Azure would answer minimally.
        op, sent, received = exchange.op, exchange.sent / KB, exchange.received / KB
        if op == "read":
            return self.read_per_kb * max(1.0, received)
        if op == "create":
            return self.insert_per_kb * max(1.0, sent)
        if op in ("replace", "upsert"):
            return self.replace_per_kb * max(1.0, sent)
        if op == "patch":
            # The patched document's size: the answer carries it (the request only the ops).
            return self.replace_per_kb * max(1.0, sent, received)
        if op == "query":
            return self.query_base + self.query_per_kb * received
        if op == "delete":
            return self.insert_per_kb
        return 1.0


RU_MODEL = RequestUnits()


def json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), default=str).encode())


class PortMeter(CountingStore):
    """`CountingStore` that also logs each call as an `Exchange` with the JSON bytes of the
    documents handed to the store and returned by it. Returned documents are sized only when
    `exchanges()` is asked, so the timed calls do not pay for it."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self._log: list[tuple[str, int, Any]] = []

    def _logged(self, op: str, sent: int, call: Callable[[], Any], answer: Callable[[Any], Any] = lambda r: r) -> Any:
        result = None
        try:
            result = call()
            return result
        finally:
            self._log.append((op, sent, answer(result) if result is not None else None))

    def read(self, container, partition_key, id):
        return self._logged("read", 0, lambda: super(PortMeter, self).read(container, partition_key, id))

    def create(self, container, doc):
        return self._logged("create", json_size(clean(doc)), lambda: super(PortMeter, self).create(container, doc))

    def replace(self, container, doc, etag):
        return self._logged("replace", json_size(clean(doc)), lambda: super(PortMeter, self).replace(container, doc, etag))

    def patch(self, container, partition_key, id, ops, etag, answer=False):
        sent = json_size([{"op": op.kind, "path": f"/{op.field}", "value": op.value} for op in ops])
        return self._logged(
            "patch", sent, lambda: super(PortMeter, self).patch(container, partition_key, id, ops, etag, answer)
        )

    def upsert(self, container, doc):
        return self._logged("upsert", json_size(clean(doc)), lambda: super(PortMeter, self).upsert(container, doc))

    def delete(self, container, partition_key, id):
        return self._logged("delete", 0, lambda: super(PortMeter, self).delete(container, partition_key, id))

    def increment(self, container, partition_key, id, field, by, initial, stamp=None, also=None):
        sent = json_size({field: by, **(also or {}), **(stamp or {})})
        return self._logged(
            "patch",
            sent,
            lambda: super(PortMeter, self).increment(container, partition_key, id, field, by, initial, stamp, also),
        )

    def query(self, query, continuation=None):
        return self._logged("query", 0, lambda: super(PortMeter, self).query(query, continuation), lambda page: page.items)

    def exchanges(self) -> list[Exchange]:
        return [Exchange(op, sent, json_size(got) if got is not None else 0) for op, sent, got in self._log]

    def reset(self) -> None:
        super().reset()
        self._log.clear()


class WireMeter(RequestsTransport):
    """The Cosmos SDK's HTTP transport, logging every request it sends (retries and metadata
    reads included) as an `Exchange` of request and response body bytes. Handed to
    `CosmosStore` as `transport=` (it passes it on to `CosmosClient`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log: list[Exchange] = []

    def send(self, request, **kwargs):
        response = super().send(request, **kwargs)
        body = getattr(request, "body", None)
        if body is None:
            body = getattr(request, "content", None)
        sent = len(body.encode() if isinstance(body, str) else body or b"")
        prefer = {k.lower(): v for k, v in request.headers.items()}.get("prefer", "")
        minimal = "return=minimal" in prefer.lower()
        self.log.append(Exchange(wire_op(request), sent, len(response.body() or b""), minimal))
        return response


def wire_op(request) -> str:
    """What a Cosmos REST request is, from its method, path and headers."""
    parts = urlsplit(request.url).path.strip("/").split("/")
    if "docs" not in parts:
        return "meta"
    named = len(parts) > parts.index("docs") + 1
    headers = {k.lower(): v for k, v in request.headers.items()}
    if request.method == "POST":
        if headers.get("x-ms-documentdb-isquery", "").lower() == "true":
            return "query"
        return "upsert" if headers.get("x-ms-documentdb-is-upsert", "").lower() == "true" else "create"
    return {"GET": "read" if named else "query", "PUT": "replace", "PATCH": "patch", "DELETE": "delete"}.get(
        request.method, "meta"
    )
