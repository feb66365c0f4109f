"""axe-core, run in each page as it renders with data: no serious or critical violation."""
from __future__ import annotations

import pytest

from tests.browser import ui
from tests.support.cosmos import in_ci


@pytest.fixture(scope="module")
def axe() -> None:
    if not ui.axe_available():
        reason = f"no {ui.AXE} (make test runs npm install)"
        if in_ci():
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.mark.parametrize("name", ui.PAGES)
def test_no_serious_or_critical_accessibility_violation(name, axe, open_page, fleet, tokens, shown):
    # The pages' Content-Security-Policy refuses scripts they do not serve themselves, as it
    # should; this context lifts it only so that axe-core can be put into the page.
    page = open_page(fleet, bypass_csp=True)
    if name != "signin":
        ui.signed_in(page, tokens["operator"])
    page.goto(ui.PAGES[name](shown))

    violations = ui.axe_violations(page)

    assert not violations, f"{name} ({page.url}):\n{ui.describe(violations)}"
