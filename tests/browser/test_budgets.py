"""Budgets from the browser: Pause and Resume change the product's budget, the settings form
changes its ceiling, window and default estimate (keeping what it shows), and with budgets off every page shows an empty state."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from fleetclient import errors
from tests.browser import ui


def test_pause_then_resume_change_the_budget(operator_page, fleet, product):
    fleet.client.put_budget(product, 40.0, "daily")

    # When the operator pauses the product's budget with a reason
    page = operator_page
    page.goto(ui.BUDGETS)
    budget = ui.region(page, product)
    budget.get_by_label("Reason").fill("release freeze")
    budget.get_by_role("button", name="Pause", exact=True).click()
    ui.confirm(page, f"Pause spending on {product}?")

    # Then the page shows who paused it and why, and the API says it is paused
    budget = ui.region(page, product)
    expect(budget).to_contain_text(re.compile(r"Paused by olive: release freeze"))
    expect(budget.get_by_role("button", name="Resume", exact=True)).to_be_visible()
    expect(budget.get_by_role("button", name="Pause", exact=True)).to_have_count(0)
    assert fleet.client.get_budget(product).paused is True

    # When they resume it
    budget.get_by_role("button", name="Resume", exact=True).click()
    ui.confirm(page, f"Resume spending on {product}?")

    # Then it runs again
    budget = ui.region(page, product)
    expect(budget).to_contain_text("Running")
    expect(budget.get_by_role("button", name="Pause", exact=True)).to_be_visible()
    assert fleet.client.get_budget(product).paused is False


def test_a_budget_resumed_at_its_ceiling_says_claims_are_still_refused(operator_page, fleet, product):
    # Given a product whose spend reached its ceiling, resumed by hand
    fleet.client.put_budget(product, 1.0, "daily")
    fleet.client.submit_job(product_id=product, idempotency_key="dear", title="Dear")
    claimed = fleet.client.claim("f-dear", product)
    fleet.client.release_lease(claimed.job.id, claimed.lease.lease_id, stage="shipped", insights={"costUsd": 2.5})
    assert fleet.client.resume_budget(product).paused is False

    # When the operator opens the budgets page
    page = operator_page
    page.goto(ui.BUDGETS)

    # Then the budget does not read as running: claims stay refused while spend is at the ceiling
    budget = ui.region(page, product)
    expect(budget).to_contain_text("Claims refused: spend is at the ceiling")
    expect(budget).not_to_contain_text("Running")


def test_save_changes_the_ceiling_and_the_window(operator_page, fleet, product):
    fleet.client.put_budget(product, 40.0, "daily")

    page = operator_page
    page.goto(ui.BUDGETS)
    budget = ui.region(page, product)
    ui.fill(budget, "Ceiling (USD)", "75")
    ui.fill(budget, "Window", "monthly")
    budget.get_by_role("button", name="Save", exact=True).click()

    expect(ui.region(page, product)).to_contain_text(re.compile(r"ceiling \$75(\.00)?"))
    saved = fleet.client.get_budget(product)
    assert (saved.ceiling_usd, saved.window.value) == (75.0, "monthly")


def test_a_save_keeps_the_default_estimate_and_an_emptied_field_clears_it(operator_page, fleet, product):
    fleet.client.put_budget(product, 40.0, "daily", default_estimate_usd=2.5)

    # When the operator saves a new ceiling, leaving the default estimate as the form shows it
    page = operator_page
    page.goto(ui.BUDGETS)
    budget = ui.region(page, product)
    expect(budget.get_by_label("Default estimate (USD)")).to_have_value("2.5")
    expect(budget).to_contain_text(re.compile(r"\$2\.50? reserved for each claimed job that names no cost"))
    ui.fill(budget, "Ceiling (USD)", "60")
    budget.get_by_role("button", name="Save", exact=True).click()

    # Then the ceiling changed and the default estimate is kept
    expect(ui.region(page, product)).to_contain_text(re.compile(r"ceiling \$60(\.00)?"))
    assert (fleet.client.get_budget(product).ceiling_usd, fleet.client.get_budget(product).default_estimate_usd) == (60.0, 2.5)

    # When they empty the field and save, Then jobs that name no cost reserve nothing again
    budget = ui.region(page, product)
    ui.fill(budget, "Default estimate (USD)", "")
    budget.get_by_role("button", name="Save", exact=True).click()
    expect(ui.region(page, product)).to_contain_text("a job that names no cost reserves nothing")
    assert fleet.client.get_budget(product).default_estimate_usd is None


def test_set_a_budget_for_a_product_with_none_yet(operator_page, fleet, product):
    page = operator_page
    page.goto(ui.BUDGETS)
    form = ui.region(page, "Set a budget")
    ui.fill(form, "Product", product)
    ui.fill(form, "Ceiling (USD)", "12.5")
    ui.fill(form, "Window", "weekly")
    ui.fill(form, "Default estimate (USD)", "1.25")
    form.get_by_role("button", name="Save", exact=True).click()

    expect(ui.region(page, product)).to_contain_text(re.compile(r"ceiling \$12\.50?"))
    saved = fleet.client.get_budget(product)
    assert (saved.ceiling_usd, saved.window.value, saved.default_estimate_usd) == (12.5, "weekly", 1.25)


def test_set_a_budget_for_a_product_that_has_one_keeps_its_window_and_default_estimate_unless_named(
    operator_page, fleet, product
):
    fleet.client.put_budget(product, 40.0, "weekly", default_estimate_usd=2.5)

    # When the operator names the product in the "Set a budget" form, which shows no default
    page = operator_page
    page.goto(ui.BUDGETS)
    form = ui.region(page, "Set a budget")
    ui.fill(form, "Product", product)
    ui.fill(form, "Ceiling (USD)", "30")
    form.get_by_role("button", name="Save", exact=True).click()

    # Then the ceiling changed, and the window and default estimate the form did not show are kept
    expect(ui.region(page, product)).to_contain_text(re.compile(r"ceiling \$30(\.00)?"))
    saved = fleet.client.get_budget(product)
    assert (saved.ceiling_usd, saved.window.value, saved.default_estimate_usd) == (30.0, "weekly", 2.5)


def test_with_budgets_off_the_pages_show_an_empty_state(open_page, fleet_budgets_off):
    with pytest.raises(errors.FeatureDisabled):  # what the page degrades from
        fleet_budgets_off.client.get_budget("anything")
    page = ui.signed_in(open_page(fleet_budgets_off), fleet_budgets_off.admin_token)

    answer = page.goto(ui.BUDGETS)

    assert answer.status == 200
    expect(page.get_by_role("heading", level=1)).to_have_text("Budgets")
    expect(page.locator("main")).to_contain_text("Budgets are off")
    expect(page.get_by_role("button", name="Pause", exact=True)).to_have_count(0)
    page.goto(ui.OVERVIEW)
    expect(page.locator("main")).to_contain_text("Budgets are off")
