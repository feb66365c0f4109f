"""The per-product queue-state version: what an idle factory polls instead of claiming.

One document per product (`id: "queue-state"` in the jobs container). Its `version` is bumped
by an atomic increment — never a read-modify-write — whenever a job of the product may have
become claimable, so an unchanged version means a claim would find nothing new.

The same document counts the product's weight changes (`weightChanges`, never in the answer):
a writer that keyed a queued job with weights it read earlier learns from its own bump whether
they changed since (`weight_registry.ensure_rank`).
"""
from __future__ import annotations

from typing import Any

from fleet import clock, errors
from fleet.context import Context
from fleet.jobs import Model, Time

DOC_ID = "queue-state"
#: The field counting the weight changes begun on the product.
WEIGHT_CHANGES = "weightChanges"


class QueueState(Model):
    """`GET /fleet/queue-state`: an unchanged `version` means a claim would find nothing new."""

    product_id: str
    #: 0 for a product never seen.
    version: int = 0
    updated_at: Time | None = None


def bump(ctx: Context, product_id: str) -> dict[str, Any]:
    """Something in `product_id` may be claimable now. Returns the document after the bump."""
    return ctx.store.increment(
        "jobs",
        product_id,
        DOC_ID,
        "version",
        1,
        {"id": DOC_ID, "productId": product_id},
        stamp={"updatedAt": clock.format(ctx.clock.now())},
    )


def count_weight_change(ctx: Context, product_id: str) -> int:
    """Count one more weight change of the product (the version stays): the number the new
    weights are written under."""
    doc = ctx.store.increment("jobs", product_id, DOC_ID, WEIGHT_CHANGES, 1, {"id": DOC_ID, "productId": product_id})
    return weight_changes(doc)


def weight_changes(doc: dict[str, Any]) -> int:
    """How many weight changes of the product the queue-state document has counted."""
    return int(doc.get(WEIGHT_CHANGES) or 0)


def read(ctx: Context, product_id: str) -> QueueState:
    """The product's queue-state in one point read (its weight-change count is not part of it)."""
    ctx.principal.reach(product_id, f"no product {product_id!r}")
    try:
        doc = ctx.store.read("jobs", product_id, DOC_ID)
    except errors.NotFound:
        return QueueState(product_id=product_id)
    return QueueState(product_id=product_id, version=doc.get("version", 0), updated_at=doc.get("updatedAt"))
