"""The sweep's care of each product's capability sets (the registry on its queue-state document,
see `queue_state`): keying the queued jobs of a product older than the registry, and pruning
sets no queued job needs any more.

Both are safe beside claims and queueing writes. A job enters the queue with its `capKey`
written, and the bump that follows registers its set. Pruning removes a set only when no queued
job of it was found, with `If-Match` on the document as read before looking: a bump landing
after that read fails the write, and one before it followed a job write the look saw. It also
looks only at sets no job has entered the queue with for `PRUNE_AFTER`, far longer than any
write takes, so a lagging index cannot hide a job just queued.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from fleet import clock, queue_state, store, writes
from fleet.batch import each
from fleet.context import Context
from fleet.jobs import CAP_KEY, Job, cap_key
from fleet.stages import Stage

log = logging.getLogger("fleet.capability_sets")

#: How long a set stays registered without a job entering the queue with it before the sweep
#: looks for a queued job of it (and refreshes it if one is found).
PRUNE_AFTER = timedelta(hours=1)
#: How many of a product's older queued jobs one pass keys; passes repeat until none is left.
KEYING_PAGE = 100
#: The order both read queued jobs in: the claim's, whose indexes serve it.
RANKED = (("rankKey", True), ("createdAt", False))
#: How many passes one sweep makes for one product before leaving the rest to the next sweep.
KEYING_PASSES = 50


def sweep(ctx: Context) -> dict[str, int]:
    """For every product: key its older queued jobs and mark the registry complete, or prune
    its stale sets. Counts what was done."""
    now = ctx.clock.now()
    counts = {"capSetsKeyed": 0, "capSetsPruned": 0}

    def tend(doc: dict[str, Any]) -> None:
        if doc.get(queue_state.CAP_SETS_COMPLETE):
            counts["capSetsPruned"] += prune(ctx, doc, now)
        else:
            counts["capSetsKeyed"] += key_older_jobs(ctx, doc["productId"])

    counts["capSetsFailed"] = each(queue_state.every_doc(ctx), tend)
    return counts


def key_older_jobs(ctx: Context, product_id: str) -> int:
    """Give the product's queued jobs written before `capKey` existed their key, registering
    their sets first; once none is left, mark the registry complete. Returns how many jobs were
    keyed. Each pass reads the first page afresh: keyed jobs leave the result."""
    keyed = 0
    where = (store.Filter("stage", "=", Stage.QUEUED.value), store.Filter(CAP_KEY, "=", None))
    missing = store.Query("jobs", product_id, where, RANKED, limit=KEYING_PAGE)
    for _ in range(KEYING_PASSES):
        found = [Job.from_doc(doc) for doc in ctx.store.query(missing).items]
        if not found:
            queue_state.mark_complete(ctx, product_id)
            return keyed
        queue_state.register(ctx, product_id, {cap_key(job.capabilities) for job in found})
        for job in found:
            writes.change(ctx, job.id, _keyed, current=job, request=False)
            keyed += 1
    log.warning("product %s still has queued jobs without a capKey; the next sweep goes on", product_id)
    return keyed


def _keyed(job: Job, facts: None, now: datetime) -> Job | None:
    # Rewritten as is: every job write stores `capKey`. One no longer queued gets it when it
    # is next written, before it can enter the queue again.
    return job if job.stage == Stage.QUEUED else None


def prune(ctx: Context, doc: dict[str, Any], now: datetime) -> int:
    """Drop from the queue-state document `doc` the sets registered longer than `PRUNE_AFTER`
    ago of which no job is queued, and refresh those of which one is. One conditional write; a
    document changed since it was read is left to the next sweep. Returns how many were dropped."""
    horizon = clock.format(now - PRUNE_AFTER)
    stale = [key for key, at in queue_state.cap_sets(doc).items() if at < horizon]
    kept, dropped = [], []
    for key in stale:
        where = (store.Filter("stage", "=", Stage.QUEUED.value), store.Filter(CAP_KEY, "=", key))
        queued = ctx.store.query(store.Query("jobs", doc["productId"], where, RANKED, limit=1)).items
        (kept if queued else dropped).append(key)
    if not stale or not queue_state.rewrite_sets(ctx, doc, kept, dropped):
        return 0
    return len(dropped)
