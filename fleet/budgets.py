"""Budgets over the store: read, set, pause, resume and roll a product's budget. Every change is
a conditional write on the product's one budget document; the rules are `budget_rules`."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fleet import activity, budget_rules, clock, errors, queue_state, store
from fleet.budget_rules import Budget, PausedBy, Window
from fleet.context import Context


#: The fields of a budget that nothing pauses.
RUNNING = {"paused": False, "paused_by": None, "paused_actor": None, "pause_reason": None}


def _new(product_id: str, now: datetime) -> Budget:
    return Budget(id=product_id, product_id=product_id, window_start=budget_rules.window_start(Window.MONTHLY, now), updated_at=now)


def read(ctx: Context, product_id: str) -> dict[str, Any] | None:
    """The product's budget document as stored (with its ETag), or None if it has none: for a
    use case that decides on it and then changes it (`change(..., current=doc)`)."""
    try:
        return ctx.store.read("budgets", product_id, product_id)
    except errors.NotFound:
        return None


def find(ctx: Context, product_id: str) -> Budget | None:
    """The product's budget as of now (rolled), or None if it has none (nor for a principal
    that does not see the product)."""
    if not ctx.principal.sees(product_id):
        return None
    doc = read(ctx, product_id)
    return None if doc is None else budget_rules.rolled(Budget.from_doc(doc), ctx.clock.now())


def listed(ctx: Context, limit: int) -> tuple[dict[str, Budget], bool]:
    """Up to `limit` budgets, as of now (rolled), of the products this principal sees, in one
    query; and whether that is every budget (the query had no more to give)."""
    page = ctx.store.query(store.Query("budgets", None, limit=limit))
    now = ctx.clock.now()
    found = {
        doc["productId"]: budget_rules.rolled(Budget.from_doc(doc), now)
        for doc in page.items
        if ctx.principal.sees(doc["productId"])
    }
    return found, not page.continuation


def change(ctx: Context, product_id: str, decide, create: bool = True, current: dict[str, Any] | None = None) -> Budget:
    """CAS `decide(rolled budget) -> Budget | None` on the product's budget, creating it first
    if it does not exist and `create` is set. Written as a patch of the fields it changes (an
    accrual appends to the memory), conditional on the ETag it was decided on. `current`: the document as the caller read it,
    decided on first instead of reading it again."""
    now = ctx.clock.now()

    def step(doc: dict[str, Any]) -> dict[str, Any] | None:
        current = Budget.from_doc(doc)
        base = budget_rules.rolled(current, now)
        new = decide(base)
        if new is None:
            return base.to_doc() if base is not current else None
        return new.to_doc()

    initial = _new(product_id, now).to_doc() if create else None
    try:
        doc = store.update(
            ctx.store, "budgets", product_id, product_id, step, initial=initial, current=current, sleep=ctx.clock.sleep, patch=True
        )
        return Budget.from_doc(doc)
    except errors.NotFound:
        raise errors.NotFound(f"product {product_id} has no budget") from None


#: `put`'s default for a setting the caller leaves as it is.
KEEP: Any = object()


def put(
    ctx: Context,
    product_id: str,
    ceiling_usd: float = KEEP,
    window: Window | None = None,
    default_estimate_usd: float | None = KEEP,
) -> Budget:
    """Create or update the ceiling unless it is `KEEP` (a budget without one must be given
    one); the window unless it is None (a new budget's is monthly); and the default estimate
    unless it is `KEEP` (None: jobs without an estimate reserve nothing). Lifting the ceiling above spend lifts an
    automatic pause. Changing the window moves to the new kind's current window, whose spend
    is recomputed from the ledger (what was charged each day)."""
    _reach(ctx, product_id)
    now = ctx.clock.now()

    def decide(budget: Budget) -> Budget:
        window_of = window or budget.window
        ceiling = budget.ceiling_usd if ceiling_usd is KEEP else ceiling_usd
        if ceiling is None:
            detail = f"product {product_id}'s budget has no ceiling yet: name one (ceilingUsd)"
            raise errors.ValidationFailed(detail, [{"field": "ceilingUsd", "message": detail}])
        update: dict[str, Any] = {"ceiling_usd": ceiling, "window": window_of, "updated_at": now}
        if default_estimate_usd is not KEEP:
            update["default_estimate_usd"] = default_estimate_usd
        _check_default(update.get("default_estimate_usd", budget.default_estimate_usd), ceiling, default_estimate_usd is KEEP)
        if window_of != budget.window:
            start = budget_rules.window_start(window_of, now)
            spent = budget.charged_since(start)
            update.update(window_start=start, spent_usd=spent)
            budget = budget.model_copy(update={"spent_usd": spent})
        if budget.paused_by == PausedBy.CEILING and budget.spent_usd < ceiling:
            update.update(paused=False, paused_by=None)
        elif not budget.paused and budget.spent_usd >= ceiling:
            update.update(paused=True, paused_by=PausedBy.CEILING)
        return budget.model_copy(update=update)

    before = find(ctx, product_id)
    budget = change(ctx, product_id, decide)
    if before is None or _roomier(before, budget):
        queue_state.bump(ctx, product_id)
    activity.touch(ctx)
    return budget


def _check_default(default: float | None, ceiling: float, kept: bool) -> None:
    """A default estimate above the ceiling would refuse every job that names no cost while
    the budget reads as running: refused, naming the field (and, when the PUT kept the
    default, that it is the one the budget has)."""
    if default is None or default <= ceiling:
        return
    detail = f"defaultEstimateUsd {default:g} is above the ceiling {ceiling:g}: every job that names no cost would be refused"
    if kept:
        detail += " (it is the budget's default estimate: name a lower one, or null for none)"
    raise errors.ValidationFailed(detail, [{"field": "defaultEstimateUsd", "message": detail}])


def _roomier(before: Budget, after: Budget) -> bool:
    """Whether a claim refused under `before` may fit under `after`: idle factories must be told."""
    if budget_rules.refusal(before) and not budget_rules.refusal(after):
        return True
    room = lambda b: (b.ceiling_usd if b.ceiling_usd is not None else float("inf")) - b.spent_usd  # noqa: E731
    return room(after) > room(before) or (after.default_estimate_usd or 0.0) < (before.default_estimate_usd or 0.0)


def pause(ctx: Context, product_id: str, reason: str | None = None) -> Budget:
    """Pause by hand, recording who (the principal) and, if given, why."""
    _reach(ctx, product_id)
    now = ctx.clock.now()
    paused = {"paused": True, "paused_by": PausedBy.MANUAL, "paused_actor": ctx.principal.actor(), "pause_reason": reason}
    budget = change(
        ctx,
        product_id,
        lambda b: b.model_copy(update={**paused, "updated_at": now}),
        create=False,
    )
    activity.touch(ctx)
    return budget


def resume(ctx: Context, product_id: str) -> Budget:
    """Lift a pause; claims stay refused while spend is at or over the ceiling."""
    _reach(ctx, product_id)
    now = ctx.clock.now()
    budget = change(
        ctx,
        product_id,
        lambda b: b.model_copy(update={**RUNNING, "updated_at": now}),
        create=False,
    )
    queue_state.bump(ctx, product_id)
    activity.touch(ctx)
    return budget


def roll_windows(ctx: Context) -> int:
    """Start a new window for every budget whose window elapsed (the hourly timer)."""
    now = ctx.clock.now()
    rolled_count = 0
    for doc in list(store.query_all(ctx.store, store.Query("budgets", None, limit=200))):
        budget = Budget.from_doc(doc)
        if budget_rules.rolled(budget, now) is budget:
            continue
        change(ctx, budget.product_id, lambda b: None, create=False)  # `change` persists the roll
        queue_state.bump(ctx, budget.product_id)
        rolled_count += 1
    if rolled_count:
        activity.touch(ctx)
    return rolled_count


def drop_stale_reservations(ctx: Context) -> int:
    """Drop reservations older than a lease term that no run will give back: naming a run its
    job never started (a crash between reserving and claiming), or one already ended and
    accrued (its accrual ran before the reservation landed: a claim reserves after taking its
    job, and an operator may end the run in between); and what a taken run's reservation
    held for its late report, once its `lateUntil` has passed."""
    now = ctx.clock.now()
    dropped = 0
    for doc in list(store.query_all(ctx.store, store.Query("budgets", None, limit=200))):
        budget = Budget.from_doc(doc)
        for claim, held in budget.reservations.items():
            if held.get("lateUntil"):  # held for a taken run's late report, which did not come
                if now >= clock.parse(held["lateUntil"]):
                    change(ctx, budget.product_id, lambda b, c=claim: budget_rules.release(b, c, now), create=False)
                    queue_state.bump(ctx, budget.product_id)
                    dropped += 1
                continue
            if now - clock.parse(held["at"]) < timedelta(seconds=ctx.settings.lease_seconds):
                continue
            job_id = held.get("runId", "").rpartition("#")[0]
            try:
                job = ctx.store.read("jobs", budget.product_id, job_id)
            except errors.NotFound:
                job = {}
            if not any(_gives_back(run, claim) for run in job.get("runs", [])):
                change(ctx, budget.product_id, lambda b, c=claim: budget_rules.release(b, c, now), create=False)
                queue_state.bump(ctx, budget.product_id)  # the room it held is free: claims may fit
                dropped += 1
    return dropped


def _gives_back(run: dict[str, Any], claim: str) -> bool:
    """Whether the run (a stored one) holds the reservation `claim` and will give it back: it
    has not ended, or its accrual (which drops it) is still to come."""
    return run.get("reservation") == claim and not (run.get("endedAt") and run.get("accrued"))


def _reach(ctx: Context, product_id: str) -> None:
    """Another product's budget is as absent as one never set, to a scoped principal."""
    ctx.principal.reach(product_id, f"product {product_id} has no budget")
