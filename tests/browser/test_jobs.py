"""Jobs from the browser: a job submitted with the New job form is one a factory claims over
HTTP; bulk Requeue and Cancel touch exactly the selected jobs."""
from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from playwright.sync_api import expect

from fleet.jobs import job_id
from fleetclient import FleetClient
from tests.browser import ui


def _submit_new_job(page, product: str, key: str, title: str) -> None:
    page.goto(ui.NEW_JOB)
    ui.fill(page, "Product", product)
    ui.fill(page, "Idempotency key", key)
    ui.fill(page, "Title", title)
    ui.fill(page, "Body", "Make the **button** blue.")
    ui.fill(page, "Priority", "high")
    ui.fill(page, "Capabilities", "python, css")
    ui.fill(page, "Estimated cost (USD)", "0.75")
    page.get_by_role("button", name="Submit", exact=True).click()


def test_a_job_submitted_in_the_browser_is_claimed_by_a_factory(operator_page, fleet, tokens, product):
    # Given an operator submits a job with the New job form
    _submit_new_job(operator_page, product, "blue-button", "Make the button blue")

    # Then the browser shows the created job
    expected = job_id(product, "blue-button")
    expect(ui.status(operator_page, "Job created.")).to_be_visible()
    assert unquote(urlsplit(operator_page.url).path) == f"{ui.JOBS}/{expected}"
    expect(operator_page.get_by_role("heading", level=1)).to_have_text("Make the button blue")

    # When a factory with those capabilities claims work in that product over HTTP
    with FleetClient(fleet.url, token=tokens["factory"]) as factory:
        claimed = factory.claim("factory-b", product, capabilities=["python", "css"])

    # Then it gets that job, as submitted
    assert claimed.job is not None, claimed.reason
    assert claimed.job.id == expected
    assert claimed.job.priority.value == "high"
    assert sorted(claimed.job.capabilities) == ["css", "python"]
    assert claimed.job.estimated_cost_usd == 0.75
    assert claimed.job.body_md == "Make the **button** blue."
    operator_page.reload()
    expect(ui.facts(operator_page)).to_contain_text("assigned", ignore_case=True)
    expect(ui.facts(operator_page)).to_contain_text("factory-b")


def test_the_same_idempotency_key_shows_the_existing_job(operator_page, product):
    _submit_new_job(operator_page, product, "already", "Submitted before")
    expect(ui.status(operator_page, "Job created.")).to_be_visible()
    first = urlsplit(operator_page.url).path

    _submit_new_job(operator_page, product, "already", "Submitted before")

    expect(ui.status(operator_page, "That idempotency key already names this job.")).to_be_visible()
    assert urlsplit(operator_page.url).path == first
    expect(operator_page.get_by_role("heading", level=1)).to_have_text("Submitted before")


def test_invalid_input_keeps_the_values_and_says_what_is_wrong(operator_page, product):
    page = operator_page
    page.goto(ui.NEW_JOB)
    ui.fill(page, "Product", product)
    ui.fill(page, "Idempotency key", "bad-capability")
    ui.fill(page, "Title", "Needs what no factory has")
    ui.fill(page, "Capabilities", "python, not a capability!")
    with page.expect_response(lambda answer: answer.request.method == "POST") as posted:
        page.get_by_role("button", name="Submit", exact=True).click()

    assert posted.value.status == 400
    expect(page.get_by_label("Title")).to_have_value("Needs what no factory has")
    expect(page.get_by_label("Idempotency key")).to_have_value("bad-capability")
    expect(page.get_by_label("Capabilities")).to_have_value("python, not a capability!")
    expect(page.locator("main")).to_contain_text("capabilit", ignore_case=True)


def test_bulk_requeue_of_three_failed_jobs_requeues_exactly_those_three(operator_page, fleet, product):
    # Given five failed jobs and a queued one
    failed = [fleet.failed(product, f"broken-{n}", title=f"Broken {n}") for n in range(5)]
    queued = fleet.submit(product, "waiting", title="Waiting")
    chosen, left = failed[:3], failed[3:]

    # When the operator selects three of the failed ones and requeues them
    page = operator_page
    page.goto(f"{ui.JOBS}?stage=failed&product={product}")
    for job in chosen:
        page.get_by_role("checkbox", name=f"Select {job.id}", exact=True).check()
    page.get_by_role("button", name="Requeue", exact=True).click()
    ui.confirm(page, "Requeue 3 jobs?")

    # Then the list says so, and exactly those three are queued again
    expect(ui.status(page, "Requeued 3 jobs.")).to_be_visible()
    assert [fleet.stage(job.id) for job in chosen] == ["queued"] * 3
    assert [fleet.stage(job.id) for job in left] == ["failed"] * 2
    assert fleet.stage(queued.id) == "queued"


def test_bulk_cancel_asks_first_and_back_changes_nothing(operator_page, fleet, product):
    jobs = [fleet.submit(product, f"withdrawn-{n}", title=f"Withdrawn {n}") for n in range(2)]

    page = operator_page
    page.goto(f"{ui.JOBS}?stage=queued&product={product}")
    for job in jobs:
        page.get_by_role("checkbox", name=f"Select {job.id}", exact=True).check()
    page.get_by_role("button", name="Cancel", exact=True).click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Cancel 2 jobs?")
    dialog.get_by_role("button", name="Back", exact=True).click()

    expect(dialog).to_be_hidden()
    assert [fleet.stage(job.id) for job in jobs] == ["queued", "queued"]

    page.get_by_role("button", name="Cancel", exact=True).click()
    ui.confirm(page, "Cancel 2 jobs?")

    expect(ui.status(page, "Cancelled 2 jobs.")).to_be_visible()
    assert [fleet.stage(job.id) for job in jobs] == ["cancelled", "cancelled"]


def test_a_bulk_action_names_each_job_it_could_not_change(operator_page, fleet, product):
    queued = fleet.submit(product, "cancellable", title="Cancellable")
    shipped = fleet.parked(product, "delivered", "https://github.com/acme/web/pull/3", "aq/job/delivered")
    fleet.client.action(shipped.id, "ship")

    page = operator_page
    page.goto(f"{ui.JOBS}?product={product}")
    for job in (queued, shipped):
        page.get_by_role("checkbox", name=f"Select {job.id}", exact=True).check()
    page.get_by_role("button", name="Cancel", exact=True).click()
    ui.confirm(page, "Cancel 2 jobs?")

    # A shipped job cannot be cancelled (only requeued): the list says which, and why.
    expect(ui.status(page, re.compile(r"Cancelled 1 jobs?\."))).to_be_visible()
    expect(ui.status(page, shipped.id)).to_be_visible()
    assert fleet.stage(queued.id) == "cancelled"
    assert fleet.stage(shipped.id) == "shipped"
