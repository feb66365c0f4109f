"""Signing in: where an unsigned-in browser lands, what a bad token gets, the session cookie,
CSRF on every state change, and signing out."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser import ui


def test_an_unsigned_in_browser_lands_on_the_sign_in_page(page):
    page.goto(ui.OVERVIEW)

    expect(page).to_have_url(re.compile(r"/dashboard/signin\?next="))
    expect(page.get_by_label("Token")).to_have_attribute("type", "password")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()


def test_signing_in_goes_back_to_the_page_asked_for(page, tokens):
    page.goto(f"{ui.JOBS}?stage=failed")
    expect(page).to_have_url(re.compile(r"/dashboard/signin\?next="))

    page.get_by_label("Token").fill(tokens["operator"])
    page.get_by_role("button", name="Sign in").click()

    expect(page).to_have_url(re.compile(r"/dashboard/fleet/jobs\?stage=failed$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Jobs")


def test_a_bad_token_is_refused_on_the_same_form(page):
    page.goto(ui.SIGNIN)
    page.get_by_label("Token").fill("fleet_0000000000000000_" + "x" * 43)
    with page.expect_response(lambda answer: answer.request.method == "POST") as posted:
        page.get_by_role("button", name="Sign in").click()

    assert posted.value.status == 401
    expect(page.get_by_text("That token was not accepted.")).to_be_visible()
    expect(page.get_by_label("Token")).to_be_visible()
    assert not [cookie for cookie in page.context.cookies() if cookie["name"] == "fleet_session"]


def test_the_session_cookie_is_http_only_and_same_site_strict(page, tokens):
    ui.signed_in(page, tokens["viewer"])

    [session] = [cookie for cookie in page.context.cookies() if cookie["name"] == "fleet_session"]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert session["path"] == "/dashboard"
    # HttpOnly: the page's own scripts cannot read it.
    assert "fleet_session" not in page.evaluate("document.cookie")


@pytest.mark.parametrize("name", [name for name in ui.PAGES if name != "signin"])
def test_every_page_names_the_principal_and_links_the_others(name, operator_page, shown):
    operator_page.goto(ui.PAGES[name](shown))
    header = operator_page.get_by_role("banner")

    for link in ("Overview", "Jobs", "Budgets"):
        expect(header.get_by_role("link", name=link, exact=True)).to_be_visible()
    expect(header).to_contain_text("olive")
    expect(header).to_contain_text("operator")
    expect(header.get_by_role("button", name="Sign out", exact=True)).to_be_visible()


def test_an_error_page_names_the_principal_too(operator_page):
    assert operator_page.goto(ui.job_page("nowhere:aaaaaaaaaaaaaaaaaaaa")).status == 404

    header = operator_page.get_by_role("banner")
    expect(header).to_contain_text("olive")
    expect(header).to_contain_text("operator")


def test_a_post_without_the_csrf_token_is_refused(operator_page, fleet, product):
    job = fleet.submit(product, "no-csrf", title="Not to be cancelled")
    operator_page.goto(ui.job_page(job.id))

    answer = ui.post_form(operator_page, f"{ui.job_page(job.id)}/actions/cancel", {}, with_csrf=False)

    assert answer["status"] == 403
    assert fleet.stage(job.id) == "queued"


def test_a_post_with_another_csrf_token_is_refused(operator_page, fleet, product):
    job = fleet.submit(product, "wrong-csrf", title="Not to be cancelled either")
    operator_page.goto(ui.job_page(job.id))

    answer = ui.post_form(
        operator_page, f"{ui.job_page(job.id)}/actions/cancel", {"csrf": "0" * 43}, with_csrf=False
    )

    assert answer["status"] == 403
    assert fleet.stage(job.id) == "queued"


def test_every_form_carries_the_page_csrf_token(operator_page):
    operator_page.goto(ui.NEW_JOB)
    token = ui.csrf(operator_page)

    hidden = operator_page.locator('form input[type="hidden"][name="csrf"]')
    assert token
    assert hidden.count() == operator_page.locator("form[method='post' i]").count() > 0
    for value in hidden.evaluate_all("inputs => inputs.map(input => input.value)"):
        assert value == token


def test_signing_out_ends_the_session(operator_page):
    operator_page.get_by_role("button", name="Sign out").click()

    expect(operator_page).to_have_url(re.compile(r"/dashboard/signin"))
    operator_page.goto(ui.JOBS)
    expect(operator_page).to_have_url(re.compile(r"/dashboard/signin\?next="))
