"""The per-product queue-state version: what an idle factory polls instead of claiming.

One document per product (`id: "queue-state"` in the jobs container). Its `version` is bumped
by an atomic increment — never a read-modify-write — whenever a job of the product may have
become claimable, so an unchanged version means a claim would find nothing new.

The same document counts the product's weight changes (`weightChanges`, never in the answer):
a writer that keyed a queued job with weights it read earlier learns from its own bump whether
they changed since (`weight_registry.ensure_rank`).

It also names the **capability sets** present in the product's queue (one field per set,
`capSet_<digest>: {key, at}`, `key` a `jobs.cap_key`), so a claim can read only the jobs of the
sets its factory can do. The bump that announces a job entering the queue registers the job's
set in the same atomic write (a stamp, never a read-modify-write), so every queued job whose bump
has landed is in a registered set; a set registered for jobs no longer queued lingers until the
sweep prunes it (`capability_sets`). `capSetsComplete` says the registry covers every queued
job: set when the document is created, or by the sweep once it has keyed a product's older jobs;
without it claims read the queue unnarrowed.

And it carries a copy of the product's weights for claims (`claimWeights: {weights, change}`):
those of the last weight change whose re-keying finished, stamped after it finished, so that a
claim reads its weights and the capability sets in one point read (`weight_registry.for_claim`).
The copy is only used while its `change` equals `weightChanges`: a change counted since (and
every change is counted before its weights are written) makes claims read the weights document.
"""
from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Iterable

from fleet import clock, errors, jobs, store
from fleet.context import Context
from fleet.jobs import Model, Time

DOC_ID = "queue-state"
#: The field counting the weight changes begun on the product.
WEIGHT_CHANGES = "weightChanges"
#: The prefix of the fields registering one capability set each.
CAP_SET = "capSet_"
#: True when the registered capability sets cover every queued job of the product.
CAP_SETS_COMPLETE = "capSetsComplete"
#: The copy of the weights of the product's last finished weight change, for claims.
CLAIM_WEIGHTS = "claimWeights"
#: Marks the copy a queue-state document is created with, until the sweep has checked it.
UNCHECKED = "unchecked"
#: The most capability sets one bump registers (a Cosmos patch sets at most 10 fields).
SETS_PER_BUMP = 7


class QueueState(Model):
    """`GET /fleet/queue-state`: an unchanged `version` means a claim would find nothing new."""

    product_id: str
    #: 0 for a product never seen.
    version: int = 0
    updated_at: Time | None = None


def bump(ctx: Context, product_id: str, cap_keys: Iterable[str] = ()) -> dict[str, Any]:
    """Something in `product_id` may be claimable now, needing one of the capability sets
    `cap_keys`, which the same write registers (beyond `SETS_PER_BUMP` of them, the rest are
    registered just before it). Returns the document after the bump."""
    keys = sorted(set(cap_keys))
    if len(keys) > SETS_PER_BUMP:
        register(ctx, product_id, keys[SETS_PER_BUMP:])
    now = ctx.clock.now()
    stamp = {"updatedAt": clock.format(now), **_registered(keys[:SETS_PER_BUMP], now)}
    return ctx.store.increment("jobs", product_id, DOC_ID, "version", 1, _initial(product_id), stamp=stamp)


def register(ctx: Context, product_id: str, cap_keys: Iterable[str]) -> dict[str, Any] | None:
    """Register capability sets without announcing anything (the version stays), in writes of
    `SETS_PER_BUMP`. Returns the document after the last write; None if there was none."""
    keys, doc = sorted(set(cap_keys)), None
    for start in range(0, len(keys), SETS_PER_BUMP):
        stamp = _registered(keys[start : start + SETS_PER_BUMP], ctx.clock.now())
        doc = ctx.store.increment("jobs", product_id, DOC_ID, "version", 0, _initial(product_id), stamp=stamp)
    return doc


def count_weight_change(ctx: Context, product_id: str) -> int:
    """Count one more weight change of the product (the version stays): the number the new
    weights are written under."""
    doc = ctx.store.increment("jobs", product_id, DOC_ID, WEIGHT_CHANGES, 1, _initial(product_id))
    return weight_changes(doc)


def stamp_claim_weights(ctx: Context, product_id: str, weights: dict[str, float], change: int) -> None:
    """Record that weight change `change` set the product's `weights` (what the product sets)
    and finished re-keying (the version stays)."""
    stamp = {CLAIM_WEIGHTS: {"weights": weights, "change": change}}
    ctx.store.increment("jobs", product_id, DOC_ID, "version", 0, _initial(product_id), stamp=stamp)


def unchecked(doc: dict[str, Any]) -> bool:
    """Whether `doc`'s copy of the weights is the one it was created with, not checked yet."""
    copy = doc.get(CLAIM_WEIGHTS)
    return isinstance(copy, dict) and bool(copy.get(UNCHECKED))


