"""Per-product USD budgets: a ceiling per calendar window, spend accrued exactly once per run,
automatic and manual pauses, and reservations for in-flight estimated cost.

One document per product in the `budgets` container (`id` = `productId`). Every change is a
conditional write on that document. A run's cost is accrued by run id, and the ids of recent
accruals are remembered on the document, so replaying an accrual (a retried request, the sweep
finishing one a crash interrupted) never counts it twice.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any

from pydantic import Field

from fleet import clock, errors, queue_state, store
from fleet.context import Context
from fleet.jobs import Model, Time

#: How many accrual ids a budget remembers: far more than ever end between two sweeps (the
#: sweep replays an interrupted accrual within a minute), few enough to keep the document small.
ACCRUAL_MEMORY = 500


class Window(str, Enum):
    DAILY = "daily"  # resets at 00:00 UTC
    WEEKLY = "weekly"  # resets Monday 00:00 UTC
    MONTHLY = "monthly"  # resets on the 1st, 00:00 UTC


class PausedBy(str, Enum):
    MANUAL = "manual"  # an operator paused it; only resume lifts it
    CEILING = "ceiling"  # spend reached the ceiling; a new window or a higher ceiling lifts it


class Budget(Model):
    id: str
    product_id: str
    ceiling_usd: float | None = None
    window: Window = Window.MONTHLY
    window_start: Time
    spent_usd: float = 0.0
    paused: bool = False
    paused_by: PausedBy | None = None
    #: claim (lease id) -> {amountUsd, at, runId}: estimated cost of runs not yet accrued.
    reservations: dict[str, dict[str, Any]] = Field(default_factory=dict)
    accruals: list[str] = Field(default_factory=list)
    #: [when, usd] of the recent charged accruals (as many as `accruals` remembers): what a
    #: change of window recomputes the new window's spend from.
    ledger: list[tuple[Time, float]] = Field(default_factory=list)
    updated_at: Time

    @property
    def reserved_usd(self) -> float:
        return sum(r["amountUsd"] for r in self.reservations.values())

    def public(self) -> dict[str, Any]:
        doc = self.to_doc()
        doc.pop("accruals")
        doc.pop("ledger")
        doc["reservedUsd"] = self.reserved_usd
        doc["remainingUsd"] = None if self.ceiling_usd is None else max(0.0, self.ceiling_usd - self.spent_usd)
        return doc


def window_start(window: Window, now: datetime) -> datetime:
    """The start of the UTC calendar window containing `now`."""
    day = now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    if window == Window.DAILY:
        return day
    if window == Window.WEEKLY:
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def rolled(budget: Budget, now: datetime) -> Budget:
    """The budget as of `now`: an elapsed window is rolled (spend reset, a ceiling pause
    lifted, a manual pause kept) even before the timer gets to it."""
    start = window_start(budget.window, now)
    if start <= budget.window_start:
        return budget
    paused = budget.paused and budget.paused_by == PausedBy.MANUAL
    return budget.model_copy(
        update={
            "window_start": start,
            "spent_usd": 0.0,
            "paused": paused,
            "paused_by": PausedBy.MANUAL if paused else None,
            "updated_at": now,
        }
    )


def refusal(budget: Budget | None) -> str | None:
    """Why a claim must not be made under this (rolled) budget, or None."""
    if budget is None:
        return None
    if budget.paused:
        return "budget_paused"
    if budget.ceiling_usd is not None and budget.spent_usd >= budget.ceiling_usd:
        return "budget_exceeded"
    return None


def accrue(
    budget: Budget,
    accrual_id: str,
    amount: float,
    now: datetime,
    reservation: str | None = None,
    ended_at: datetime | None = None,
) -> Budget | None:
    """Add `amount` once for `accrual_id` and drop the run's `reservation`; None if already
    counted. Reaching the ceiling pauses the budget. A run that ended before the current
    window began (accrued late: budgets were off, or a long outage) is remembered but not
    charged: it was spent in a window that is over."""
    if accrual_id in budget.accruals:
        return None
    earlier = ended_at is not None and ended_at < budget.window_start
    spent = budget.spent_usd + (0.0 if earlier else amount)
    reservations = {k: v for k, v in budget.reservations.items() if k != reservation}
    update: dict[str, Any] = {
        "spent_usd": spent,
        "reservations": reservations,
        "accruals": [*budget.accruals, accrual_id][-ACCRUAL_MEMORY:],
        "updated_at": now,
    }
    if amount and not earlier:
        update["ledger"] = [*budget.ledger, (ended_at or now, amount)][-ACCRUAL_MEMORY:]
    if budget.ceiling_usd is not None and spent >= budget.ceiling_usd and not budget.paused:
        update.update(paused=True, paused_by=PausedBy.CEILING)
    return budget.model_copy(update=update)


def reserve(budget: Budget, claim: str, run_id: str, amount: float, now: datetime) -> Budget:
    """Hold `amount` of the ceiling for the claim `claim` (its lease id) about to start run
    `run_id`; `BudgetExhausted` if it does not fit. Reserving the same claim again replaces it."""
    others = sum(r["amountUsd"] for k, r in budget.reservations.items() if k != claim)
    if budget.ceiling_usd is not None and budget.spent_usd + others + amount > budget.ceiling_usd:
        raise BudgetExhausted()
    held = {"amountUsd": amount, "at": clock.format(now), "runId": run_id}
    return budget.model_copy(update={"reservations": {**budget.reservations, claim: held}, "updated_at": now})


def release(budget: Budget, claim: str, now: datetime) -> Budget | None:
    """Drop the reservation of a claim that did not happen; None if there is none."""
    if claim not in budget.reservations:
        return None
    reservations = {k: v for k, v in budget.reservations.items() if k != claim}
    return budget.model_copy(update={"reservations": reservations, "updated_at": now})


class BudgetExhausted(errors.FleetError):
    """The product's in-flight estimates would take it over its ceiling."""

    code = "budget_exceeded"


