"""Every page renders with data: the overview, the jobs list, the new-job form, a job's detail,
the budgets, and the 404 of an unknown job."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from dashboard import views
from tests.browser import ui

STAGE_TABS = ("All", "Queued", "Blocked", "Assigned", "Building", "Review", "Testing", "Shipped",
              "Done", "Failed", "Dead letter", "Cancelled")


def test_the_overview_shows_factories_stages_recent_jobs_spend_and_the_chart(operator_page, fleet, product):
    fleet.client.put_budget(product, 25.0, "daily")
    fleet.client.heartbeat("overview-1", products=[product], capabilities=["python"], seat_limit=4)
    job, _ = fleet.running(product, "overview-running", factory="overview-1", title="Shown on the overview")
    fleet.client.heartbeat("overview-1", products=[product], capabilities=["python"], seat_limit=4)
    [factory] = [f for f in fleet.client.list_factories() if f.id == "overview-1"]
    assert factory.seats_used == 1

    page = operator_page
    page.goto(ui.OVERVIEW)

    expect(page.get_by_role("heading", level=1)).to_have_text("Fleet")
    card = ui.region(page, "Factories").get_by_role("article").filter(
        has=page.get_by_role("heading", name="overview-1", exact=True)
    )
    expect(card).to_contain_text("online", ignore_case=True)
    expect(card).to_contain_text(re.compile(r"Seats\s*1 / 4"))
    expect(card).to_contain_text(product)
    expect(card).to_contain_text("python")
    expect(ui.region(page, "Jobs by stage")).to_contain_text(product)
    finished = ui.region(page, "Finished in the last 14 days")
    expect(finished.get_by_role("row").filter(has_text=product)).to_have_count(1)
    expect(finished.get_by_role("columnheader")).to_have_count(6)  # the product, and the five end stages
    recent = ui.region(page, "Recent jobs").get_by_role("link", name="Shown on the overview")
    expect(recent).to_have_attribute("href", ui.to_job(job.id))
    expect(ui.region(page, "Spend this window")).to_contain_text(product)
    chart = ui.region(page, "Last 14 days")
    expect(chart.locator("svg").first).to_be_visible()
    expect(chart.locator("table").first).to_be_attached()  # the text fallback may be folded away


def test_the_jobs_list_has_stage_tabs_filters_and_a_row_per_job(operator_page, fleet, product):
    queued = fleet.submit(product, "listed-queued", title="Listed and queued")
    failed = fleet.failed(product, "listed-failed", title="Listed and failed")

    page = operator_page
    page.goto(f"{ui.JOBS}?product={product}")

    expect(page.get_by_role("heading", level=1)).to_have_text("Jobs")
    tabs = page.get_by_role("navigation", name="Stages")
    for name in STAGE_TABS:
        expect(tabs.get_by_role("link", name=name, exact=True)).to_be_visible()
    expect(tabs.get_by_role("link", name="All", exact=True)).to_have_attribute("aria-current", "page")
    expect(page.get_by_label("Product")).to_be_visible()
    expect(page.get_by_label("Search")).to_be_visible()
    for job, stage in ((queued, "queued"), (failed, "failed")):
        row = page.get_by_role("row").filter(has=page.get_by_role("checkbox", name=f"Select {job.id}", exact=True))
        expect(row.get_by_role("link", name=job.title, exact=True)).to_be_visible()
        expect(row).to_contain_text(stage, ignore_case=True)
    expect(page.get_by_role("link", name="New job", exact=True)).to_have_attribute("href", re.compile(r"/dashboard/fleet/jobs/new$"))

    tabs.get_by_role("link", name="Failed", exact=True).click()

    expect(tabs.get_by_role("link", name="Failed", exact=True)).to_have_attribute("aria-current", "page")
    expect(page.get_by_role("checkbox", name=f"Select {failed.id}", exact=True)).to_be_visible()
    expect(page.get_by_role("checkbox", name=f"Select {queued.id}", exact=True)).to_have_count(0)


def test_the_search_finds_a_job_by_title_or_idempotency_key(operator_page, fleet, product):
    wanted = fleet.submit(product, "needle-key", title="The needle")
    other = fleet.submit(product, "haystack", title="Straw")

    page = operator_page
    page.goto(f"{ui.JOBS}?product={product}")
    page.get_by_label("Search").fill("needle")
    page.get_by_role("button", name="Filter", exact=True).click()

    expect(page.get_by_role("checkbox", name=f"Select {wanted.id}", exact=True)).to_be_visible()
    expect(page.get_by_role("checkbox", name=f"Select {other.id}", exact=True)).to_have_count(0)


def test_the_jobs_list_pages_newest_first(operator_page, fleet, product):
    jobs = [fleet.submit(product, f"paged-{n:02}", title=f"Paged {n:02}") for n in range(views.PAGE_SIZE + 1)]
    oldest, newest = jobs[0], jobs[-1]

    page = operator_page
    page.goto(f"{ui.JOBS}?product={product}")
    rows = page.get_by_role("checkbox", name=re.compile(rf"^Select {re.escape(product)}:"))
    expect(rows).to_have_count(views.PAGE_SIZE)
    expect(rows.first).to_have_accessible_name(f"Select {newest.id}")
    expect(page.get_by_role("checkbox", name=f"Select {oldest.id}", exact=True)).to_have_count(0)

    page.get_by_role("link", name="Older", exact=True).click()

    expect(page.get_by_role("checkbox", name=f"Select {oldest.id}", exact=True)).to_be_visible()
    expect(rows).to_have_count(1)
    page.get_by_role("link", name="Newer", exact=True).click()
    expect(rows.first).to_have_accessible_name(f"Select {newest.id}")


def test_the_new_job_form_has_every_field(operator_page):
    page = operator_page
    page.goto(ui.NEW_JOB)

    for label in ("Product", "Idempotency key", "Title", "Body", "Priority", "Capabilities", "Deps", "Repo",
                  "Base branch", "Estimated cost (USD)"):
        expect(page.get_by_label(label)).to_be_visible()
    expect(page.get_by_role("button", name="Submit", exact=True)).to_be_visible()


def test_a_job_detail_shows_its_fields_body_events_runs_review_dag_and_actions(operator_page, fleet, product):
    job = fleet.parked(
        product, "detailed", "https://github.com/acme/web/pull/12", "aq/job/detailed",
        title="A detailed job", priority="high", body_md="Has **bold** text.\n\n<script>window.pwned = 1</script>",
    )
    fleet.client.request_review(job.id, required=2, reviewers=["rita", "ann"])

    page = operator_page
    page.goto(ui.job_page(job.id))

    expect(page.get_by_role("heading", level=1)).to_have_text("A detailed job")
    facts = ui.facts(page)
    for term in ("Stage", "Priority", "Attempts", "Lease", "Blocked on", "Checkpoint"):
        expect(facts.locator("dt", has_text=re.compile(rf"^\s*{term}\s*$"))).to_be_visible()
    expect(facts).to_contain_text("testing", ignore_case=True)
    expect(facts).to_contain_text("high", ignore_case=True)
    body = ui.region(page, "Body")
    expect(body.locator("strong")).to_have_text("bold")
    assert page.evaluate("window.pwned") is None, "the body's script ran"
    expect(ui.region(page, "Events")).to_contain_text("released", ignore_case=True)
    runs = ui.region(page, "Runs")
    for column in ("Factory", "Started", "Ended", "Result", "Cost", "Tokens", "PR"):
        expect(runs.get_by_role("columnheader", name=column, exact=True)).to_be_visible()
    expect(runs).to_contain_text("factory-1")
    expect(runs).to_contain_text("aq/job/detailed")
    expect(runs.get_by_role("link", name="PR ↗")).to_have_attribute("href", "https://github.com/acme/web/pull/12")
    review = ui.region(page, "Review")
    expect(review).to_contain_text("Required")
    expect(review).to_contain_text("Approvals")
    expect(review).to_contain_text("rita")
    expect(ui.region(page, "Artifacts")).to_be_visible()
    expect(ui.region(page, "DAG")).to_be_visible()
    actions = ui.region(page, "Actions")
    for name in ("Ship", "Requeue", "Reject", "Cancel"):
        expect(actions.get_by_role("button", name=name, exact=True)).to_be_visible()


def test_the_budgets_page_shows_spend_window_and_state_per_product(operator_page, fleet, product):
    fleet.client.put_budget(product, 30.0, "weekly")

    page = operator_page
    page.goto(ui.BUDGETS)

    expect(page.get_by_role("heading", level=1)).to_have_text("Budgets")
    budget = ui.region(page, product)
    expect(budget).to_contain_text(re.compile(r"spent \$0(\.00)? · reserved \$0(\.00)? · ceiling \$30(\.00)?"))
    expect(budget).to_contain_text("Window")
    expect(budget).to_contain_text("weekly", ignore_case=True)
    expect(budget).to_contain_text("Rolls at")
    expect(budget).to_contain_text("Running")
    expect(budget.get_by_role("button", name="Pause", exact=True)).to_be_visible()
    expect(budget.get_by_label("Ceiling (USD)", exact=True)).to_have_value(re.compile(r"^30(\.0+)?$"))
    expect(ui.region(page, "Set a budget").get_by_role("button", name="Save", exact=True)).to_be_visible()


def test_an_unknown_job_is_a_404_page(operator_page):
    answer = operator_page.goto(ui.job_page("nowhere:aaaaaaaaaaaaaaaaaaaa"))

    assert answer.status == 404
    expect(operator_page.locator("main")).to_contain_text("No job")
