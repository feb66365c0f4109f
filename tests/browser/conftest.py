"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against `fleet serve`
on a free port with auth on (tokens), over SQLite.

Two servers per session: `fleet`, with budgets and preemption on, and `fleet_budgets_off`.
Each test works in a product of its own (`product`), so tests sharing a server do not see
each other's jobs. `tokens` holds one token per role, minted by the admin over HTTP. A page
(`page`, or `open_page(...)` for another server or screen) is a fresh browser context: no
cookies, nobody signed in. Where Chromium is not installed the tests skip, and fail under
`CI=true` (STYLE.md, rule 8): `make test` installs it.

This folder has its own conftest; its servers run with auth on, as `tests/e2e/`'s do.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from tests.browser import chromium, ui, world
from tests.support.cosmos import in_ci

#: How long `expect(...)` waits for the page to show something, on a busy 2-core machine.
EXPECT_TIMEOUT_MS = 15_000
#: How long an action (a click, a navigation) may take.
ACTION_TIMEOUT_MS = 20_000

expect.set_options(timeout=EXPECT_TIMEOUT_MS)

#: The tokens the tests sign in with: role -> the fields it is minted with.
ROLES = {
    "operator": {"name": "olive"},
    "viewer": {"name": "vic"},
    "reviewer": {"name": "rita"},
    "factory": {"name": "builder", "factoryId": "factory-b"},
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/browser/" in item.nodeid:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    if chromium.executable() is None:
        reason = "no chromium (make test installs Debian's: apt-get install chromium)"
        if in_ci():
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright) -> Iterator[Browser]:
    browser = chromium.launch(playwright)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="session")
def fleet(tmp_path_factory) -> Iterator[world.Fleet]:
    """`fleet serve` with budgets and preemption on, and its admin."""
    with world.serving(world.BUDGETS_ON, tmp_path_factory.mktemp("budgets-on")) as admin:
        yield admin


@pytest.fixture(scope="session")
def fleet_budgets_off(tmp_path_factory) -> Iterator[world.Fleet]:
    """`fleet serve` with budgets and preemption off, and its admin."""
    with world.serving(world.BUDGETS_OFF, tmp_path_factory.mktemp("budgets-off")) as admin:
        yield admin


@pytest.fixture(scope="session")
def tokens(fleet) -> dict[str, str]:
    """role -> a token of that role on `fleet`, and `admin`."""
    minted = {role: fleet.token(role, **fields) for role, fields in ROLES.items()}
    return {**minted, "admin": fleet.admin_token}


@pytest.fixture(scope="session")
def shown(fleet) -> dict[str, str]:
    """Something on every page (a factory, a parked job with a PR, a failed one, a composite
    with two children, a budget): the ids `ui.PAGES` takes."""
    product = world.new_product()
    fleet.client.put_budget(product, 20.0, "daily")
    fleet.client.heartbeat("shown-1", products=[product], capabilities=["python"], seat_limit=2)
    job = fleet.parked(product, "shown", "https://github.com/acme/web/pull/1", "aq/job/shown",
                       title="Shown on every page", body_md="A *body* with a [link](https://example.com).")
    fleet.failed(product, "shown-failed", title="Failed, shown too")
    composite = fleet.composite(product, "shown-epic", ["shown-a", "shown-b"], title="A shown epic")
    return {"job": job.id, "composite": composite.id}


@pytest.fixture
def product() -> str:
    return world.new_product()


@pytest.fixture
def open_page(browser) -> Iterator[Callable[..., Page]]:
    """`open_page(fleet, viewport=chromium.DESKTOP, bypass_csp=False)`: a page in a fresh
    context on `fleet`'s server (no cookies). Every context is closed after the test."""
    with contextlib.ExitStack() as stack:

        def open_(on: world.Fleet, viewport: dict[str, int] = chromium.DESKTOP, bypass_csp: bool = False) -> Page:
            context = browser.new_context(base_url=on.url, viewport=viewport, bypass_csp=bypass_csp)
            stack.callback(context.close)
            context.set_default_timeout(ACTION_TIMEOUT_MS)
            return context.new_page()

        yield open_


@pytest.fixture
def page(open_page, fleet) -> Page:
    """A page on `fleet`, nobody signed in."""
    return open_page(fleet)


@pytest.fixture
def operator_page(page, tokens) -> Page:
    """A page on `fleet`, signed in as an operator, on the overview."""
    return ui.signed_in(page, tokens["operator"])
