"""The store port: JSON documents with ETags, in partitioned containers.

Every adapter (`shared.stores.sqlite_store.SqliteStore`, `shared.stores.cosmos_store.CosmosStore`) implements
the primitives of `Store`; the loops every use case needs (compare-and-swap retry, paging
through a query) live once here, above the adapters.

A conditional write may send what changed instead of the document (`swap(..., patch=True)`,
as every job write does, and `write`): the new document is decided whole, then the top-level
difference from the document it was decided on (`diff`) is written as one `patch` under
`If-Match`, or the whole document with `replace` when the difference takes more operations
than one patch carries (`MAX_PATCH_OPS`). Either way the write is atomic and conditional on
the ETag the decision was made on, so a lost race writes nothing; and since the patch applies
to what is stored at that ETag, the document decided on must be that document (as read, or
as written), so that what is stored afterwards is exactly the document decided. Other
documents are replaced whole.

Documents are plain dicts with an `id` and the container's partition-key field. A document
handed back by a store carries its ETag under `_etag`; stores ignore any `_`-prefixed field they
are given. Every method is atomic on the one document it names: there are no multi-document
transactions, by design (see DESIGN.md, "the one rule of state").
"""
from __future__ import annotations

import random
import re
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from fleet import clock, errors

#: container -> the document field that is its partition key.
PARTITION_KEYS: dict[str, str] = {"jobs": "productId", "factories": "id", "budgets": "productId", "tokens": "id"}

#: Filter operators every adapter supports. `=`/`!=` with `None` test for null (or absence);
#: `!=` a value never matches a null or absent field. `in` takes a list of values. `contains`
#: takes one scalar (string, number, bool) and matches when the field is an array with an
#: element equal to it: a missing or null field, an empty array or a non-array never matches.
OPERATORS = frozenset({"=", "!=", "<", "<=", ">", ">=", "in", "contains"})


@dataclass(frozen=True)
class Filter:
    """`field op value`; `field` is a dotted path into the document (`lease.factoryId`).

    `Filter("deps", "contains", key)`: the jobs whose `deps` array names `key`.
    """

    field: str
    op: str
    value: Any

    def __post_init__(self) -> None:
        if self.op not in OPERATORS:
            raise ValueError(f"unknown operator {self.op!r}")
        if self.op == "contains" and not isinstance(self.value, (str, int, float, bool)):
            raise ValueError(f"contains takes a string, number or bool, not {self.value!r}")


@dataclass(frozen=True)
class Query:
    """A filtered, ordered read of one container.

    `partition_key` set: a single-partition query (the cheap kind). `None`: cross-partition,
    which only listings and sweeps use. `order_by` is `(field, descending)` pairs; adapters
    end every order with a tiebreak that makes it total, so paging is stable: `id` ascending
    within a partition (Cosmos: `id`; SQLite: partition key, then `id`, which can order ties
    across partitions differently). Without `order_by` the order is that tiebreak alone.
    """

    container: str
    partition_key: str | None = None
    where: tuple[Filter, ...] = ()
    order_by: tuple[tuple[str, bool], ...] = ()
    limit: int = 100
    #: A projection: the fields each document is read with (dotted paths allowed), besides
    #: `id` and the `order_by` fields, which are always sent (the next page's token is made of
    #: them); name `_etag` for the document's ETag. Empty: whole documents. A projected
    #: document keeps the document's shape (`lease.leaseId` arrives as `{"lease": {"leaseId":
    #: …}}`) and leaves out what is absent or null, so a reader must treat those alike. What
    #: the store sends is what is billed: a query that needs three fields of a 5 KB document
    #: names them, and only those (an ETag is 40-odd bytes a row).
    fields: tuple[str, ...] = ()

    def projection(self) -> tuple[str, ...]:
        """The document fields a projected query reads (with the always-sent ones, without
        `_etag`), in order; () for whole documents."""
        if not self.fields:
            return ()
        always = ("id", *(f for f, _ in self.order_by))
        return tuple(dict.fromkeys(f for f in (*always, *self.fields) if f != "_etag"))

    @property
    def with_etags(self) -> bool:
        """Whether each document comes with its `_etag` (always, unless a projection leaves it out)."""
        return not self.fields or "_etag" in self.fields


#: What a patch operation does to its top-level field: `set` it to a JSON value, `remove` it,
#: or `append` one element at the end of the array it holds.
OP_KINDS = frozenset({"set", "remove", "append"})

