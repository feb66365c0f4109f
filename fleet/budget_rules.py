"""Budget rules: a product's USD ceiling per UTC calendar window, the spend accrued against it
exactly once per run, automatic and manual pauses, and reservations for in-flight estimated
cost (a job's own estimate, or the budget's default estimate for a job without one). Pure:
each rule takes a `Budget` and `now` and returns the changed copy (`budgets` holds the use
cases that read and write the document).

One document per product in the `budgets` container (`id` = `productId`). A run's cost is
accrued by run id, and the recent accruals are remembered on the document (as short digests of
their ids), so replaying an accrual (a retried request, the sweep finishing one a crash
interrupted) never counts it twice. What was charged is kept as a sum per UTC day (`ledger`),
for as far back as any window reaches, so a change of window recomputes the new window's spend
exactly. Claims read this document and every accrual and reservation writes it: it is kept
small (a few KB), and its memory grows by appends between cuts so that a write can be a patch.
"""
from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any

from pydantic import Field, field_validator, model_validator

from fleet import clock, errors
from fleet.jobs import Model, Time
from fleet.stages import ClaimReason

#: How many accruals a budget remembers at most: past it, the oldest half is forgotten at once,
#: so it always remembers at least the last `ACCRUAL_MEMORY // 2` (far more than ever end
#: between two sweeps: the sweep replays an interrupted accrual within a minute), and between
#: two cuts the memory only grows at its end (a patch appends to it).
ACCRUAL_MEMORY = 500
#: Decimal places of the USD figures the API shows (spend is sums of floats).
USD_DIGITS = 6


class Window(str, Enum):
    """A budget's period: a UTC calendar window (weeks start Monday)."""

    DAILY = "daily"  # resets at 00:00 UTC
    WEEKLY = "weekly"  # resets Monday 00:00 UTC
    MONTHLY = "monthly"  # resets on the 1st, 00:00 UTC


class PausedBy(str, Enum):
    """What paused a budget, and so what lifts the pause."""

    MANUAL = "manual"  # an operator paused it; only resume lifts it
    CEILING = "ceiling"  # spend reached the ceiling; a new window or a higher ceiling lifts it


class _BudgetFields(Model):
    """What a budget shows: its document and its public view both have these fields."""

    id: str
    product_id: str
    ceiling_usd: float | None = None
    window: Window = Window.MONTHLY
    #: What a claim reserves for a job with no `estimatedCostUsd` of its own (an explicit 0 is
    #: free); None: such jobs reserve nothing, and a burst of them may overshoot the ceiling.
    default_estimate_usd: float | None = None
    window_start: Time
    spent_usd: float = 0.0
    paused: bool = False
    paused_by: PausedBy | None = None
    #: Who paused it by hand (the principal's name), and why they said; None otherwise.
    paused_actor: str | None = None
    pause_reason: str | None = None
    #: claim (lease id) -> {amountUsd, at, runId}: estimated cost of runs not yet accrued.
    reservations: dict[str, dict[str, Any]] = Field(default_factory=dict)
    updated_at: Time


#: Each reservation is a top-level field of its own in the stored document, `r_{leaseId}`, so
#: that a claim's reservation and an accrual's drop of it are patches of that one field; the
#: whole set would be rewritten by every reservation, at about 110 bytes a run in flight.
RESERVATION_FIELD = "r_"


