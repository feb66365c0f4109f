"""Reading jobs: one by id, and pages of them newest first."""
from __future__ import annotations

from pydantic import Field

from fleet import deps, errors, store
from fleet.context import Context
from fleet.jobs import Job, Model, product_of
from fleet.stages import Stage

#: How deep `offset` may page; past this, follow the continuation token instead.
MAX_OFFSET = 10_000
#: The most jobs one page holds.
MAX_LIMIT = 500


class JobPage(Model):
    """`GET /fleet/jobs`: newest first; `next_offset` and `continuation` are both None at the end."""

    items: list[Job] = Field(default_factory=list)
    #: The `offset` of the next page (not given to a page asked for by continuation).
    next_offset: int | None = None
    #: The token of the next page.
    continuation: str | None = None


def get(ctx: Context, id: str) -> Job:
    """One job with its runs and events. A blocked job's `blockedOn` is read fresh."""
    product_id = product_of(id)
    if product_id is None:
        raise errors.NotFound(f"no job {id!r}")
    try:
        job = Job.from_doc(ctx.store.read("jobs", product_id, id))
    except errors.NotFound:
        raise errors.NotFound(f"no job {id!r}") from None
    if job.stage == Stage.BLOCKED:
        job = job.model_copy(update={"blocked_on": deps.waiting_on(ctx, product_id, job.deps)})
    return job


def page(
    ctx: Context,
    stage: Stage | None = None,
    product_id: str | None = None,
    limit: int = 50,
    offset: int = 0,
    continuation: str | None = None,
) -> JobPage:
    """One page of jobs, newest first."""
    where = (store.Filter("stage", "=", stage.value),) if stage else (store.Filter("stage", "!=", None),)
    if continuation:
        offset = 0
    query = store.Query("jobs", product_id, where, (("createdAt", True),), limit + offset)
    try:
        result = ctx.store.query(query, continuation)
    except ValueError:
        raise errors.ValidationFailed(
            "continuation is not a token this listing handed out", [{"field": "continuation", "message": "invalid token"}]
        ) from None
    items = result.items[offset:]
    more = result.continuation is not None
    start = 0 if continuation else offset
    return JobPage(
        items=[Job.from_doc(doc) for doc in items],
        next_offset=start + len(items) if more and not continuation else None,
        continuation=result.continuation,
    )