#: The most operations one patch carries (Cosmos DB's limit).
MAX_PATCH_OPS = 10

_TOP_LEVEL = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Op:
    """One patch operation on a top-level field: `Op("set", "stage", "building")`,
    `Op("remove", "lease")`, `Op("append", "events", {...})`.

    Only top-level fields: a nested path is not one every store applies alike.
    """

    kind: str
    field: str
    value: Any = None

    def __post_init__(self) -> None:
        if self.kind not in OP_KINDS:
            raise ValueError(f"unknown patch operation {self.kind!r}")
        if not _TOP_LEVEL.fullmatch(self.field):
            raise ValueError(f"a patch names top-level fields, not {self.field!r}")


@dataclass
class Page:
    items: list[dict[str, Any]]
    #: Opaque token for the next page, `None` at the end.
    continuation: str | None = None


class Store(ABC):
    """Documents with ETags. Each method is atomic on the single document it names."""

    @abstractmethod
    def read(self, container: str, partition_key: str, id: str) -> dict[str, Any]:
        """Point-read one document, with its `_etag`. Raises `NotFound`."""

    @abstractmethod
    def create(self, container: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Atomically create `doc`; raises `Conflict` if its id exists in its partition."""

    @abstractmethod
    def replace(self, container: str, doc: dict[str, Any], etag: str) -> dict[str, Any]:
        """Atomically replace `doc` if its stored ETag is still `etag`.

        Raises `PreconditionFailed` on a stale ETag and `NotFound` if the document is gone;
        in both cases nothing is written.
        """

    @abstractmethod
    def patch(
        self, container: str, partition_key: str, id: str, ops: list[Op], etag: str, answer: bool = False
    ) -> dict[str, Any]:
        """Atomically apply `ops`, in order, to the document if its stored ETag is still `etag`.

        Answers `{"_etag": <the new ETag>}` only: the caller decided the document it wrote;
        with `answer`, the whole document as it stands afterwards (for a caller that changed a
        document it has not read: the store sends it back once, instead of a read before).
        Raises `PreconditionFailed` on a stale ETag and `NotFound` if the document is gone; in
        both cases nothing is written. More than `MAX_PATCH_OPS` operations raise `ValueError`.
        A `remove` names a field the document has, an `append` a field holding an array (as
        the operations before it leave the document): a patch with one that does not apply to
        the document as stored raises `ValueError`, and nothing is written (Cosmos DB refuses
        it with a 400). An older document may lack an array a newer one always has: a caller
        that appends without having read the document must expect this.
        """

    @abstractmethod
    def upsert(self, container: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Create or unconditionally replace `doc` (last writer wins)."""

    @abstractmethod
    def delete(self, container: str, partition_key: str, id: str) -> None:
        """Delete one document. Raises `NotFound`."""

    @abstractmethod
    def increment(
        self,
        container: str,
        partition_key: str,
        id: str,
        field: str,
        by: float,
        initial: dict[str, Any],
        stamp: dict[str, Any] | None = None,
        also: dict[str, float] | None = None,
    ) -> dict[str, Any]:
        """Atomically add `by` to the top-level number `field` without a read-modify-write,
        add each of `also` to its top-level number, and set the top-level fields in `stamp`,
        all in the same write.

        A missing document is created as `initial` with `field` set to `by` (and `also` and
        `stamp`).
        Concurrent increments never lose an update. Returns the document after the increment.
        """

    @abstractmethod
    def query(self, query: Query, continuation: str | None = None) -> Page:
        """One page of at most `query.limit` documents in `query.order_by` order."""

    @abstractmethod
    def count(self, query: Query) -> int:
        """How many documents match `query`'s partition and filters (its order and limit aside),
        in one aggregate query."""

    def ping(self) -> None:
        """Raise `StoreBusy` if the store cannot be reached."""

    def close(self) -> None:
        """Release connections."""


# Loops shared by every adapter.

#: What a retry loop pauses with when its caller names no clock: the real one.
_SYSTEM_CLOCK = clock.SystemClock()


@dataclass(frozen=True)
class Swapped:
    """What `swap` did to one document."""

    #: The document as it stands afterwards (with its ETag).
    doc: dict[str, Any]
    #: The document the winning decision was made on; None if it was created from `initial`.
    before: dict[str, Any] | None
    #: Whether anything was written (False: the decision found nothing to change).
    wrote: bool


def swap(
    store: Store,
    container: str,
    partition_key: str,
    id: str,
    decide: Callable[[dict[str, Any]], dict[str, Any] | None],
    attempts: int = 10,
    initial: dict[str, Any] | None = None,
    current: dict[str, Any] | None = None,
    sleep: Callable[[float], None] | None = None,
    patch: bool = False,
) -> Swapped:
    """Read, decide, write back if unchanged; on a lost race re-read and decide again.

    `decide` gets the current document and returns the new one, or `None` for "nothing to
    change". It may raise a domain error, which propagates with nothing written. Retries are
    bounded, with jitter, paused with `sleep` (the caller's clock; the real one if None).

    `current`: the document as the caller already read it (with its `_etag`): the first
    attempt decides on it instead of reading it again.

    A missing document raises `NotFound`, unless `initial` is given: then `decide` gets
    `initial` and its result (or `initial` itself, for None) is created, and a create that
    loses to a concurrent one decides again on the winner's document.

    `patch`: write the difference from the document decided on (`write`), not the document.
    """
    pause = sleep or _SYSTEM_CLOCK.sleep
    for attempt in range(attempts):
        if current is None:
            try:
                current = store.read(container, partition_key, id)
            except errors.NotFound:
                if initial is None:
                    raise
                try:
                    return Swapped(store.create(container, decide(dict(initial)) or initial), None, True)
                except errors.Conflict:
                    backoff(attempt, pause)
                    continue
        new = decide(current)
        if new is None:
            return Swapped(current, current, False)
        try:
            written = write(store, container, current, new) if patch else store.replace(container, new, current["_etag"])
            return Swapped(written, current, True)
        except errors.PreconditionFailed:
            current = None
            backoff(attempt, pause)
    raise errors.TooManyRetries()


def update(
    store: Store,
    container: str,
    partition_key: str,
    id: str,
    decide: Callable[[dict[str, Any]], dict[str, Any] | None],
    attempts: int = 10,
    initial: dict[str, Any] | None = None,
    current: dict[str, Any] | None = None,
    sleep: Callable[[float], None] | None = None,
    patch: bool = False,
) -> dict[str, Any]:
    """`swap`, answering only the document as it stands afterwards (the current one as is
    when the decision found nothing to change)."""
    return swap(store, container, partition_key, id, decide, attempts, initial, current, sleep, patch).doc


def write(store: Store, container: str, current: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Write `new` over `current` (the document as stored, with the ETag it was read with) if
    it is still stored as read: as one `patch` of their difference, or a whole `replace` when
    the difference does not fit one. The document written, with its new ETag."""
    ops = diff(current, new)
    if not ops:
        return store.replace(container, new, current["_etag"])
    key = partition_of(container, current)
    written = store.patch(container, key, current["id"], ops, current["_etag"])
    return {**clean(new), "_etag": written["_etag"]}


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[Op] | None:
    """The patch that turns `before` into `after`, top-level field by field: a changed field is
    `set`, a dropped one `remove`d, an array that only grew at its end gets its new elements
    `append`ed (or is `set` whole, when appending would take more operations than fit).

    None when no patch does it: more than `MAX_PATCH_OPS` operations, a changed `id` or
    partition key, or a field name a patch cannot name. `[]` when nothing differs."""
    before, after = clean(before), clean(after)
    if before.get("id") != after.get("id"):
        return None
    ops: list[Op] = []
    for name, value in after.items():
        old = before.get(name, _ABSENT)
        if _same(old, value):
            continue
        if not _TOP_LEVEL.fullmatch(name) or (name in _KEYS and name in before):
            return None  # a key moved: no patch moves a document
        grown = _grown(old, value)
        if grown is not None and len(ops) + len(grown) <= MAX_PATCH_OPS:
            ops += [Op("append", name, element) for element in grown]
        else:
            ops.append(Op("set", name, value))
    for name in before:
        if name not in after:
            if not _TOP_LEVEL.fullmatch(name):
                return None
            ops.append(Op("remove", name))
    return ops if len(ops) <= MAX_PATCH_OPS else None


_ABSENT = object()
#: Fields that name a document: `id` and the partition keys.
_KEYS = frozenset(PARTITION_KEYS.values())


def _same(old: Any, new: Any) -> bool:
    """Equal as JSON (Python's `==` takes `True` for `1`, and `1` for `1.0`, which JSON tells
    apart as a boolean, and keeps as written)."""
    if old is _ABSENT:
        return False
    if old is new:
        return True
    if type(old) is not type(new):
        return False
    if isinstance(old, dict):
        return old.keys() == new.keys() and all(_same(value, new[key]) for key, value in old.items())
    if isinstance(old, list):
        return len(old) == len(new) and all(map(_same, old, new))
    return old == new


def _grown(old: Any, new: Any) -> list[Any] | None:
    """The elements `new` adds at the end of the array `old`, or None if it is not that."""
    if not (isinstance(old, list) and isinstance(new, list)) or len(new) <= len(old):
        return None
    if not _same(old, new[: len(old)]):
        return None
    return new[len(old):]


def backoff(attempt: int, sleep: Callable[[float], None] | None = None) -> None:
    """Full jitter, capped: the shared pause between optimistic-concurrency retries, taken
    through `sleep` (a clock's; the real clock's if None)."""
    (sleep or _SYSTEM_CLOCK.sleep)(random.uniform(0, min(0.2, 0.005 * 2**attempt)))


def pages(store: Store, query: Query, continuation: str | None = None) -> Iterator[Page]:
    """Every page of `query`, following continuation tokens."""
    while True:
        page = store.query(query, continuation)
        yield page
        continuation = page.continuation
        if not continuation:
            return


def query_all(store: Store, query: Query) -> Iterator[dict[str, Any]]:
    """Every document `query` matches, page by page."""
    for page in pages(store, query):
        yield from page.items


def projected(values: dict[str, Any]) -> dict[str, Any]:
    """The projected document of `values` (dotted field -> value, None for absent or null):
    nested as the document is, absent and null fields left out, as `Query.fields` says."""
    doc: dict[str, Any] = {}
    for field, value in values.items():
        if value is None:
            continue
        *parents, leaf = field.split(".")
        into = doc
        for part in parents:
            into = into.setdefault(part, {})
            if not isinstance(into, dict):
                break
        else:
            into[leaf] = value
    return doc


def clean(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` without store-owned (`_`-prefixed) fields: what adapters persist."""
    return {k: v for k, v in doc.items() if not k.startswith("_")}


def partition_of(container: str, doc: dict[str, Any]) -> str:
    try:
        return doc[PARTITION_KEYS[container]]
    except KeyError as exc:
        raise ValueError(f"{container} document lacks partition key {exc}") from None


@dataclass
class CountingStore(Store):
    """Wraps a store and counts calls per primitive, for benchmarks and for tests that assert
    how much a use case touched the store (e.g. "a paused budget scans no jobs")."""

    inner: Store
    calls: Counter = field(default_factory=Counter)

    def read(self, container, partition_key, id):
        self.calls[f"read:{container}"] += 1
        return self.inner.read(container, partition_key, id)

    def create(self, container, doc):
        self.calls[f"create:{container}"] += 1
        return self.inner.create(container, doc)

    def replace(self, container, doc, etag):
        self.calls[f"replace:{container}"] += 1
        return self.inner.replace(container, doc, etag)

    def patch(self, container, partition_key, id, ops, etag, answer=False):
        self.calls[f"patch:{container}"] += 1
        return self.inner.patch(container, partition_key, id, ops, etag, answer)

    def upsert(self, container, doc):
        self.calls[f"upsert:{container}"] += 1
        return self.inner.upsert(container, doc)

    def delete(self, container, partition_key, id):
        self.calls[f"delete:{container}"] += 1
        return self.inner.delete(container, partition_key, id)

    def increment(self, container, partition_key, id, field, by, initial, stamp=None, also=None):
        self.calls[f"increment:{container}"] += 1
        return self.inner.increment(container, partition_key, id, field, by, initial, stamp, also)

    def query(self, query, continuation=None):
        self.calls[f"query:{query.container}"] += 1
        return self.inner.query(query, continuation)

    def count(self, query):
        self.calls[f"count:{query.container}"] += 1
        return self.inner.count(query)

    def ping(self):
        return self.inner.ping()

    def close(self):
        return self.inner.close()

    def total(self, prefix: str = "") -> int:
        return sum(n for k, n in self.calls.items() if k.startswith(prefix))

    def reset(self) -> None:
        self.calls.clear()
