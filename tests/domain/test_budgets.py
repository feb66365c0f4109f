"""Budgets (`FLEET_BUDGETS`): a USD ceiling per UTC calendar window per product. Claims check
the budget first and scan no jobs when it refuses; spend reaching the ceiling pauses it; a new
window (or a higher ceiling) lifts that automatic pause, never a manual one; estimated costs of
claimed runs are reserved so a burst of claims cannot overshoot."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from fleet import budget_rules, budgets, claims, clock as clocks, errors, store as store_port, sweep
from fleet.budgets import Budget, PausedBy, Window
from fleet.context import Context
from fleet.jobs import Job
from fleet.stages import ClaimReason, Stage

from fleet.testing import LEASE_SECONDS, PRODUCT, T0, World, at, flags_on

#: Budgets and preemption on for every world here.
pytestmark = pytest.mark.settings(flags_on())

NOW = at(0)


def utc(text: str) -> datetime:
    return clocks.parse(text)


def budget_value(
    *,
    ceiling: float | None = 10.0,
    spent: float = 0.0,
    window: Window = Window.MONTHLY,
    window_start: str = "2026-01-01T00:00:00Z",
    paused_by: PausedBy | None = None,
    reservations: dict[str, float] | None = None,  # claim (its lease id) -> amount held
    accruals: list[str] = (),
) -> Budget:
    """A budget as a value, never stored: for the pure rules."""
    return Budget(
        id=PRODUCT,
        product_id=PRODUCT,
        ceiling_usd=ceiling,
        window=window,
        window_start=utc(window_start),
        spent_usd=spent,
        paused=paused_by is not None,
        paused_by=paused_by,
        reservations={
            claim: {"amountUsd": amount, "at": T0, "runId": f"job:{claim}#1"} for claim, amount in (reservations or {}).items()
        },
        accruals=list(accruals),
        updated_at=NOW,
    )


# Windows: UTC calendar days, weeks from Monday, months from the 1st


@pytest.mark.parametrize(
    "window, now, start",
    [
        (Window.DAILY, "2026-01-05T09:00:00Z", "2026-01-05T00:00:00Z"),
        (Window.DAILY, "2026-01-05T00:00:00Z", "2026-01-05T00:00:00Z"),  # the boundary opens the window
        (Window.DAILY, "2024-02-29T23:59:59.999Z", "2024-02-29T00:00:00Z"),  # leap day
        (Window.DAILY, "2026-01-01T01:00:00+02:00", "2025-12-31T00:00:00Z"),  # 23:00 UTC on New Year's Eve
        (Window.WEEKLY, "2026-01-05T09:00:00Z", "2026-01-05T00:00:00Z"),  # a Monday is its own start
        (Window.WEEKLY, "2026-01-04T23:59:59Z", "2025-12-29T00:00:00Z"),  # Sunday: back 6 days, across the year
        (Window.WEEKLY, "2024-02-29T12:00:00Z", "2024-02-26T00:00:00Z"),  # Thursday of a leap February
        (Window.WEEKLY, "2024-03-03T12:00:00Z", "2024-02-26T00:00:00Z"),  # Sunday after: same week
        (Window.MONTHLY, "2026-01-31T23:59:59.999Z", "2026-01-01T00:00:00Z"),
        (Window.MONTHLY, "2024-02-29T10:00:00Z", "2024-02-01T00:00:00Z"),
        (Window.MONTHLY, "2026-03-01T00:00:00Z", "2026-03-01T00:00:00Z"),
        (Window.MONTHLY, "2026-01-01T00:30:00+01:00", "2025-12-01T00:00:00Z"),  # still December in UTC
    ],
)
def test_windows_are_utc_calendar_windows(window, now, start):
    assert budget_rules.window_start(window, utc(now)) == utc(start)


@pytest.mark.parametrize(
    "window, window_start, now",
    [
        (Window.DAILY, "2026-01-05T00:00:00Z", "2026-01-05T23:59:59.999Z"),
        (Window.WEEKLY, "2026-01-05T00:00:00Z", "2026-01-11T23:59:59Z"),  # Sunday night, same week
        (Window.MONTHLY, "2024-02-01T00:00:00Z", "2024-02-29T23:59:59Z"),
    ],
)
def test_within_its_window_a_budget_is_unchanged(window, window_start, now):
    budget = budget_value(window=window, window_start=window_start, spent=10.0, paused_by=PausedBy.CEILING)
    assert budget_rules.rolled(budget, utc(now)) is budget


@pytest.mark.parametrize(
    "paused_by, paused_after",
    [
        (None, False),
        (PausedBy.CEILING, False),  # a new window lifts the ceiling's pause
        (PausedBy.MANUAL, True),  # an operator's pause stays until they resume
    ],
)
@pytest.mark.parametrize(
    "window, window_start, now, new_start",
    [
        (Window.DAILY, "2026-01-05T00:00:00Z", "2026-01-06T00:00:00Z", "2026-01-06T00:00:00Z"),
        (Window.WEEKLY, "2026-01-05T00:00:00Z", "2026-01-12T00:00:00Z", "2026-01-12T00:00:00Z"),
        (Window.MONTHLY, "2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z", "2024-03-01T00:00:00Z"),
        (Window.MONTHLY, "2025-11-01T00:00:00Z", "2026-01-05T09:00:00Z", "2026-01-01T00:00:00Z"),  # months skipped
    ],
)
def test_an_elapsed_window_rolls(paused_by, paused_after, window, window_start, now, new_start):
    # Given a budget that spent its 10 of 10 in the last window
    budget = budget_value(window=window, window_start=window_start, spent=10.0, paused_by=paused_by, accruals=["r#1"])
    # When it is read in the next window
    fresh = budget_rules.rolled(budget, utc(now))
    # Then spend starts over in the new window, and only a manual pause survives
    assert (fresh.window_start, fresh.spent_usd) == (utc(new_start), 0.0)
    assert fresh.paused == paused_after
    assert fresh.paused_by == (PausedBy.MANUAL if paused_after else None)
    # and it still remembers what it counted, so a late replay cannot count it again
    assert fresh.counted("r#1")


@pytest.mark.parametrize(
    "budget, reason",
    [
        (None, None),  # a product with no budget has no ceiling
        (budget_value(ceiling=None, spent=1e6), None),  # spend tracked, nothing enforced
        (budget_value(spent=9.99), None),  # 9.99 < 10
        (budget_value(spent=10.0), "budget_exceeded"),  # 10 >= 10: equality is exceeded
        (budget_value(spent=12.5), "budget_exceeded"),
        (budget_value(ceiling=0.0), "budget_exceeded"),  # 0 >= 0: a zero ceiling allows nothing
        (budget_value(paused_by=PausedBy.MANUAL), "budget_paused"),
        (budget_value(spent=10.0, paused_by=PausedBy.CEILING), "budget_paused"),  # paused first
    ],
)
def test_refusal_reasons(budget, reason):
    assert budget_rules.refusal(budget) == reason


# Accrual: once per run id; reaching the ceiling pauses


@pytest.mark.parametrize(
    "ceiling, spent, amount, paused",
    [
        (10.0, 6.0, 3.0, False),  # 6 + 3 = 9 < 10
        (10.0, 6.0, 4.0, True),  # 6 + 4 = 10 >= 10: equality pauses
        (10.0, 6.0, 5.5, True),  # 11.5 >= 10
        (None, 6.0, 1e6, False),  # no ceiling: never pauses
        (0.0, 0.0, 0.0, True),  # 0 >= 0
    ],
)
def test_accrue_adds_once_and_pauses_at_the_ceiling(ceiling, spent, amount, paused):
    budget = budget_value(ceiling=ceiling, spent=spent)
    accrued = budget_rules.accrue(budget, "job#1", amount, NOW)
    assert accrued.spent_usd == spent + amount
    assert accrued.counted("job#1") and not accrued.counted("job#2")
    assert (accrued.paused, accrued.paused_by) == ((True, PausedBy.CEILING) if paused else (False, None))
    # A replay of the same run adds nothing
    assert budget_rules.accrue(accrued, "job#1", amount, NOW) is None


def test_accrue_keeps_a_manual_pause_manual():
    budget = budget_value(spent=9.0, paused_by=PausedBy.MANUAL)
    accrued = budget_rules.accrue(budget, "job#1", 5.0, NOW)
    assert (accrued.paused, accrued.paused_by) == (True, PausedBy.MANUAL)


def test_accrue_settles_the_runs_reservation():
    # Given run job#1's claim (lease-1) held 4, and another claim holds 2
    budget = budget_value(reservations={"lease-1": 4.0, "lease-2": 2.0})
    # When the run ends having cost 3, Then 3 is spent and its hold gone: 2 still held
    accrued = budget_rules.accrue(budget, "job#1", 3.0, NOW, reservation="lease-1")
    assert (accrued.spent_usd, accrued.reserved_usd) == (3.0, 2.0)


@pytest.mark.parametrize(
    "ceiling, spent, reserved, amount, fits",
    [
        (10.0, 0.0, 0.0, 10.0, True),  # 0 + 0 + 10 = 10: not over
        (10.0, 5.0, 4.0, 1.0, True),  # 5 + 4 + 1 = 10
        (10.0, 5.0, 4.0, 2.0, False),  # 5 + 4 + 2 = 11 > 10
        (10.0, 0.0, 0.0, 10.01, False),
        (None, 1e6, 0.0, 1e6, True),  # no ceiling: anything fits
    ],
)
def test_reserve_refuses_what_would_go_over_the_ceiling(ceiling, spent, reserved, amount, fits):
    budget = budget_value(ceiling=ceiling, spent=spent, reservations={"lease-0": reserved} if reserved else {})
    if fits:
        held = budget_rules.reserve(budget, "lease-1", "job#1", amount, NOW)
        assert held.reserved_usd == reserved + amount
        assert held.reservations["lease-1"] == {"amountUsd": amount, "at": T0, "runId": "job#1"}
    else:
        with pytest.raises(budget_rules.BudgetExhausted):
            budget_rules.reserve(budget, "lease-1", "job#1", amount, NOW)


def test_reserving_for_the_same_claim_again_replaces_its_reservation():
    # Given claim lease-1 already holds 6 of a 10 ceiling (a retried reservation)
    budget = budget_value(ceiling=10.0, reservations={"lease-1": 6.0})
    # When the same claim reserves its 6 again, Then it replaces the old hold: 0 + 6 <= 10
    assert budget_rules.reserve(budget, "lease-1", "job#1", 6.0, NOW).reserved_usd == 6.0
    # while another claim's 6 would not fit: 6 + 6 > 10
    with pytest.raises(budget_rules.BudgetExhausted):
        budget_rules.reserve(budget, "lease-2", "job#1", 6.0, NOW)


def test_release_drops_a_reservation_once():
    budget = budget_value(reservations={"lease-1": 4.0})
    released = budget_rules.release(budget, "lease-1", NOW)
    assert released.reservations == {}
    assert budget_rules.release(released, "lease-1", NOW) is None


# Use cases over the store


def test_put_creates_a_budget_and_tells_idle_factories(world):
    version = world.version()
    budget = world.put_budget(100.0, "weekly")
    assert (budget.ceiling_usd, budget.window, budget.spent_usd, budget.paused) == (100.0, Window.WEEKLY, 0.0, False)
    assert budget.window_start == utc("2026-01-05T00:00:00Z")  # T0 is a Monday
    assert world.version() == version + 1


def exhaust(world, ceiling: float = 10.0, spent: float = 10.0) -> None:
    """Put a ceiling and ship a run that cost `spent`."""
    world.put_budget(ceiling)
    job = world.running_job(stage="testing")
    world.patch(job, "shipped", insights={"costUsd": spent})


@pytest.mark.parametrize(
    "new_ceiling, lifted",
    [
        (12.0, True),  # 10 spent < 12: the automatic pause lifts
        (10.0, False),  # 10 spent = 10: still at the ceiling
        (8.0, False),
    ],
)
def test_putting_the_ceiling_above_spend_lifts_an_automatic_pause(world, new_ceiling, lifted):
    # Given spend reached the ceiling and paused the budget
    exhaust(world)
    assert (world.budget().paused, world.budget().paused_by) == (True, PausedBy.CEILING)
    world.submit_job("waiting")
    version = world.version()
    # When the ceiling is PUT
    budget = world.put_budget(new_ceiling)
    # Then the pause lifts only if spend is now below it, and idle factories hear of it
    assert budget.paused == (not lifted)
    assert world.version() == version + (1 if lifted else 0)
    assert (world.claim().job is not None) == lifted


def test_putting_a_ceiling_does_not_lift_a_manual_pause(world):
    world.put_budget(10.0)
    budgets.pause(world.ctx, PRODUCT)
    budget = world.put_budget(50.0)
    assert (budget.paused, budget.paused_by) == (True, PausedBy.MANUAL)


def test_lowering_the_ceiling_to_spend_pauses(world):
    exhaust(world, ceiling=100.0, spent=10.0)
    assert world.budget().paused is False
    budget = world.put_budget(10.0)  # 10 >= 10
    assert (budget.paused, budget.paused_by) == (True, PausedBy.CEILING)


def test_pause_and_resume(world):
    # Given a product with a budget and a queued job
    world.put_budget(10.0)
    job = world.submit_job()
    # When an operator pauses it, Then claims are refused and the job waits
    paused = budgets.pause(world.ctx, PRODUCT)
    assert (paused.paused, paused.paused_by) == (True, PausedBy.MANUAL)
    assert world.claim().reason == "budget_paused"
    # When they resume, Then idle factories hear of it and the job is claimed
    version = world.version()
    resumed = budgets.resume(world.ctx, PRODUCT)
    assert (resumed.paused, resumed.paused_by) == (False, None)
    assert world.version() == version + 1
    assert world.claim().job.id == job.id


def test_resume_does_not_lift_the_ceiling(world):
    # Given a product that spent its ceiling (auto-paused), then was resumed
    exhaust(world)
    world.submit_job("waiting")
    resumed = budgets.resume(world.ctx, PRODUCT)
    # Then it is not paused, but claims stay refused while spend >= ceiling
    assert resumed.paused is False
    assert world.claim().reason == "budget_exceeded"


@pytest.mark.parametrize("use_case", [budgets.pause, budgets.resume])
def test_pausing_a_product_without_a_budget_is_not_found(world, use_case):
    with pytest.raises(errors.NotFound):
        use_case(world.ctx, "nobody")


@pytest.mark.parametrize(
    "state, reason",
    [
        ("manual", "budget_paused"),
        ("exceeded", "budget_exceeded"),  # resumed, but 10 spent >= 10
        ("auto", "budget_paused"),  # spend reached the ceiling: paused by it
    ],
)
def test_claim_checks_the_budget_first_and_scans_no_jobs(world, state, reason):
    # Given a refusing budget and plenty of queued work
    if state == "manual":
        world.put_budget(10.0)
        budgets.pause(world.ctx, PRODUCT)
    else:
        exhaust(world)
        if state == "exceeded":
            budgets.resume(world.ctx, PRODUCT)
    for _ in range(3):
        world.submit_job()
    counting = store_port.CountingStore(world.store.inner)
    ctx = Context(counting, world.clock, world.ctx.settings)
    # When a factory claims
    claimed = claims.claim_next(ctx, claims.ClaimRequest("factory-1", PRODUCT))
    # Then no job, why, and the only store call was one point read of the budget
    assert (claimed.job, claimed.reason) == (None, reason)
    assert dict(counting.calls) == {"read:budgets": 1}


def test_claiming_a_named_job_checks_the_budget_first(world):
    world.put_budget(10.0)
    job = world.submit_job()
    budgets.pause(world.ctx, PRODUCT)
    with pytest.raises(errors.NotClaimable) as refused:
        world.claim_job(job)
    assert refused.value.extra["reason"] == "budget_paused"
    assert world.job(job).stage == Stage.QUEUED


def test_with_the_flag_off_budgets_are_not_enforced(world):
    # Given a product paused by a coordinator with budgets on
    world.put_budget(10.0)
    budgets.pause(world.ctx, PRODUCT)
    job = world.submit_job()
    # When a coordinator with the flag off serves the claim, Then the budget is not enforced: the job is claimed
    off = world.with_settings(budgets=False)
    assert off.claim().job.id == job.id


def test_reads_treat_an_elapsed_window_as_rolled_before_the_timer(world, clock):
    # Given January's spend hit the ceiling and paused the budget
    exhaust(world)
    job = world.submit_job("february-work")
    assert world.claim().reason == "budget_paused"
    # When February begins and no timer has run yet
    clock.set("2026-02-01T00:00:00.000Z")
    # Then reads see a fresh window, and claims go ahead
    budget = world.budget()
    assert (budget.window_start, budget.spent_usd, budget.paused) == (utc("2026-02-01T00:00:00Z"), 0.0, False)
    assert world.stored_budget().spent_usd == 10.0  # nothing was written by the read
    assert world.claim().job.id == job.id


def test_spend_after_the_boundary_lands_in_the_new_window(world, clock):
    # Given January's spend hit the ceiling (10 of 10), and no timer ran at the boundary
    exhaust(world)
    clock.set("2026-02-01T00:05:00.000Z")
    # When a February run ships having cost 3
    world.submit_job("february-work")
    job = world.claim().job
    world.patch(world.patch(job, "testing"), "shipped", insights={"costUsd": 3.0})
    # Then February's window holds 3, not 10 + 3, and the write persisted the roll
    stored = world.stored_budget()
    assert (stored.window_start, stored.spent_usd, stored.paused) == (utc("2026-02-01T00:00:00Z"), 3.0, False)


def test_a_manual_pause_outlives_the_window(world, clock):
    world.put_budget(10.0)
    budgets.pause(world.ctx, PRODUCT)
    world.submit_job()
    clock.set("2026-02-01T00:00:00.000Z")
    assert world.claim().reason == "budget_paused"


def ship(world: World, key: str, cost: float) -> None:
    world.release(world.running_job(key), result="shipped", insights={"costUsd": cost})


@pytest.mark.parametrize(
    "before, after, spent",
    [
        ("monthly", "daily", 30.0),  # only today's 30; the 50 + 50 of three days ago is another day
        ("daily", "monthly", 130.0),  # this month's 50 + 50 + 30, not just today's
    ],
)
def test_changing_the_window_recomputes_spend_from_the_ledger(world, clock, before, after, spent):
    # Regression: a change of window used to keep the old window's spend.
    # Given runs that cost 50 + 50 on Monday and 30 on Thursday of the same month
    world.put_budget(1000.0, before)
    ship(world, "monday-1", 50.0)
    ship(world, "monday-2", 50.0)
    clock.advance(days=3)
    ship(world, "thursday", 30.0)
    # When the window changes (under a ceiling of 100)
    budget = world.put_budget(100.0, after)
    # Then the new window's spend is what was accrued within it
    assert (budget.window.value, budget.spent_usd, budget.paused) == (after, spent, spent >= 100.0)
    assert world.budget().spent_usd == spent


def test_a_change_of_window_is_exact_however_many_runs_came_before():
    # Regression: the ledger kept the last 500 accruals, so a busy month's spend was
    # recomputed from only part of it.
    # Given 700 runs at 1.0 over the first two weeks of a month (Friday 1 to Thursday 14)
    budget = budget_value(ceiling=None, window_start="2026-05-01T00:00:00Z")
    for n in range(700):
        at_ = utc("2026-05-01T06:00:00Z") + timedelta(minutes=n * 27)
        budget = budget_rules.accrue(budget, f"job-{n}#1", 1.0, at_, ended_at=at_)
    # Then the ledger is a sum per day, and a weekly window from Monday 11 has exactly its days
    assert len(budget.ledger) == 14
    now = utc("2026-05-14T12:00:00Z")
    week = budget_rules.window_start(Window.WEEKLY, now)
    in_week = sum(1 for n in range(700) if utc("2026-05-01T06:00:00Z") + timedelta(minutes=n * 27) >= week)
    assert budget.charged_since(week) == in_week and budget.charged_since(utc("2026-05-01T00:00:00Z")) == 700.0


def test_the_ledger_keeps_only_the_days_a_window_can_reach():
    # Given a run charged on the last day of April, and one charged on Wednesday 6 May
    budget = budget_value(ceiling=None, window_start="2026-04-01T00:00:00Z")
    budget = budget_rules.accrue(budget, "a#1", 2.0, utc("2026-04-30T10:00:00Z"))
    budget = budget_rules.rolled(budget, utc("2026-05-06T10:00:00Z"))
    budget = budget_rules.accrue(budget, "b#1", 3.0, utc("2026-05-06T10:00:00Z"))
    # Then April 30 is gone: no window of any kind containing May 6 reaches it (the week began on Monday 4)
    assert budget.ledger == {"2026-05-06": 3.0}
    # while in a week that began in April (Friday 1 May: the week began Monday 27 April) it stays
    early = budget_value(ceiling=None, window_start="2026-04-01T00:00:00Z")
    early = budget_rules.accrue(early, "a#1", 2.0, utc("2026-04-28T10:00:00Z"))
    early = budget_rules.accrue(budget_rules.rolled(early, utc("2026-05-01T10:00:00Z")), "b#1", 3.0, utc("2026-05-01T10:00:00Z"))
    assert early.ledger == {"2026-04-28": 2.0, "2026-05-01": 3.0}


def test_the_accrual_memory_is_small_and_grows_by_appends_between_cuts():
    # Given 1,000 accruals
    budget = budget_value(ceiling=None)
    grown = 0
    for n in range(1000):
        after = budget_rules.accrue(budget, f"acme:job-{n:04}#1", 0.25, NOW)
        ops = store_port.diff(budget.to_doc(), after.to_doc())
        memory = [op for op in ops if op.field == "accruals"]
        grown += [op.kind for op in memory] == ["append"]
        budget = after
    # Then it remembers at least the last 250 and at most 500, each in 11 characters
    assert 250 <= len(budget.accruals) <= budget_rules.ACCRUAL_MEMORY
    assert all(budget.counted(f"acme:job-{n:04}#1") for n in range(750, 1000))
    assert not budget.counted("acme:job-0000#1") and not budget.counted("acme:job-1000#1")
    assert {len(key) for key in budget.accruals} == {11}
    # and all but the two cuts (at the 501st accrual and the 752nd) were a patch appending one key
    assert grown == 1000 - 2
    # and a replay of any of the last 250 adds nothing
    assert budget_rules.accrue(budget, "acme:job-0999#1", 0.25, NOW) is None


def test_a_budget_written_before_the_lean_layout_is_read_and_still_recognises_its_accruals():
    # Given a document as an older release wrote it: accrual ids whole, the ledger as pairs
    doc = budget_value(ceiling=None).to_doc() | {
        "accruals": ["acme:old#1"],
        "ledger": [["2026-01-05T09:00:00.000Z", 1.5], ["2026-01-05T10:00:00.000Z", 2.0], ["2026-01-04T10:00:00.000Z", 1.0]],
    }
    budget = Budget.from_doc(doc)
    # Then its ledger is summed per day, and its old accrual is not counted again
    assert budget.ledger == {"2026-01-04": 1.0, "2026-01-05": 3.5}
    assert budget_rules.accrue(budget, "acme:old#1", 1.5, NOW) is None
    assert budget_rules.accrue(budget, "acme:new#1", 1.5, NOW).counted("acme:new#1")


def test_a_reservation_is_a_field_of_its_own_so_its_write_names_only_it():
    # Given a budget holding 50 reservations
    budget = budget_value(ceiling=1e6, reservations={f"lease{n:02}": 1.0 for n in range(50)})
    # When a claim reserves, Then its patch sets its own field (and the time), nothing else
    reserved = budget_rules.reserve(budget, "leasenew", "acme:job#1", 2.0, NOW)
    ops = store_port.diff(budget.to_doc(), reserved.to_doc())
    assert ("set", "r_leasenew") in {(op.kind, op.field) for op in ops}
    assert {op.field for op in ops} <= {"r_leasenew", "updatedAt"}
    # and the run's accrual removes that field, appending its key to the memory
    accrued = budget_rules.accrue(reserved, "acme:job#1", 1.5, at(60), reservation="leasenew")
    ops = store_port.diff(reserved.to_doc(), accrued.to_doc())
    assert ("remove", "r_leasenew") in {(op.kind, op.field) for op in ops}
    assert [op.kind for op in ops if op.field == "accruals"] == ["append"]
    assert sum(len(str(op.value)) for op in ops) < 300
    # and the document reads back as it was written
    assert Budget.from_doc(accrued.to_doc()) == accrued


def test_a_budget_with_its_reservations_under_one_field_is_read_as_before():
    # Given a document an older release wrote, its reservations all under `reservations`
    held = {"amountUsd": 4.0, "at": T0, "runId": "acme:j#1"}
    doc = budget_value(ceiling=10.0).to_doc() | {"reservations": {"old-lease": held}}
    budget = Budget.from_doc(doc)
    # Then they are its reservations, and its next write gives each a field of its own
    assert budget.reservations == {"old-lease": held} and budget.reserved_usd == 4.0
    assert Budget.from_doc(doc | {"r_newlease": held}).reserved_usd == 8.0
    assert "reservations" not in budget.to_doc() and budget.to_doc()["r_old-lease"] == held


def test_a_budget_write_is_a_patch_of_what_it_changes(world):
    # Given a busy budget (400 runs accrued)
    world.put_budget(1e6)
    for n in range(400):
        budgets.change(world.ctx, PRODUCT, lambda b, n=n: budget_rules.accrue(b, f"r-{n}#1", 1.0, world.clock.now()))
    counting = store_port.CountingStore(world.store)
    ctx = Context(counting, world.clock, world.ctx.settings)
    # When one more run accrues
    budgets.change(ctx, PRODUCT, lambda b: budget_rules.accrue(b, "r-400#1", 1.0, world.clock.now()))
    # Then it is a read and a patch, never a whole replace of the document
    assert dict(counting.calls) == {"read:budgets": 1, "patch:budgets": 1}
    assert budgets.find(world.ctx, PRODUCT).spent_usd == 401.0


def test_roll_windows_starts_new_windows_at_the_boundary(world, clock):
    # Given a daily budget that spent its ceiling and a monthly one that spent a little
    exhaust(world)
    budgets.put(world.ctx, PRODUCT, 10.0, Window.DAILY)
    budgets.put(world.ctx, "other", 10.0, Window.MONTHLY)
    budgets.change(world.ctx, "other", lambda b: budget_rules.accrue(b, "x#1", 2.0, clock.now()))
    versions = world.version(), world.version("other")
    # When the timer runs one minute into the next day
    clock.set("2026-01-06T00:01:00.000Z")
    rolled = budgets.roll_windows(world.ctx)
    # Then only the daily budget rolled: spend reset, auto-pause lifted, factories told
    assert rolled == 1
    stored = world.stored_budget()
    assert (stored.window_start, stored.spent_usd, stored.paused) == (utc("2026-01-06T00:00:00Z"), 0.0, False)
    assert world.stored_budget("other").spent_usd == 2.0
    assert (world.version(), world.version("other")) == (versions[0] + 1, versions[1])
    # and a second run finds nothing to do
    assert budgets.roll_windows(world.ctx) == 0


# Reservations of estimated cost


def test_a_burst_of_claims_cannot_overshoot_the_ceiling(world):
    # Given a 10-dollar ceiling and three jobs estimated at 4 each
    world.put_budget(10.0)
    jobs = [world.submit_job(f"est-{i}", estimated_cost_usd=4.0) for i in range(3)]
    # When three factories claim at once, Then two fit (4 + 4 = 8) and the third would not (12 > 10)
    outcomes = [world.claim(f"factory-{i}") for i in range(3)]
    assert [c.job is not None for c in outcomes] == [True, True, False]
    assert outcomes[2].reason == "budget_exceeded"
    assert world.budget().reserved_usd == 8.0
    assert sum(world.job(j).stage == Stage.QUEUED for j in jobs) == 1


def test_a_reservation_becomes_spend_when_the_run_ends(world):
    world.put_budget(10.0)
    world.submit_job("a", estimated_cost_usd=4.0)
    world.submit_job("b", estimated_cost_usd=4.0)
    a, b = world.claim().job, world.claim().job
    # When one run ships having cost 3 (less than its estimate)
    world.patch(world.patch(a, "testing"), "shipped", insights={"costUsd": 3.0})
    # Then 3 is spent and only the other estimate is still held
    budget = world.budget()
    assert (budget.spent_usd, budget.reservations.keys()) == (3.0, {b.latest_run.reservation})
    assert budget.reservations[b.latest_run.reservation]["runId"] == b.latest_run.run_id
    # and a run that reports no cost still gives its reservation back when it ends
    world.release(b, result="retry")
    assert (world.budget().spent_usd, world.budget().reserved_usd) == (3.0, 0.0)


def test_a_run_ended_while_its_claim_reserves_has_its_reservation_dropped_by_the_sweep(world, faulty, clock):
    # Given a job with an estimate, cancelled by an operator right after a claim took it and
    # before the claim reserved its estimate (a claim reserves once it has won its job), so
    # the cancel's accrual found no reservation to drop
    world.put_budget(100.0)  # ample room: the claim reserves after its take
    job = world.submit_job("est", estimated_cost_usd=4.0)
    faulty.meanwhile("patch", "jobs", lambda: world.with_settings().act(job, "cancel"))
    # When the claim is answered, Then it took the job before the cancel, whose lease the cancel ended
    claimed = world.claim("factory-1")
    assert claimed.job.id == job.id and world.job(job).stage == Stage.CANCELLED
    with pytest.raises(errors.LeaseLost):
        world.patch(claimed.job, "building")
    # and the reservation that landed after the run's accrual is held until the sweep, a lease
    # term on, drops it (its run ended and accrued: nothing else would give it back)
    assert world.budget().reserved_usd == 4.0
    assert budgets.drop_stale_reservations(world.ctx) == 0
    version = world.version()
    clock.advance(LEASE_SECONDS + 1)
    assert sweep.run(world.ctx)["reservationsDropped"] == 1
    assert world.budget().reservations == {} and world.version() > version


def test_a_claim_that_loses_a_race_leaves_the_winners_reservation(world):
    # Given two factories read the same queued job estimated at 4 (ceiling 20)
    world.put_budget(20.0)
    job = world.submit_job("est", estimated_cost_usd=4.0)
    stale = Job.from_doc(world.store.inner.read("jobs", PRODUCT, job.id))
    # When factory-2 claims it first, and factory-1's take of its stale copy loses
    winner = world.claim_job(job, "factory-2").job
    with pytest.raises(errors.PreconditionFailed):
        claims.take(world.ctx, stale, "factory-1", world.clock.now())
    # Then the winner's run still holds its 4: the in-flight estimate counts against the ceiling
    assert world.budget().reservations.keys() == {winner.latest_run.reservation}
    assert world.budget().reserved_usd == 4.0


@pytest.mark.parametrize("after", [False, True], ids=["refused", "landed-unheard"])
def test_a_claim_whose_reservation_fails_gives_its_job_back(world, faulty, after):
    # Given a claim that took its job, and a store that fails its reservation (refused, or
    # written but its answer lost)
    world.put_budget(100.0)  # ample room: the claim reserves after its take
    job = world.submit_job("est", estimated_cost_usd=4.0)
    faulty.crash("patch", "budgets", after=after)
    version = world.version()
    # When it claims, Then the store's failure is the answer, and it holds no job: the job is
    # back in the queue, attempts unchanged, and nothing is reserved
    with pytest.raises(errors.StoreBusy):
        world.claim()
    back = world.job(job)
    assert (back.stage, back.attempts, back.lease) == (Stage.QUEUED, 0, None)
    assert world.budget().reservations == {} and world.version() > version
    # and the next claim takes it
    assert world.claim().job.id == job.id and world.budget().reserved_usd == 4.0


def test_a_claim_that_died_between_its_take_and_its_reservation_is_repaired_by_the_sweep(world, faulty, clock):
    # Given a claim that took its job, and then neither reserved nor gave it back (a process
    # that died in between is as one whose store failed both)
    world.put_budget(100.0)  # ample room: the claim reserves after its take
    job = world.submit_job("est", estimated_cost_usd=4.0)
    faulty.crash("patch", "budgets")
    faulty.crash("patch", "jobs", nth=2)  # #1 the take, #2 the give-back
    with pytest.raises(errors.StoreBusy):
        world.claim()
    assert world.job(job).stage == Stage.ASSIGNED and world.budget().reservations == {}
    # When its lease expires, Then the sweep requeues the job, and the budget holds nothing for it
    clock.advance(LEASE_SECONDS + 1)
    sweep.run(world.ctx)
    assert world.job(job).stage == Stage.QUEUED and world.budget().reservations == {}
    assert world.claim().job.id == job.id


def test_a_released_reservation_bumps_the_queue_state_so_gated_factories_look_again(world, clock):
    # Given "big" reserved 8 of a ceiling of 10, so "big-2" (also 8) does not fit
    world.put_budget(10.0)
    world.submit_job("big", priority="high", estimated_cost_usd=8.0)
    clock.advance(1)
    big_2 = world.submit_job("big-2", priority="high", estimated_cost_usd=8.0)
    big = world.claim("factory-1").job
    assert world.claim("factory-2").reason == "budget_exceeded"
    version = world.version()
    # When "big" ships having really cost 0.1, giving back its reservation
    world.release(big, result="shipped", insights={"costUsd": 0.1})
    # Then the queue-state moves, and the gated factory now fits big-2: 0.1 + 8 <= 10
    assert world.version() > version
    assert world.budget().reserved_usd == 0.0
    assert world.claim("factory-2").job.id == big_2.id


def test_the_sweep_keeps_the_reservation_of_a_long_running_job(world, clock):
    # Given a claimed job whose factory keeps renewing its lease past a lease term
    world.put_budget(10.0)
    world.submit_job("est", estimated_cost_usd=4.0)
    job = world.claim().job
    for _ in range(3):
        clock.advance(LEASE_SECONDS - 10)
        world.heartbeat("factory-1", running=[job])
    # When the sweep drops stale reservations, Then this one stands: its run started
    assert budgets.drop_stale_reservations(world.ctx) == 0
    assert world.budget().reservations.keys() == {job.latest_run.reservation}


def test_reservations_only_count_against_a_ceiling(world):
    # Given a product without any budget, Then an estimate is not reserved anywhere
    world.submit_job("est", estimated_cost_usd=4.0)
    assert world.claim().job is not None
    assert world.budget() is None


def test_spend_is_tracked_before_a_ceiling_and_a_put_enforces_it(world):
    # Given a product with no budget whose run shipped having cost 2.5
    job = world.running_job(stage="testing")
    world.patch(job, "shipped", insights={"costUsd": 2.5})
    # Then its spend is tracked, in a monthly window, with no ceiling
    tracked = world.budget()
    assert (tracked.ceiling_usd, tracked.window, tracked.spent_usd) == (None, Window.MONTHLY, 2.5)
    assert tracked.window_start == datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert world.claim().reason != "budget_exceeded"
    # When a daily ceiling of 2 is PUT, Then the window is today's and 2.5 >= 2 pauses it
    budget = world.put_budget(2.0, "daily")
    assert (budget.window, budget.window_start) == (Window.DAILY, utc(T0) - timedelta(hours=9))
    assert (budget.paused, budget.paused_by) == (True, PausedBy.CEILING)


# The default estimate: what a job without an estimate of its own reserves


def test_a_default_estimate_holds_the_ceiling_for_jobs_that_name_none(world):
    # Given a 10-dollar ceiling with a default estimate of 4, and three jobs that name no cost
    world.put_budget(10.0, default_estimate=4.0)
    for i in range(3):
        world.submit_job(f"unestimated-{i}")
    # When three factories claim, Then two fit (4 + 4 = 8) and the third would not (12 > 10)
    outcomes = [world.claim(f"factory-{i}") for i in range(3)]
    assert [c.job is not None for c in outcomes] == [True, True, False]
    assert outcomes[2].reason == "budget_exceeded"
    budget = world.budget()
    assert budget.reserved_usd == 8.0
    assert {held["runId"] for held in budget.reservations.values()} == {c.job.latest_run.run_id for c in outcomes[:2]}


def test_a_job_estimated_at_zero_or_at_its_own_cost_is_not_charged_the_default(world):
    # Given a default estimate of 4 under a ceiling of 10, and 9 reserved by a job's own estimate
    world.put_budget(10.0, default_estimate=4.0)
    world.submit_job("own", priority="high", estimated_cost_usd=9.0)
    world.submit_job("free", estimated_cost_usd=0.0)
    world.submit_job("default")
    own = world.claim("factory-1").job
    # When two more factories claim, Then the job estimated at 0 is free; the default does not fit
    free, refused = world.claim("factory-2"), world.claim("factory-3")
    assert (own.idempotency_key, free.job.idempotency_key) == ("own", "free")
    assert free.job.latest_run.reservation is None
    assert refused.reason == "budget_exceeded"
    assert world.budget().reserved_usd == 9.0


def test_a_default_reservation_is_given_back_when_its_run_ends_without_a_cost(world):
    world.put_budget(10.0, default_estimate=4.0)
    world.submit_job("a")
    world.submit_job("b")
    a, b = world.claim("factory-1").job, world.claim("factory-2").job
    assert world.budget().reserved_usd == 8.0
    # When one run ends reporting no cost, and the other ships having cost 1.5
    world.release(a, result="retry")
    world.release(b, result="shipped", insights={"costUsd": 1.5})
    # Then both reservations are gone and only what was reported is spent
    budget = world.budget()
    assert (budget.spent_usd, budget.reserved_usd) == (1.5, 0.0)
    assert world.job(a).accrual_pending is False and world.job(b).accrual_pending is False


def test_a_put_keeps_the_default_estimate_unless_it_names_one(world):
    assert world.put_budget(10.0, default_estimate=4.0).default_estimate_usd == 4.0
    # a put that leaves it out keeps it (a script that only moves the ceiling)
    assert world.put_budget(20.0).default_estimate_usd == 4.0
    # None clears it: jobs without an estimate reserve nothing again
    assert world.put_budget(20.0, default_estimate=None).default_estimate_usd is None
    world.submit_job("unestimated")
    assert world.claim().job.latest_run.reservation is None


@pytest.mark.parametrize(
    "first, then, told",
    [
        ((10.0, 4.0), (10.0, 2.0), True),  # a lower default: more jobs fit
        ((10.0, 4.0), (10.0, None), True),  # no default: every unestimated job fits
        ((10.0, 4.0), (12.0, 4.0), True),  # a higher ceiling: more room
        ((10.0, 4.0), (10.0, 6.0), False),  # a higher default fits fewer
        ((10.0, 4.0), (8.0, 4.0), False),  # a lower ceiling fits fewer
        ((10.0, 4.0), (10.0, 4.0), False),  # unchanged
    ],
)
def test_a_put_that_may_fit_more_claims_tells_idle_factories(world, first, then, told):
    world.put_budget(first[0], default_estimate=first[1])
    version = world.version()
    world.put_budget(then[0], default_estimate=then[1])
    assert (world.version() > version) is told


def test_a_named_claim_reserves_the_default_estimate_too(world):
    # Given a default estimate of 6 under a ceiling of 10, and two jobs that name no cost
    world.put_budget(10.0, default_estimate=6.0)
    first, second = world.submit_job("first"), world.submit_job("second")
    # When factories claim each by name, Then the first reserves 6 and the second does not fit
    assert world.claim_job(first, "factory-1").job.latest_run.reservation is not None
    with pytest.raises(errors.NotClaimable, match="budget_exceeded"):
        world.claim_job(second, "factory-2")
    assert world.budget().reserved_usd == 6.0
    assert world.job(second).stage == Stage.QUEUED


def _preempted(world, job):
    world.heartbeat("factory-1", seat_limit=1, running=[job])
    world.submit_job("urgent", priority="critical", estimated_cost_usd=0.0)
    assert world.claim("factory-1").preempted == [job.id]


@pytest.mark.parametrize(
    "end",
    [
        pytest.param(lambda world, job, clock: (clock.advance(LEASE_SECONDS + 1), sweep.run(world.ctx)), id="expired"),
        pytest.param(lambda world, job, clock: _preempted(world, job), id="preempted"),
        pytest.param(lambda world, job, clock: world.act(job, "cancel"), id="cancelled"),
        pytest.param(lambda world, job, clock: world.act(job, "requeue"), id="requeued"),
        pytest.param(lambda world, job, clock: world.release(job, stage="testing"), id="parked-at-review"),
        pytest.param(lambda world, job, clock: world.release(job, result="failed"), id="failed"),
    ],
)
def test_every_way_a_run_ends_gives_its_default_reservation_back(world, clock, end, request):
    # Given a job that names no cost, claimed under a default estimate of 4
    world.put_budget(10.0, default_estimate=4.0)
    job = world.running_job("unestimated", priority="low")
    assert world.budget().reserved_usd == 4.0
    # When its run ends, however it ends
    end(world, world.job(job), clock)
    assert world.job(job).runs[0].ended_at is not None
    if request.node.callspec.id in ("expired", "preempted", "cancelled", "requeued"):
        # its lease was taken: the room stays held for the late report its factory may still
        # send, a lease term at most, then the sweep gives it back
        assert world.budget().reserved_usd == 4.0
        clock.advance(LEASE_SECONDS + 1)
        sweep.run(world.ctx)
    # Then nothing stays reserved for it
    assert world.budget().reserved_usd == 0.0


def test_a_late_report_cannot_pass_the_ceiling_through_room_its_run_gave_back(world, clock):
    # Regression: an expired run's reservation was given back whole; another claim took the
    # room, and the lost lease's late report then counted on top: 1.5 spent under 1.0
    world.put_budget(1.0)
    for key in ("a", "b", "c"):
        world.submit_job(key, estimated_cost_usd=0.5)
    a = world.claim("factory-1").job
    clock.advance(LEASE_SECONDS + 1)
    sweep.run(world.ctx)  # a's lease expires: its run may still report late
    b = world.claim("factory-2").job  # a again, or b: either way 0.5 reserved for it
    refused = world.claim("factory-3")
    assert (refused.job, refused.reason) == (None, ClaimReason.BUDGET_EXCEEDED)
    # When a's lost lease reports what it cost, its held room goes with it
    world.report(a, a.lease.lease_id, insights={"costUsd": 0.5})
    budget = world.budget()
    assert (budget.spent_usd, budget.reserved_usd) == (0.5, 0.5)  # b's reservation only
    assert world.claim("factory-3").reason == ClaimReason.BUDGET_EXCEEDED
    world.release(b, stage="shipped", insights={"costUsd": 0.5})
    assert world.budget().spent_usd == 1.0  # never past the ceiling


@pytest.mark.parametrize("first_default, ceiling, default", [(None, 10.0, 12.0), (5.0, 4.0, budgets.KEEP)])
def test_a_default_estimate_above_the_ceiling_is_refused_and_nothing_changes(world, first_default, ceiling, default):
    # A default above the ceiling would refuse every job that names no cost while reading as running
    world.put_budget(10.0, default_estimate=first_default)
    with pytest.raises(errors.ValidationFailed) as refused:
        world.put_budget(ceiling, default_estimate=default)
    assert refused.value.errors[0]["field"] == "defaultEstimateUsd"
    assert (world.budget().ceiling_usd, world.budget().default_estimate_usd) == (10.0, first_default)


def test_a_put_that_names_no_window_keeps_the_budgets_and_a_new_budgets_is_monthly(world):
    assert budgets.put(world.ctx, PRODUCT, 10.0).window == Window.MONTHLY
    world.put_budget(10.0, "daily")
    kept = budgets.put(world.ctx, PRODUCT, 12.0)
    assert (kept.window, kept.ceiling_usd) == (Window.DAILY, 12.0)


@pytest.mark.parametrize(
    "spent_reserved, default, waits",
    [
        (8.0, 4.0, True),  # 2 left, under the default: jobs that name no cost wait
        (6.0, 4.0, False),  # 4 left: one more fits
        (8.0, None, False),  # no default: they reserve nothing, and fit
    ],
)
def test_a_budget_says_when_jobs_that_name_no_cost_wait(world, spent_reserved, default, waits):
    world.put_budget(10.0, default_estimate=default)
    world.submit_job("own", estimated_cost_usd=spent_reserved)
    world.claim()
    view = world.budget().public()
    assert view.refusal is None  # claims of jobs estimated lower may still be made
    assert view.unestimated_wait is waits
