"""The one way a use case changes a job: read it, decide, write it back if unchanged, then
settle the follow-ups. A lost race re-reads and decides again."""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Callable

from fleet import effects, errors, store
from fleet.context import Context
from fleet.jobs import Job, product_of
from fleet.stages import Stage

#: The largest a job document may grow (Cosmos DB refuses items over 2 MB; keep well clear).
MAX_JOB_BYTES = 1_500_000


def change(ctx: Context, id: str, decide: Callable[[Job, datetime], Job | None]) -> Job:
    """Apply `decide(job, now)` to the job `id` (None: nothing to change) and settle.
    Domain errors raised by `decide` propagate with nothing written."""
    product_id = product_of(id)
    if product_id is None:
        raise errors.NotFound(f"no job {id!r}")
    now = ctx.clock.now()
    before: dict[str, Stage] = {}

    def step(doc: dict[str, Any]) -> dict[str, Any] | None:
        job = Job.from_doc(doc)
        before["stage"] = job.stage
        new = decide(job, now)
        if new is None:
            return None
        doc = new.model_copy(update={"updated_at": now}).to_doc()
        size = len(json.dumps(doc, separators=(",", ":")))
        if size > MAX_JOB_BYTES:
            raise errors.TooLarge(f"job {id} would grow to {size} bytes; at most {MAX_JOB_BYTES} are kept")
        return doc

    try:
        job = Job.from_doc(store.update(ctx.store, "jobs", product_id, id, step))
    except errors.NotFound:
        raise errors.NotFound(f"no job {id!r}") from None
    return effects.settle(ctx, before["stage"], job)
