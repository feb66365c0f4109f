"""What each page shows, read through the same use cases as the API, as the signed-in
principal (its product scope filters everything here as it does there)."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fleet import actions, activity, budget_rules, budgets, dag, errors, factories, listing, liveness, queue_state, store
from fleet.context import Context
from fleet.jobs import Job, job_id
from fleet.stages import TERMINAL, Stage

#: How many jobs a page of the jobs list holds, and how many the overview lists as recent.
PAGE_SIZE = 25
RECENT = 8
#: A search looks through at most this many of the newest jobs of the filter.
SEARCH_DEPTH = 500
#: Products listed at most (every view of them costs a read or two each).
MAX_PRODUCTS = 50


def products(
    ctx: Context, fleet: list[factories.Factory] | None = None, budgeted: "Budgeted | None" = None
) -> list[str]:
    """The products this principal sees that the fleet knows of: any that ever queued a job,
    has a factory serving it (`fleet`: the factories, when the caller has read them), or has a
    budget (`budgeted`: the budgets, when the caller has listed them). A principal limited to
    some products looks for theirs (a fleet-wide listing, cut at `MAX_PRODUCTS`, may not reach
    them)."""
    found: set[str] = set()
    where: tuple[store.Filter, ...] = (store.Filter("id", "=", queue_state.DOC_ID),)
    if ctx.principal.products is not None:
        where += (store.Filter("productId", "in", list(ctx.principal.products)),)
    queue_states = store.Query("jobs", None, where, limit=MAX_PRODUCTS, fields=("productId",))
    found.update(doc["productId"] for doc in ctx.store.query(queue_states).items)
    for factory in factories.list_all(ctx).items if fleet is None else fleet:
        found.update(factory.products)
    if ctx.settings.budgets:
        found.update((budgeted or Budgeted.listed(ctx)).budgets)
    return sorted(p for p in found if ctx.principal.sees(p))[:MAX_PRODUCTS]


@dataclass(frozen=True)
class Budgeted:
    """The budgets of the products a page shows, listed in one query (`budgets.listed`): a
    page that shows every product's budget reads each only if the listing was cut short."""

    budgets: dict[str, budget_rules.Budget]
    complete: bool

    @classmethod
    def listed(cls, ctx: Context) -> "Budgeted":
        """A principal limited to some products reads theirs (a fleet-wide listing, cut at
        `MAX_PRODUCTS`, may not reach them); any other lists the fleet's."""
        scope = ctx.principal.products
        if scope is not None:
            found = {p: budget for p in scope[:MAX_PRODUCTS] if (budget := budgets.find(ctx, p)) is not None}
            return cls(found, True)
        return cls(*budgets.listed(ctx, MAX_PRODUCTS))

    def of(self, ctx: Context, product: str) -> budget_rules.Budget | None:
        """The product's budget: from the listing, else (a listing cut short) read."""
        if product in self.budgets or self.complete:
            return self.budgets.get(product)
        return budgets.find(ctx, product)


#: The stages the overview counts jobs in now: work in flight, and work waiting for an operator
#: (dead letters). Their counts are bounded by the work at hand; the other end stages' grow with
#: history, so the overview shows how many jobs reached them lately (`Overview.finished`).
COUNTED = (*(s for s in Stage if s not in TERMINAL), Stage.DEAD_LETTER)
#: The end stages whose recent entries the overview shows, from the days' rollups.
FINISHED = activity.ENDS


@dataclass
class Overview:
    factories: list[factories.Factory]
    #: product -> stage (`COUNTED`) -> how many of its jobs are in it now.
    counts: dict[str, dict[Stage, int]]
    recent: list[Job]
    spend: dict[str, budget_rules.BudgetView | None]
    days: list[activity.Day]
    #: product -> end stage -> how many of its jobs reached it over `days`.
    finished: dict[str, dict[Stage, int]] = field(default_factory=dict)


def overview(ctx: Context) -> Overview:
    fleet = factories.list_all(ctx).items
    budgeted = Budgeted.listed(ctx) if ctx.settings.budgets else None
    names = products(ctx, fleet, budgeted)
    counts = {p: {s: _count(ctx, p, s) for s in COUNTED} for p in names}
    spend: dict[str, budget_rules.BudgetView | None] = {}
    if budgeted is not None:
        for p in names:
            budget = budgeted.of(ctx, p)
            spend[p] = budget.public() if budget else None
    days = activity.days(ctx)
    return Overview(
        factories=fleet,
        counts=counts,
        recent=listing.page(ctx, limit=RECENT).items,
        spend=spend,
        days=days,
        finished={p: activity.finished(days, p) for p in names},
    )