def claim_weights(doc: dict[str, Any] | None) -> tuple[dict[str, float], int] | None:
    """The product's weights (what it sets) and their change as `doc` copies them, if the copy
    is of the last change counted (so that change finished re-keying); else None."""
    copy = (doc or {}).get(CLAIM_WEIGHTS)
    if not isinstance(copy, dict) or int(copy.get("change") or 0) != weight_changes(doc or {}):
        return None
    return dict(copy.get("weights") or {}), int(copy.get("change") or 0)


def _initial(product_id: str) -> dict[str, Any]:
    # A document created now predates every job of the product this code queues (complete)
    # and every weight change this code makes (each counts on it first): the defaults are the
    # weights. Unless a weights document predates it, written by hand or by an older release
    # that did not count its changes: the sweep checks the copy once (`UNCHECKED`).
    return {"id": DOC_ID, "productId": product_id, CAP_SETS_COMPLETE: True, CLAIM_WEIGHTS: {"weights": {}, "change": 0, UNCHECKED: True}}


def _registered(keys: list[str], now: datetime) -> dict[str, Any]:
    return {cap_set_field(key): _entry(key, now) for key in keys}


def _entry(key: str, now: datetime) -> dict[str, str]:
    return {"key": key, "at": clock.format(now)}


def cap_set_field(key: str) -> str:
    """The queue-state field registering the capability set `key` (a `jobs.cap_key`)."""
    return CAP_SET + hashlib.sha256(key.encode()).hexdigest()[:20]


def cap_sets(doc: dict[str, Any]) -> dict[str, str]:
    """The capability sets `doc` registers: key -> when a job of the set last entered the queue."""
    return {v["key"]: v["at"] for k, v in doc.items() if k.startswith(CAP_SET) and isinstance(v, dict)}


def claimable_sets(doc: dict[str, Any] | None, offered: frozenset[str]) -> list[str] | None:
    """The registered capability sets a factory offering `offered` can do, or None when the
    registry does not cover every queued job (no document, or an older product's not yet
    keyed by the sweep): then a claim must read the queue unnarrowed."""
    if not doc or not doc.get(CAP_SETS_COMPLETE):
        return None
    return sorted(key for key in cap_sets(doc) if jobs.cap_set(key) <= offered)


def mark_complete(ctx: Context, product_id: str) -> None:
    """Record that the registered capability sets cover every queued job of the product."""

    def complete(doc: dict[str, Any]) -> dict[str, Any] | None:
        return None if doc.get(CAP_SETS_COMPLETE) else {**doc, CAP_SETS_COMPLETE: True}

    store.update(ctx.store, "jobs", product_id, DOC_ID, complete, initial=_initial(product_id), sleep=ctx.clock.sleep)


def rewrite_sets(ctx: Context, doc: dict[str, Any], kept: Iterable[str], dropped: Iterable[str]) -> bool:
    """Refresh the sets `kept` (a job of each is queued) and drop the sets `dropped` from `doc`
    (as read, with its ETag), in one conditional write. False, with nothing written, if the
    document changed since it was read (a bump registers again what it announces)."""
    now = ctx.clock.now()
    new = {**doc, **{cap_set_field(key): _entry(key, now) for key in kept}}
    for key in dropped:
        new.pop(cap_set_field(key), None)
    try:
        ctx.store.replace("jobs", {**new, "id": DOC_ID}, doc["_etag"])
    except (errors.PreconditionFailed, errors.NotFound):
        return False
    return True


def read_doc(ctx: Context, product_id: str) -> dict[str, Any] | None:
    """The product's queue-state document in one point read; None for a product never seen."""
    try:
        return ctx.store.read("jobs", product_id, DOC_ID)
    except errors.NotFound:
        return None


def every_doc(ctx: Context) -> list[dict[str, Any]]:
    """Every product's queue-state document (one cross-partition query, paged): what the
    sweep's steps that tend them go through."""
    query = store.Query("jobs", None, (store.Filter("id", "=", DOC_ID),), limit=200)
    return list(store.query_all(ctx.store, query))


def weight_changes(doc: dict[str, Any]) -> int:
    """How many weight changes of the product the queue-state document has counted."""
    return int(doc.get(WEIGHT_CHANGES) or 0)


def read(ctx: Context, product_id: str) -> QueueState:
    """The product's queue-state in one point read (its weight-change count is not part of it)."""
    ctx.principal.reach(product_id, f"no product {product_id!r}")
    doc = read_doc(ctx, product_id)
    if doc is None:
        return QueueState(product_id=product_id)
    return QueueState(product_id=product_id, version=doc.get("version", 0), updated_at=doc.get("updatedAt"))
