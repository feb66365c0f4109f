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
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

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


#: How long a browser test may run before its Chromium is killed: far past any test's own
#: timeouts (the expectations' and actions' above), so only a call that waits for ever (a page
#: whose renderer never came, which Playwright does not time out) meets it.
WATCHDOG_SECONDS = 120
#: What a call that Chromium's kill cut short raises: a test failing so is run once more, on a
#: browser launched again.
KILLED = [r"TargetClosedError", r"has been closed", r"Browser closed", r"Connection closed"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/browser/" in item.nodeid:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.flaky(reruns=1, only_rerun=KILLED))


def _chromium_below(pid: int) -> list[int]:
    """The Chromium processes descended from process `pid` (Playwright's driver launched them)."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            names[int(entry.name)] = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])

    def below(p: int) -> bool:
        while p in parents and p > 1:
            p = parents[p]
            if p == pid:
                return True
        return False

    return [p for p, name in names.items() if "chrom" in Path(name).name and below(p)]


@pytest.fixture(autouse=True)
def _watchdog(request) -> Iterator[None]:
    """Kill the test's Chromium if the test outlives `WATCHDOG_SECONDS`: the call waiting on
    it then raises, the test fails, and it is run once more (`KILLED`) on a new browser. A
    hang (seen once in many runs, a page never given a renderer) so costs one rerun, not CI's
    whole time limit."""
    if "tests/browser/" not in request.node.nodeid:
        yield
        return

    def kill() -> None:
        for pid in _chromium_below(os.getpid()):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    timer = threading.Timer(WATCHDOG_SECONDS, kill)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    if chromium.executable() is None:
        reason = "no chromium (make test installs Debian's: apt-get install chromium)"
        if in_ci():
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    with sync_playwright() as driver:
        yield driver


class _Browsers:
    """The session's Chromium, launched again if it went away (killed by `_watchdog`)."""

    def __init__(self, playwright: Playwright) -> None:
        self.playwright = playwright
        self.current = chromium.launch(playwright)

    def connected(self) -> Browser:
        if not self.current.is_connected():
            print("Chromium went away (killed by the watchdog?): launching it again", file=sys.stderr)
            self.current = chromium.launch(self.playwright)
        return self.current


@pytest.fixture(scope="session")
def browsers(playwright) -> Iterator[_Browsers]:
    held = _Browsers(playwright)
    try:
        yield held
    finally:
        with contextlib.suppress(Exception):
            held.current.close()


@pytest.fixture
def browser(browsers) -> Browser:
    return browsers.connected()


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