# Use cases over the store.


def _new(product_id: str, now: datetime) -> Budget:
    return Budget(id=product_id, product_id=product_id, window_start=window_start(Window.MONTHLY, now), updated_at=now)


def find(ctx: Context, product_id: str) -> Budget | None:
    """The product's budget as of now (rolled), or None if it has none."""
    try:
        doc = ctx.store.read("budgets", product_id, product_id)
    except errors.NotFound:
        return None
    return rolled(Budget.from_doc(doc), ctx.clock.now())


def change(ctx: Context, product_id: str, decide, create: bool = True) -> Budget:
    """CAS `decide(rolled budget) -> Budget | None` on the product's budget, creating it first
    if it does not exist and `create` is set."""
    now = ctx.clock.now()

    def step(doc: dict[str, Any]) -> dict[str, Any] | None:
        current = Budget.from_doc(doc)
        base = rolled(current, now)
        new = decide(base)
        if new is None:
            return base.to_doc() if base is not current else None
        return new.to_doc()

    initial = _new(product_id, now).to_doc() if create else None
    try:
        return Budget.from_doc(store.update(ctx.store, "budgets", product_id, product_id, step, initial=initial))
    except errors.NotFound:
        raise errors.NotFound(f"product {product_id} has no budget") from None


def put(ctx: Context, product_id: str, ceiling_usd: float, window: Window) -> Budget:
    """Create or update the ceiling and window. Lifting the ceiling above spend lifts an
    automatic pause. Changing the window moves to the new kind's current window, whose spend
    is recomputed from the ledger of recent accruals (exact within its memory)."""
    now = ctx.clock.now()

    def decide(budget: Budget) -> Budget:
        update: dict[str, Any] = {"ceiling_usd": ceiling_usd, "window": window, "updated_at": now}
        if window != budget.window:
            start = window_start(window, now)
            spent = sum(usd for at, usd in budget.ledger if at >= start)
            update.update(window_start=start, spent_usd=spent)
            budget = budget.model_copy(update={"spent_usd": spent})
        if budget.paused_by == PausedBy.CEILING and budget.spent_usd < ceiling_usd:
            update.update(paused=False, paused_by=None)
        elif not budget.paused and budget.spent_usd >= ceiling_usd:
            update.update(paused=True, paused_by=PausedBy.CEILING)
        return budget.model_copy(update=update)

    before = find(ctx, product_id)
    budget = change(ctx, product_id, decide)
    if refusal(before) and not refusal(budget) or before is None:
        queue_state.bump(ctx, product_id)
    return budget


def pause(ctx: Context, product_id: str) -> Budget:
    now = ctx.clock.now()
    return change(
        ctx,
        product_id,
        lambda b: b.model_copy(update={"paused": True, "paused_by": PausedBy.MANUAL, "updated_at": now}),
        create=False,
    )


def resume(ctx: Context, product_id: str) -> Budget:
    """Lift a pause; claims stay refused while spend is at or over the ceiling."""
    now = ctx.clock.now()
    budget = change(
        ctx,
        product_id,
        lambda b: b.model_copy(update={"paused": False, "paused_by": None, "updated_at": now}),
        create=False,
    )
    queue_state.bump(ctx, product_id)
    return budget


def roll_windows(ctx: Context) -> int:
    """Start a new window for every budget whose window elapsed (the hourly timer)."""
    now = ctx.clock.now()
    rolled_count = 0
    for doc in list(store.query_all(ctx.store, store.Query("budgets", None, limit=200))):
        budget = Budget.from_doc(doc)
        if rolled(budget, now) is budget:
            continue
        change(ctx, budget.product_id, lambda b: None, create=False)  # `change` persists the roll
        queue_state.bump(ctx, budget.product_id)
        rolled_count += 1
    return rolled_count


def drop_stale_reservations(ctx: Context) -> int:
    """Drop reservations whose claim never happened (a crash between reserving and claiming):
    older than a lease term and naming a run its job never started."""
    now = ctx.clock.now()
    dropped = 0
    for doc in list(store.query_all(ctx.store, store.Query("budgets", None, limit=200))):
        budget = Budget.from_doc(doc)
        for claim, held in budget.reservations.items():
            if now - clock.parse(held["at"]) < timedelta(seconds=ctx.settings.lease_seconds):
                continue
            job_id = held.get("runId", "").rpartition("#")[0]
            try:
                job = ctx.store.read("jobs", budget.product_id, job_id)
            except errors.NotFound:
                job = {}
            if not any(run.get("reservation") == claim for run in job.get("runs", [])):
                change(ctx, budget.product_id, lambda b, c=claim: release(b, c, now), create=False)
                dropped += 1
    return dropped
