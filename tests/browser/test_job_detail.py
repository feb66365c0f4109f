"""A job's page: the operator actions with their confirmations, the review gate, and the DAG."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.browser import ui

PR = "https://github.com/acme/web/pull/41"


def test_ship_on_a_parked_job_ships_it_and_the_runs_table_links_its_pr(operator_page, fleet, product):
    # Given a job its factory parked at the review gate, reporting its PR
    job = fleet.parked(product, "parked", PR, "aq/job/parked", title="Parked at the gate")
    assert job.stage.value == "testing" and job.lease is None

    # When the operator ships it from its page
    page = operator_page
    page.goto(ui.job_page(job.id))
    ui.region(page, "Actions").get_by_role("button", name="Ship", exact=True).click()
    ui.confirm(page, "Ship this job?")

    # Then the page says so in place, the job is shipped, and its run links the PR
    expect(page).to_have_url(re.compile(re.escape(ui.job_page(job.id)) + r"(\?.*)?$"))
    expect(ui.status(page, "Shipped.")).to_be_visible()
    expect(ui.facts(page)).to_contain_text("shipped", ignore_case=True)
    runs = ui.region(page, "Runs")
    expect(runs.get_by_role("link", name="PR ↗")).to_have_attribute("href", PR)
    expect(runs).to_contain_text("aq/job/parked")
    shipped = fleet.client.get_job(job.id)
    assert shipped.stage.value == "shipped"
    assert shipped.events[-1].actor == "olive"
    # and of the actions only what still changes a shipped job is offered: requeue
    actions = ui.region(page, "Actions")
    expect(actions.get_by_role("button")).to_have_text(["Requeue"])


def test_back_leaves_the_job_as_it_was(operator_page, fleet, product):
    job = fleet.parked(product, "kept", PR, "aq/job/kept", title="Kept at the gate")

    page = operator_page
    page.goto(ui.job_page(job.id))
    ui.region(page, "Actions").get_by_role("button", name="Cancel", exact=True).click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Cancel this job?")
    dialog.get_by_role("button", name="Back", exact=True).click()

    expect(dialog).to_be_hidden()
    assert fleet.stage(job.id) == "testing"


def test_reject_in_the_actions_region_fails_the_job(operator_page, fleet, product):
    job = fleet.parked(product, "rejected", PR, "aq/job/rejected", title="Not good enough")

    page = operator_page
    page.goto(ui.job_page(job.id))
    ui.region(page, "Actions").get_by_role("button", name="Reject", exact=True).click()
    ui.confirm(page, "Reject this job?")

    expect(ui.status(page, "Rejected.")).to_be_visible()
    assert fleet.stage(job.id) == "failed"


def test_requeue_puts_a_failed_job_back_in_the_queue(operator_page, fleet, product):
    job = fleet.failed(product, "again", title="Try again")

    page = operator_page
    page.goto(ui.job_page(job.id))
    ui.region(page, "Actions").get_by_role("button", name="Requeue", exact=True).click()
    ui.confirm(page, "Requeue this job?")

    expect(ui.status(page, "Requeued.")).to_be_visible()
    assert fleet.stage(job.id) == "queued"


def test_a_refused_action_is_shown_in_place(operator_page, fleet, product):
    # Given a job's page open while the job waits at the gate, which another operator then rejects
    job = fleet.parked(product, "overtaken", PR, "aq/job/overtaken", title="Rejected meanwhile")
    page = operator_page
    page.goto(ui.job_page(job.id))
    fleet.client.action(job.id, "reject", reason="not wanted")

    # When this page's Ship is used
    ui.region(page, "Actions").get_by_role("button", name="Ship", exact=True).click()
    ui.confirm(page, "Ship this job?")

    # Then a failed job is terminal: shipping it needs a requeue first, and the page says why
    expect(ui.status(page, "requeue it first")).to_be_visible()
    assert fleet.stage(job.id) == "failed"


def test_an_ended_job_offers_only_a_requeue(operator_page, fleet, product):
    job = fleet.failed(product, "finished", title="Finished, failed")

    page = operator_page
    page.goto(ui.job_page(job.id))

    expect(ui.region(page, "Actions").get_by_role("button")).to_have_text(["Requeue"])


def test_a_reviewer_approves_in_the_review_region(open_page, fleet, tokens, product):
    job = fleet.parked(product, "reviewed", PR, "aq/job/reviewed", title="Needs two looks")
    fleet.client.request_review(job.id, required=2, reviewers=["rita", "ann"])

    page = ui.signed_in(open_page(fleet), tokens["reviewer"])
    page.goto(ui.job_page(job.id))
    review = ui.region(page, "Review")
    expect(review).to_contain_text("Required")
    expect(review).to_contain_text("Approvals")
    expect(review).to_contain_text("ann")
    expect(ui.region(page, "Actions").get_by_role("button", name="Ship", exact=True)).to_have_count(0)
    review.get_by_label("Comment").first.fill("reads well")
    review.get_by_role("button", name="Approve", exact=True).click()
    with page.expect_response(lambda answer: answer.request.method == "POST") as posted:
        ui.confirm(page, "Approve this job as rita?")

    # One approval of the two required: recorded in the reviewer's own name, with its comment,
    # still at the gate.
    assert posted.value.status == 303
    reviewed = fleet.client.get_job(job.id)
    assert reviewed.review["approvals"] == ["rita"]
    assert reviewed.stage.value == "testing"
    assert (reviewed.events[-1].type, reviewed.events[-1].detail.get("comment")) == ("review_approved", "reads well")


def test_the_dag_of_a_composite_with_two_children_shows_three_nodes(operator_page, fleet, product):
    composite = fleet.composite(product, "epic", ["epic-a", "epic-b"], title="An epic")
    tree = fleet.client.get_dag(composite.id)

    page = operator_page
    page.goto(ui.job_page(composite.id))
    nodes = ui.region(page, "DAG").get_by_role("link")

    # Each node: a link to its job, titled, with its stage beside it.
    expect(nodes).to_have_count(3)
    expect(nodes.filter(has_text="An epic").locator("xpath=..")).to_contain_text("blocked", ignore_case=True)
    for child in tree.children:
        link = nodes.filter(has_text=child.title)
        expect(link).to_have_attribute("href", ui.to_job(child.id))
        expect(link.locator("xpath=..")).to_contain_text("queued", ignore_case=True)

    nodes.filter(has_text="Child epic-b").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Child epic-b")
