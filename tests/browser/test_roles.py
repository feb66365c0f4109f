"""Pages obey the signed-in principal's role and products: a viewer is shown no action and is
refused if it posts one anyway; a product-scoped principal sees only its products."""
from __future__ import annotations

from playwright.sync_api import expect

from tests.browser import ui

#: Buttons that change something: none of them is shown to a viewer.
ACTIONS = ("Ship", "Requeue", "Reject", "Cancel", "Pause", "Resume", "Submit", "Approve", "Save")


def _no_action_buttons(page) -> None:
    for name in ACTIONS:
        expect(page.get_by_role("button", name=name, exact=True)).to_have_count(0)
    expect(page.get_by_role("link", name="New job", exact=True)).to_have_count(0)
    expect(page.get_by_role("button", name="New job", exact=True)).to_have_count(0)


def test_a_viewer_sees_no_action_buttons_on_any_page(open_page, fleet, tokens, product):
    fleet.client.put_budget(product, 10.0, "daily")
    parked = fleet.parked(product, "viewed", "https://github.com/acme/web/pull/9", "aq/job/viewed", title="Only looked at")
    fleet.failed(product, "viewed-failed", title="Failed, looked at")

    page = ui.signed_in(open_page(fleet), tokens["viewer"])
    for path in (ui.OVERVIEW, f"{ui.JOBS}?product={product}", ui.job_page(parked.id), ui.BUDGETS):
        page.goto(path)
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        _no_action_buttons(page)
    # The data is there all the same.
    page.goto(ui.job_page(parked.id))
    expect(ui.region(page, "Runs").get_by_role("link", name="PR ↗")).to_be_visible()
    expect(page.get_by_role("checkbox", name=f"Select {parked.id}")).to_have_count(0)


def test_a_viewer_posting_an_action_anyway_is_refused(open_page, fleet, tokens, product):
    job = fleet.parked(product, "not-yours", "https://github.com/acme/web/pull/10", "aq/job/not-yours")
    fleet.client.put_budget(product, 10.0, "daily")

    page = ui.signed_in(open_page(fleet), tokens["viewer"])
    page.goto(ui.job_page(job.id))
    posts = {
        f"{ui.job_page(job.id)}/actions/ship": {},
        f"{ui.JOBS}/bulk": {"action": "cancel", "ids": [job.id]},
        ui.NEW_JOB: {"product": product, "idempotencyKey": "sneaked", "title": "Sneaked in"},
        f"{ui.BUDGETS}/{product}/pause": {"reason": "mine now"},
    }

    for path, fields in posts.items():
        answer = ui.post_form(page, path, fields)  # its own cookie and the page's csrf
        assert answer["status"] == 403, path
        assert "not allowed" in answer["text"], path

    assert fleet.stage(job.id) == "testing"
    assert fleet.client.get_budget(product).paused is False
    assert [listed.id for listed in fleet.client.list_jobs(product_id=product).items] == [job.id]


def test_a_product_scoped_operator_sees_only_its_products(open_page, fleet, product):
    other = f"{product}-other"
    mine = fleet.submit(product, "mine", title="In my product")
    theirs = fleet.submit(other, "theirs", title="In another product")
    token = fleet.token("operator", f"scoped-{product}", products=[product])

    page = ui.signed_in(open_page(fleet), token)
    page.goto(ui.JOBS)
    expect(page.get_by_role("checkbox", name=f"Select {mine.id}", exact=True)).to_be_visible()
    expect(page.get_by_role("checkbox", name=f"Select {theirs.id}", exact=True)).to_have_count(0)
    expect(page.get_by_label("Product").locator("option", has_text=other)).to_have_count(0)

    # Another product's job is no job at all to this principal.
    assert page.goto(ui.job_page(theirs.id)).status == 404