def _count(ctx: Context, product: str, stage: Stage) -> int:
    return ctx.store.count(store.Query("jobs", product, (store.Filter("stage", "=", stage.value),)))


@dataclass
class JobsView:
    items: list[Job]
    stage: Stage | None
    product: str | None
    query: str
    offset: int
    more: bool
    products: list[str]
    searched: int = 0


def jobs(ctx: Context, stage: Stage | None, product: str | None, query: str, offset: int) -> JobsView:
    """A page of jobs newest first; with a search, the jobs among the newest `SEARCH_DEPTH` of the
    filter whose title contains it (any case) or whose idempotency key is it."""
    names = products(ctx)
    if not query:
        page = listing.page(ctx, stage=stage, product_id=product, limit=PAGE_SIZE, offset=offset)
        return JobsView(page.items, stage, product, query, offset, page.next_offset is not None, names)
    needle = query.casefold()
    matched: list[Job] = []
    if product:  # an idempotency key names one job of a product: one point read
        try:
            exact = listing.get(ctx, job_id(product, query))
            if stage is None or exact.stage == stage:
                matched.append(exact)
        except errors.NotFound:
            pass
    searched, cursor = 0, 0
    while searched < SEARCH_DEPTH:
        page = listing.page(ctx, stage=stage, product_id=product, limit=100, offset=cursor)
        searched += len(page.items)
        matched += [
            j for j in page.items if (needle in j.title.casefold() or j.idempotency_key == query) and j not in matched
        ]
        if page.next_offset is None:
            break
        cursor = page.next_offset
    window = matched[offset : offset + PAGE_SIZE]
    return JobsView(window, stage, product, query, offset, len(matched) > offset + PAGE_SIZE, names, searched)


@dataclass
class Detail:
    job: Job
    tree: dag.DagNode | None
    runs: list[dict[str, Any]] = field(default_factory=list)
    #: When the job's lease ends unless renewed: its effective expiry (`fleet.liveness`), which
    #: its factory's heartbeats carry past the job's own `lease.expiresAt`.
    lease_until: datetime | None = None
    #: The operator actions that would change the job now (`actions.available`), by value.
    actions: frozenset[str] = frozenset()


def detail(ctx: Context, id: str, doc: dict[str, Any] | None = None) -> Detail:
    """The job page's content; `doc`: the job's document as this request already read it."""
    job = listing.get(ctx, id, doc)
    root = job
    seen = {job.id}
    while root.parent_id and root.parent_id not in seen:  # the whole DAG, from its top
        seen.add(root.parent_id)
        try:
            root = listing.get(ctx, root.parent_id)
        except errors.NotFound:
            break
    tree = dag.view(ctx, root.id) if (root.children or root.id != job.id) else None
    runs = [
        {
            "run": run,
            "cost": run.cost_usd,
            "tokens": run.insights.get("tokens") or _tokens(run.insights),
            "artifacts": run.artifacts,
            # reported by the lease after it was taken (`leases.report`)
            "late": run.late_report is not None,
            "pr_url": run.pr_link,
        }
        for run in reversed(job.runs)
    ]
    lease_until = None
    if job.lease is not None:  # one point read of its holder's document, for a leased job only
        lease_until = liveness.effective_expiry(job.lease, factories.find(ctx, job.lease.factory_id))
    return Detail(job, tree, runs, lease_until, frozenset(a.value for a in actions.available(job)))


def _tokens(insights: dict[str, Any]) -> int | None:
    total = sum(v for k, v in insights.items() if k.lower().endswith("tokens") and isinstance(v, (int, float)))
    return int(total) or None


@dataclass
class BudgetsView:
    budgets: dict[str, budget_rules.BudgetView | None]
    rolls_at: dict[str, Any]


def budget_page(ctx: Context) -> BudgetsView:
    shown: dict[str, budget_rules.BudgetView | None] = {}
    rolls: dict[str, Any] = {}
    budgeted = Budgeted.listed(ctx) if ctx.settings.budgets else Budgeted({}, False)
    for p in products(ctx, budgeted=budgeted):
        budget = budgeted.of(ctx, p)
        shown[p] = budget.public() if budget else None
        if budget is not None:
            rolls[p] = budget_rules.window_end(budget.window, budget.window_start)
    return BudgetsView(shown, rolls)
