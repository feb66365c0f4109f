"""Live refresh: an open page asks again on the operator's interval with `If-None-Match`; an
unchanged page answers 304, and a change made elsewhere shows up without a reload."""
from __future__ import annotations

from urllib.parse import urlsplit

from playwright.sync_api import Response, expect

from tests.browser import ui

#: Long enough for two refreshes at the shortest interval (5 s) on a busy machine.
REFRESH_TIMEOUT_MS = 30_000


def _refresh_of(path: str):
    def matches(answer: Response) -> bool:
        request = answer.request
        return (request.method == "GET" and urlsplit(answer.url).path == path
                and request.header_value("if-none-match") is not None)
    return matches


def test_an_unchanged_overview_refreshes_with_304_and_a_new_job_appears_without_reload(operator_page, fleet, product):
    page = operator_page
    page.goto(ui.OVERVIEW)
    expect(page.get_by_label("Live updates")).to_be_checked()
    page.get_by_label("Every").select_option(label="5 s")
    version = page.locator("main").get_attribute("data-version")
    assert version

    # With nothing changing, the page's refresh is a conditional GET answered 304 (a view's ETag
    # holds the minute too, so a refresh across the minute's turn renders anew: one more look)
    for _ in range(3):
        with page.expect_response(_refresh_of(ui.OVERVIEW), timeout=REFRESH_TIMEOUT_MS) as refreshed:
            pass
        if refreshed.value.status == 304:
            break
        expect(page.locator("main")).not_to_have_attribute("data-version", version)
        version = page.locator("main").get_attribute("data-version")
    assert refreshed.value.status == 304
    assert refreshed.value.request.header_value("if-none-match") == version
    loads = []
    page.on("framenavigated", lambda frame: loads.append(frame.url) if frame == page.main_frame else None)

    # When a job is submitted over HTTP, the open page shows it, without a reload
    fleet.submit(product, "live", title=f"Appeared live in {product}")

    recent = ui.region(page, "Recent jobs")
    expect(recent.get_by_role("link", name=f"Appeared live in {product}")).to_be_visible(timeout=REFRESH_TIMEOUT_MS)
    expect(page.locator("main")).not_to_have_attribute("data-version", version)
    assert loads == [], "the page reloaded"

