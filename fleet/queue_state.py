"""The per-product queue-state version: what an idle factory polls instead of claiming.

One document per product (`id: "queue-state"` in the jobs container). Its `version` is bumped
by an atomic increment — never a read-modify-write — whenever a job of the product may have
become claimable, so an unchanged version means a claim would find nothing new.
"""
from __future__ import annotations

from fleet import clock, errors
from fleet.context import Context
from fleet.jobs import Model, Time

DOC_ID = "queue-state"


class QueueState(Model):
    """`GET /fleet/queue-state`: an unchanged `version` means a claim would find nothing new."""

    product_id: str
    #: 0 for a product never seen.
    version: int = 0
    updated_at: Time | None = None


def bump(ctx: Context, product_id: str) -> None:
    """Something in `product_id` may be claimable now."""
    ctx.store.increment(
        "jobs",
        product_id,
        DOC_ID,
        "version",
        1,
        {"id": DOC_ID, "productId": product_id},
        stamp={"updatedAt": clock.format(ctx.clock.now())},
    )


def read(ctx: Context, product_id: str) -> QueueState:
    """The product's queue-state in one point read."""
    try:
        doc = ctx.store.read("jobs", product_id, DOC_ID)
    except errors.NotFound:
        return QueueState(product_id=product_id)
    return QueueState(product_id=product_id, version=doc.get("version", 0), updated_at=doc.get("updatedAt"))