class Budget(_BudgetFields):
    """The product's budget document."""

    @model_validator(mode="before")
    @classmethod
    def _gather_reservations(cls, doc: Any) -> Any:
        """The `r_{leaseId}` fields as `reservations` (with those of a document written
        before reservations had fields of their own, under `reservations`)."""
        if not isinstance(doc, dict) or not any(k.startswith(RESERVATION_FIELD) for k in doc):
            return doc
        held = dict(doc.get("reservations") or {})
        held.update({k[len(RESERVATION_FIELD):]: v for k, v in doc.items() if k.startswith(RESERVATION_FIELD)})
        return {**{k: v for k, v in doc.items() if not k.startswith(RESERVATION_FIELD)}, "reservations": held}

    def to_doc(self) -> dict[str, Any]:
        doc = super().to_doc()
        held = doc.pop("reservations")
        return {**doc, **{f"{RESERVATION_FIELD}{claim}": r for claim, r in held.items()}}

    #: The recent accruals, by `accrual_key` (a document written before keys were digests
    #: holds accrual ids, which `counted` recognises too).
    accruals: list[str] = Field(default_factory=list)
    #: UTC day (`YYYY-MM-DD`) -> USD charged that day, for the days any window reaches back to
    #: (`ledger_start`): what a change of window recomputes the new window's spend from.
    ledger: dict[str, float] = Field(default_factory=dict)

    @field_validator("ledger", mode="before")
    @classmethod
    def _by_day(cls, ledger: Any) -> Any:
        """A document written before the ledger was by day holds `[when, usd]` pairs: summed."""
        if not isinstance(ledger, list):
            return ledger
        days: dict[str, float] = {}
        for at, usd in ledger:
            day = clock.parse(at).date().isoformat() if isinstance(at, str) else at.date().isoformat()
            days[day] = _usd(days.get(day, 0.0) + usd)
        return days

    def counted(self, accrual_id: str) -> bool:
        """Whether the accrual `accrual_id` is remembered as counted."""
        return accrual_key(accrual_id) in self.accruals or accrual_id in self.accruals

    def charged_since(self, start: datetime) -> float:
        """What the ledger says was charged from `start` (a window's start: midnight UTC) on."""
        first = start.astimezone(timezone.utc).date().isoformat()
        return _usd(sum(usd for day, usd in self.ledger.items() if day >= first))

    @property
    def reserved_usd(self) -> float:
        return sum(r["amountUsd"] for r in self.reservations.values())

    def public(self) -> "BudgetView":
        """What the API shows of it."""
        shown = {name: getattr(self, name) for name in _BudgetFields.model_fields}
        shown["spent_usd"] = _usd(self.spent_usd)
        # Keyed by run, not lease: a lease id is a write capability, and any reader sees this.
        # Two claims of one job may both hold one for a while (a lost race's give-back left to
        # the sweep): the second is shown under its run id and its place.
        reservations: dict[str, dict[str, Any]] = {}
        for n, held in enumerate(self.reservations.values(), 1):
            key = held.get("runId") or f"reservation-{n}"
            reservations[key if key not in reservations else f"{key} ({n})"] = {
                k: v for k, v in held.items() if k != "runId"
            }
        shown["reservations"] = reservations
        reserved = _usd(self.reserved_usd)
        remaining = None
        if self.ceiling_usd is not None:
            remaining = max(0.0, _usd(self.ceiling_usd - self.spent_usd - self.reserved_usd))
        return BudgetView(**shown, reserved_usd=reserved, remaining_usd=remaining, refusal=refusal(self))


class BudgetView(_BudgetFields):
    """`GET/PUT /fleet/budgets/{productId}` (and `pause`/`resume`): the budget without its
    accrual memory, with what its reservations hold and what is left under the ceiling."""

    #: run id -> {amountUsd, at}: the estimated cost of claimed runs not yet accrued.
    reservations: dict[str, dict[str, Any]] = Field(default_factory=dict)

    #: The estimated cost of claimed runs not yet accrued.
    reserved_usd: float
    #: The ceiling less the spend and the reservations (never below 0): the room a claim's
    #: estimate must fit in; None without a ceiling.
    remaining_usd: float | None
    #: Why claims of the product are refused now (`budget_paused`, or `budget_exceeded`: spend
    #: at the ceiling, even when not paused, as after a resume); None when they may be made.
    refusal: ClaimReason | None = None

    @property
    def unestimated_wait(self) -> bool:
        """Whether jobs that name no cost wait for room though claims are open: what is left
        under the ceiling is less than the default estimate (jobs estimated lower still fit)."""
        return (
            self.refusal is None
            and self.default_estimate_usd is not None
            and self.remaining_usd is not None
            and self.remaining_usd < self.default_estimate_usd
        )


def window_start(window: Window, now: datetime) -> datetime:
    """The start of the UTC calendar window containing `now`."""
    day = now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    if window == Window.DAILY:
        return day
    if window == Window.WEEKLY:
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def window_end(window: Window, start: datetime) -> datetime:
    """When the window that began at `start` rolls: the start of the next one."""
    if window == Window.DAILY:
        return start + timedelta(days=1)
    if window == Window.WEEKLY:
        return start + timedelta(days=7)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


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


def refusal(budget: Budget | None) -> ClaimReason | None:
    """Why a claim must not be made under this (rolled) budget, or None."""
    if budget is None:
        return None
    if budget.paused:
        return ClaimReason.BUDGET_PAUSED
    if budget.ceiling_usd is not None and _usd(budget.spent_usd) >= budget.ceiling_usd:
        return ClaimReason.BUDGET_EXCEEDED
    return None


