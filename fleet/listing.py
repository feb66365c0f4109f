"""Reading jobs: one by id, and pages of them newest first."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from fleet import continuation as tokens
from fleet import deps, errors, store
from fleet.context import Context
from fleet.jobs import Job, Model, product_of
from fleet.stages import Stage

#: How deep `offset` may page; past this, follow the continuation token instead.
MAX_OFFSET = 10_000
#: The most jobs one page holds.
MAX_LIMIT = 500
#: Every job, and no other document of the jobs container (its queue-states, day counters and
#: records have no `createdAt`): the filter of a listing of any stage. A field no write changes,
#: so the store's index of it is not re-keyed by a job's moves.
LISTED = store.Filter("createdAt", "!=", None)


class JobPage(Model):
    """`GET /fleet/jobs`: newest first; `next_offset` and `continuation` are both None at the end."""

    items: list[Job] = Field(default_factory=list)
    #: The `offset` of the next page (not given to a page asked for by continuation).
    next_offset: int | None = None
    #: The token of the next page.
    continuation: str | None = None


def get(ctx: Context, id: str, doc: dict[str, Any] | None = None) -> Job:
    """One job with its runs and events. A blocked job's `blockedOn` is read fresh. `doc`: the
    job's document as the caller read it a moment ago (one request's), not read again."""
    product_id = product_of(id)
    if product_id is None:
        raise errors.NotFound(f"no job {id!r}")
    ctx.principal.reach(product_id, f"no job {id!r}")
    if doc is not None and doc.get("id") != id:
        raise ValueError(f"the document given for job {id!r} is {doc.get('id')!r}'s")
    try:
        job = Job.from_doc(doc if doc is not None else ctx.store.read("jobs", product_id, id))
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
    """One page of jobs, newest first; `nextOffset` and `continuation` both null at the end.

    `continuation` is a token an earlier page of a listing with the same `stage` and
    `product_id` handed out (sealed: see `fleet.continuation`); any other is a
    `ValidationFailed`, and so is one given with an `offset` (a page is asked for by one or
    the other). A principal limited to some products
    lists only theirs (another product asked for by name lists as empty)."""
    where = (store.Filter("stage", "=", stage.value),) if stage else (LISTED,)
    scope = ctx.principal.products
    if scope is not None and product_id is None:
        if len(scope) == 1:
            product_id = scope[0]
        else:
            where += (store.Filter("productId", "in", list(scope)),)
    elif product_id is not None and not ctx.principal.sees(product_id):
        return JobPage()
    filters = {"stage": stage.value if stage else None, "productId": product_id}
    store_token = None
    if continuation:
        if offset:
            raise errors.ValidationFailed(
                "give offset or continuation, not both",
                [{"field": "offset", "message": "not allowed with continuation"}],
            )
        store_token = tokens.unseal(ctx, continuation, filters)
    query = store.Query("jobs", product_id, where, (("createdAt", True),), limit + offset)
    try:
        result = ctx.store.query(query, store_token)
    except ValueError:  # sealed by this fleet, yet the store refuses it: the store was changed
        raise errors.ValidationFailed(
            "continuation is not a token this listing handed out", [{"field": "continuation", "message": "invalid token"}]
        ) from None
    items = result.items[offset:]
    more = result.continuation is not None
    start = 0 if continuation else offset
    return JobPage(
        items=[Job.from_doc(doc) for doc in items],
        next_offset=start + len(items) if more and not continuation else None,
        continuation=tokens.seal(ctx, result.continuation, filters) if more else None,
    )
