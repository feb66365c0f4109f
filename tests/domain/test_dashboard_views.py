"""What the dashboard's views read, beyond the use cases they call (`dashboard/views.py`)."""
from __future__ import annotations

from datetime import timedelta

import pytest

from dashboard import views
from fleet.testing import flags_on


def test_a_job_page_shows_when_the_lease_ends_as_its_factorys_heartbeats_carry_it(world, running_job, clock):
    # Given a running job whose factory heartbeats it past its own expiry
    job = running_job("job")
    own = job.lease.expires_at
    clock.advance(200)
    world.heartbeat("factory-1", running=[job])
    # When the job's page is read, Then its lease ends a term after that heartbeat, not at the
    # job's own expiry
    shown = views.detail(world.ctx, job.id)
    assert world.job(job).lease.expires_at == own
    assert shown.lease_until == own + timedelta(seconds=200)


def test_a_job_page_of_a_job_without_a_lease_shows_none(world, submit_job):
    assert views.detail(world.ctx, submit_job("job").id).lease_until is None


def test_a_job_page_shows_no_later_time_than_its_own_once_its_factory_stops_listing_the_lease(world, running_job, clock):
    # Given a running job whose factory heartbeat it on, then heartbeat without it
    job = running_job("job")
    own = job.lease.expires_at
    clock.advance(200)
    world.heartbeat("factory-1", running=[job])
    clock.advance(10)
    world.heartbeat("factory-1", running=[])
    # When the job's page is read, Then the factory's later leaseUntil is not the job's
    assert views.detail(world.ctx, job.id).lease_until == own


def test_a_job_page_takes_no_time_from_another_factorys_document(world, running_job, clock):
    # Given a job held by factory-1, and factory-2 heartbeating later (listing nothing of it)
    job = running_job("job")
    own = job.lease.expires_at
    clock.advance(200)
    world.heartbeat("factory-2", running=[])
    assert views.detail(world.ctx, job.id).lease_until == own


def test_a_job_page_shows_a_runs_cost_reported_late_by_its_lost_lease(world, running_job):
    job = running_job("job")
    lease = job.lease.lease_id
    world.patch(job, "building", insights={"costUsd": 0.5})
    world.act(world.job(job), "requeue")
    world.report(world.job(job), lease, insights={"costUsd": 1.5}, pr_url="https://example.com/pr/9")

    run = views.detail(world.ctx, job.id).runs[0]
    assert (run["cost"], run["late"], run["pr_url"]) == (1.5, True, "https://example.com/pr/9")


@pytest.mark.settings(flags_on())
def test_the_overview_and_the_budget_page_read_every_budget_in_one_query(world, faulty, clock):
    # Given three products with budgets, one of them spending
    for product in ("p", "q", "r"):
        world.put_budget(100.0, product_id=product)
        world.submit_job(f"job-{product}", product_id=product)
    world.release(world.claim(product_id="q").job, result="shipped", insights={"costUsd": 2.5})
    faulty.calls.clear()
    # When the overview and the budget page are read
    overview = views.overview(world.ctx)
    page = views.budget_page(world.ctx)
    # Then each listed the budgets once, and point-read none of them
    assert faulty.calls["query:budgets"] == 2 and faulty.calls["read:budgets"] == 0
    # and both show each product's budget as a read would
    assert {p: b.spent_usd for p, b in overview.spend.items()} == {"p": 0.0, "q": 2.5, "r": 0.0}
    assert page.budgets == {p: world.budget(p).public() for p in ("p", "q", "r")}


@pytest.mark.settings(flags_on())
def test_a_budget_listing_cut_short_reads_the_budgets_it_did_not_list(world, faulty):
    # Given a product with a budget that a listing did not reach
    world.put_budget(10.0, product_id="p")
    faulty.calls.clear()
    # Then a listing cut short reads it, and a complete one knows there is none to read
    assert views.Budgeted({}, complete=False).of(world.ctx, "p").ceiling_usd == 10.0
    assert faulty.calls["read:budgets"] == 1
    assert views.Budgeted({}, complete=True).of(world.ctx, "p") is None
    # and the listing is complete when the query had no more to give
    listed = views.Budgeted.listed(world.ctx)
    assert listed.complete and set(listed.budgets) == {"p"}


@pytest.mark.settings(flags_on())
def test_a_principal_limited_to_some_products_sees_their_budgets_beyond_the_fleets_first_page(world, monkeypatch):
    # Regression: the budget page listed the fleet's first 50 budgets and only then kept the
    # principal's, so a scoped operator whose products sorted later saw "no budget".
    from fleet.principals import Principal, Role

    monkeypatch.setattr(views, "MAX_PRODUCTS", 2)
    for product in ("a", "b", "c", "zz"):
        world.put_budget(10.0, product_id=product)
    scoped = world.ctx.acting_as(Principal(id="o", name="o", role=Role.OPERATOR, products=("zz",)))
    # When its budget page is read, Then it shows its product's budget
    page = views.budget_page(scoped)
    assert list(page.budgets) == ["zz"] and page.budgets["zz"].ceiling_usd == 10.0


def test_a_principal_limited_to_some_products_finds_theirs_beyond_the_fleets_first_page(world, monkeypatch):
    # Regression: the products were found in the fleet's first 50 queue-states and only then
    # kept to the principal's, so a scoped operator's product past them was missing from the
    # New job form and the overview.
    from fleet.principals import Principal, Role

    monkeypatch.setattr(views, "MAX_PRODUCTS", 2)
    for product in ("a", "b", "c", "zz"):
        world.submit_job(f"job-{product}", product_id=product)
    scoped = world.ctx.acting_as(Principal(id="o", name="o", role=Role.OPERATOR, products=("c", "zz")))
    assert views.products(scoped) == ["c", "zz"]
    assert views.products(world.ctx) == ["a", "b"]  # the fleet's, cut at the limit
