"""The product weight registry: per-product scoring weights, merged per field over defaults.

One document per product (`id: "weights"` in the jobs container). Queued jobs carry a rank key
computed with their product's weights; a change of weights re-keys them. While that runs
(`rekeying`), claims take the bucket path, which does not depend on rank keys.
"""
from __future__ import annotations

from typing import Any

from pydantic import Field

from fleet import batch, errors, queue_state, scoring, store
from fleet.context import Context
from fleet.jobs import Job, Model
from fleet.stages import Stage

DOC_ID = "weights"


class ProductWeights(Model):
    """`GET/PUT /fleet/weights/{productId}`: the product's weights and what claims use."""

    product_id: str
    #: What the product sets; the rest come from the defaults.
    weights: dict[str, float] = Field(default_factory=dict)
    #: The weights claims use: the product's merged over the defaults (every field of `scoring.Weights`).
    resolved: dict[str, float] = Field(default_factory=dict)
    #: True while queued jobs are being re-keyed after a change (claims take the bucket path).
    rekeying: bool = False


def read_doc(ctx: Context, product_id: str) -> dict[str, Any]:
    try:
        return ctx.store.read("jobs", product_id, DOC_ID)
    except errors.NotFound:
        return _empty(product_id)


def _empty(product_id: str) -> dict[str, Any]:
    """A product's registry entry before any weights were set."""
    return {"id": DOC_ID, "productId": product_id, "weights": {}, "rekeying": False}


def product_patch(doc: dict[str, Any]) -> scoring.WeightsPatch:
    return scoring.WeightsPatch(**doc.get("weights", {}))


def for_product(ctx: Context, product_id: str) -> scoring.Weights:
    return scoring.resolve(product_patch(read_doc(ctx, product_id)))


def view(ctx: Context, product_id: str) -> ProductWeights:
    doc = read_doc(ctx, product_id)
    patch = product_patch(doc)
    return ProductWeights(
        product_id=product_id,
        weights=patch.model_dump(exclude_none=True),
        resolved=scoring.resolve(patch).model_dump(),
        rekeying=bool(doc.get("rekeying")),
    )


def put(ctx: Context, product_id: str, patch: scoring.WeightsPatch) -> ProductWeights:
    """Merge `patch` into the product's registry entry, then re-key its queued jobs."""

    def merge(doc: dict[str, Any]) -> dict[str, Any]:
        weights = {**doc.get("weights", {}), **patch.model_dump(exclude_none=True)}
        return {**doc, "weights": weights, "rekeying": True}

    store.update(ctx.store, "jobs", product_id, DOC_ID, merge, initial=_empty(product_id))
    rekey(ctx, product_id)
    queue_state.bump(ctx, product_id)
    return view(ctx, product_id)


def rekey(ctx: Context, product_id: str) -> int:
    """Give every queued job of the product the rank key of the current weights; clear
    `rekeying` when a pass changed nothing. Idempotent: the sweep re-runs it if a process died."""
    changed_total = 0
    while True:
        weights = for_product(ctx, product_id)
        changed = 0
        query = store.Query("jobs", product_id, (store.Filter("stage", "=", Stage.QUEUED.value),), limit=200)
        queued = [Job.from_doc(doc) for doc in store.query_all(ctx.store, query)]
        stale = [
            job
            for job in queued
            if scoring.rank_key(job.priority.order, job.attempts, job.created_at, weights) != job.rank_key
        ]

        def rekey_one(job: Job) -> None:
            nonlocal changed
            store.update(ctx.store, "jobs", product_id, job.id, lambda d: _rekeyed(d, weights))
            changed += 1

        failed = batch.each(stale, rekey_one)
        changed_total += changed
        if changed == 0:
            break
    if failed:
        return changed_total  # leave `rekeying` set: the sweep tries the failed jobs again

    def done(doc: dict[str, Any]) -> dict[str, Any] | None:
        # Weights changed again since the last pass: leave the flag to the writer that changed them.
        if not doc.get("rekeying") or scoring.resolve(product_patch(doc)) != weights:
            return None
        return {**doc, "rekeying": False}

    if read_doc(ctx, product_id).get("rekeying"):
        store.update(ctx.store, "jobs", product_id, DOC_ID, done)
    return changed_total


def _rekeyed(doc: dict[str, Any], weights: scoring.Weights) -> dict[str, Any] | None:
    job = Job.from_doc(doc)
    if job.stage != Stage.QUEUED:
        return None
    key = scoring.rank_key(job.priority.order, job.attempts, job.created_at, weights)
    return None if key == job.rank_key else {**doc, "rankKey": key}


def ensure_rank(ctx: Context, job: Job) -> Job:
    """Re-key a job just written to the queue if the product's weights changed since its writer
    read them. A weight change re-keys the queued jobs it finds after writing the new weights;
    this check, made after the job's own write, covers the jobs it could not find yet."""
    weights = for_product(ctx, job.product_id)
    if scoring.rank_key(job.priority.order, job.attempts, job.created_at, weights) == job.rank_key:
        return job
    try:
        return Job.from_doc(store.update(ctx.store, "jobs", job.product_id, job.id, lambda d: _rekeyed(d, weights)))
    except errors.NotFound:
        return job
