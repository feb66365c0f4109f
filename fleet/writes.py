"""Writing a job document: the only code that does.

A write decides purely and writes once: `decide(job, facts, now) -> Job | None` gets the job
and the facts its caller read beforehand (weights, a budget, the outage record, the stages of
deps: whatever the decision needs beyond the job), and returns the changed job or None for
"nothing to change"; the result is written with `If-Match` on the ETag the job was read with.
On a lost race the job is read again and decided again on the same facts, so a retry reads
nothing but the job. Domain errors raised by `decide` propagate with nothing written.

What follows a write on other documents (queue-state, spend, dependents, re-keying) is
`effects`'s: a use case changes a job with `effects.change`, which writes here and then
settles. The writes that are themselves follow-ups (an accrual mark, a re-key) write here
directly: nothing follows them.

Job documents are the `jobs` container's documents whose id is a job id (`{productId}:{h}`);
the container's reserved documents (`queue-state`, `weights`, the `_fleet` sweep record) are
written by their own modules.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Optional

from fleet import errors, store
from fleet.context import Context
from fleet.jobs import Job, product_of
from fleet.stages import Stage

#: The largest a job document may grow (Cosmos DB refuses items over 2 MB; keep well clear).
MAX_JOB_BYTES = 1_500_000

#: `decide(job, facts, now)`: the changed job, or None for "nothing to change". Pure.
Decide = Callable[[Job, Any, datetime], Optional[Job]]


@dataclass(frozen=True)
class Written:
    """What one job write did, and what followed it."""

    #: The job as it stands afterwards (after its follow-ups, when they ran).
    job: Job
    #: The job the winning decision was made on; None for a create.
    before: Job | None
    #: Whether anything was written (False: the decision found nothing to change).
    wrote: bool
    #: The follow-ups that ran after the write, in order (`effects.FollowUp` members).
    followed: tuple[Any, ...] = ()

    def entered(self, stage: Stage) -> bool:
        """Whether this write moved the job into `stage` (from another stage)."""
        return self.wrote and self.job.stage == stage and (self.before is None or self.before.stage != stage)


def read(ctx: Context, id: str) -> Job:
    """The job `id` as stored, with its ETag: what a use case reads its facts from before it
    writes (pass it on as `current`, so the write does not read it again)."""
    product_id = product_of(id)
    if product_id is None:
        raise errors.NotFound(f"no job {id!r}")
    # Another product's job is as absent as a job never submitted, to a scoped principal.
    ctx.principal.reach(product_id, f"no job {id!r}")
    try:
        return Job.from_doc(ctx.store.read("jobs", product_id, id))
    except errors.NotFound:
        raise errors.NotFound(f"no job {id!r}") from None


def change(
    ctx: Context,
    id: str,
    decide: Decide,
    facts: Any = None,
    *,
    current: Job | None = None,
    now: datetime | None = None,
    retry: bool = True,
    request: bool = True,
) -> Written:
    """Apply `decide(job, facts, now)` to the job `id` with one conditional write.

    `current`: the job as the caller read it (with its ETag), decided on first instead of
    reading it again. `now`: the time the caller gathered its facts at (default: the clock's
    now). `retry=False` makes one attempt only: a lost race raises `PreconditionFailed` (a
    claim moves on to its next candidate instead). `request`: the write records what a request
    brought (a note, insights, a checkpoint, a comment), so it is stamped `updatedAt = now`
    and refused with `TooLarge` past `MAX_JOB_BYTES`; the fleet's own writes (claims, renewals,
    expiry, unblocking, accrual marks, re-keys) pass False: they are written exactly as
    decided (their decisions stamp `updatedAt` where it means something) and are never
    refused for size, which would strand the job.
    """
    product_id = product_of(id)
    if product_id is None:
        raise errors.NotFound(f"no job {id!r}")
    ctx.principal.reach(product_id, f"no job {id!r}")
    at = now or ctx.clock.now()

    def step(doc: dict[str, Any]) -> dict[str, Any] | None:
        new = decide(Job.from_doc(doc), facts, at)
        if new is None:
            return None
        if not request:
            return new.to_doc()
        return _bounded(id, new.model_copy(update={"updated_at": at}).to_doc())

    first = _doc_of(current)
    if not retry and current is not None and first is None:
        raise errors.PreconditionFailed(f"job {id} was handed over without the ETag it was read with")
    try:
        if retry:
            swapped = store.swap(ctx.store, "jobs", product_id, id, step, current=first, sleep=ctx.clock.sleep)
        else:
            swapped = _once(ctx, id, step, first)
    except errors.NotFound:
        raise errors.NotFound(f"no job {id!r}") from None
    before = Job.from_doc(swapped.before) if swapped.before is not None else None
    return Written(Job.from_doc(swapped.doc), before, swapped.wrote)


def create(ctx: Context, job: Job) -> Written:
    """Create the job document; raises `Conflict` if its id exists (a repeated submit)."""
    return Written(Job.from_doc(ctx.store.create("jobs", job.to_doc())), None, True)


def _once(ctx: Context, id: str, step, first: dict[str, Any] | None) -> store.Swapped:
    """One attempt of `store.swap`, a lost race raised as `PreconditionFailed`."""
    current = first if first is not None else ctx.store.read("jobs", product_of(id), id)
    new = step(current)
    if new is None:
        return store.Swapped(current, current, False)
    return store.Swapped(ctx.store.replace("jobs", new, current["_etag"]), current, True)


def _doc_of(job: Job | None) -> dict[str, Any] | None:
    """The store document `job` was read as, for deciding on it first; None (read it) when it
    carries no ETag."""
    if job is None or not job.etag:
        return None
    return {**job.to_doc(), "_etag": job.etag}


def _bounded(id: str, doc: dict[str, Any]) -> dict[str, Any]:
    size = len(json.dumps(doc, separators=(",", ":")))
    if size > MAX_JOB_BYTES:
        raise errors.TooLarge(f"job {id} would grow to {size} bytes; at most {MAX_JOB_BYTES} are kept")
    return doc