def _usd(amount: float) -> float:
    """`amount` to `USD_DIGITS` places: what the API shows, and what the ceiling is held to
    (a sum of floats is a hair off: 0.3 + 0.55 + 0.05 is 0.9000000000000001)."""
    return round(amount, USD_DIGITS)


def accrue(
    budget: Budget,
    accrual_id: str,
    amount: float,
    now: datetime,
    reservation: str | None = None,
    ended_at: datetime | None = None,
    hold_until: datetime | None = None,
) -> Budget | None:
    """Add `amount` once for `accrual_id` and drop the run's `reservation`; None if already
    counted. Reaching the ceiling pauses the budget. A run that ended before the current
    window began (accrued late: budgets were off, or a long outage) is remembered but not
    charged: it was spent in a window that is over.

    `hold_until`: the run's lease was taken from it, so its factory may still report what it
    cost (`leases.report`): what the reservation held beyond `amount` stays held until then
    (`lateUntil`), for the late report's accrual to drop, or the sweep once that time passes.
    Else a claim could take that room and the late cost pass the ceiling."""
    if budget.counted(accrual_id):
        return None
    earlier = ended_at is not None and ended_at < budget.window_start
    spent = budget.spent_usd + (0.0 if earlier else amount)
    reservations = {k: v for k, v in budget.reservations.items() if k != reservation}
    held = budget.reservations.get(reservation) if reservation else None
    if hold_until is not None and held is not None and _usd(held["amountUsd"] - amount) > 0:
        reservations[reservation] = {**held, "amountUsd": _usd(held["amountUsd"] - amount),
                                     "lateUntil": clock.format(hold_until)}
    update: dict[str, Any] = {
        "spent_usd": spent,
        "reservations": reservations,
        "accruals": _remembered(budget.accruals, accrual_key(accrual_id)),
        "updated_at": now,
    }
    if amount and not earlier:
        update["ledger"] = _charged(budget.ledger, ended_at or now, amount, now)
    if budget.ceiling_usd is not None and _usd(spent) >= budget.ceiling_usd and not budget.paused:
        update.update(paused=True, paused_by=PausedBy.CEILING)
    return budget.model_copy(update=update)


def accrual_key(accrual_id: str) -> str:
    """What a budget remembers of the accrual `accrual_id`: 64 bits of its digest, 11
    characters (two of 500 remembered ids meet with a chance of about 1 in 10^14)."""
    digest = hashlib.blake2b(accrual_id.encode(), digest_size=8).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _remembered(memory: list[str], key: str) -> list[str]:
    """`memory` with `key` appended; past `ACCRUAL_MEMORY`, only its newer half is kept."""
    grown = [*memory, key]
    return grown if len(grown) <= ACCRUAL_MEMORY else grown[-(ACCRUAL_MEMORY // 2):]


def ledger_start(now: datetime) -> datetime:
    """The earliest start of a window of any kind containing `now`: how far back the ledger
    keeps days (this month's first, or this week's Monday when the week began last month)."""
    return min(window_start(kind, now) for kind in Window)


def _charged(ledger: dict[str, float], at: datetime, amount: float, now: datetime) -> dict[str, float]:
    """`ledger` with `amount` charged on the UTC day of `at`, and the days no window of any
    kind containing `now` reaches dropped."""
    first = ledger_start(now).date().isoformat()
    day = at.astimezone(timezone.utc).date().isoformat()
    kept = {d: usd for d, usd in ledger.items() if d >= first}
    if day >= first:
        kept[day] = _usd(kept.get(day, 0.0) + amount)
    return kept


def estimate(budget: Budget | None, estimated_cost_usd: float | None) -> float:
    """What a claim of a job estimated at `estimated_cost_usd` reserves under `budget`: its own
    estimate, else the budget's default; 0 (nothing to reserve) without a ceiling."""
    if budget is None or budget.ceiling_usd is None:
        return 0.0
    if estimated_cost_usd is not None:
        return estimated_cost_usd
    return budget.default_estimate_usd or 0.0


def reserve(budget: Budget, claim: str, run_id: str, amount: float, now: datetime) -> Budget:
    """Hold `amount` of the ceiling for the claim `claim` (its lease id) about to start run
    `run_id`; `BudgetExhausted` if it does not fit. Reserving the same claim again replaces it."""
    others = sum(r["amountUsd"] for k, r in budget.reservations.items() if k != claim)
    if budget.ceiling_usd is not None and _usd(budget.spent_usd + others + amount) > budget.ceiling_usd:
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
