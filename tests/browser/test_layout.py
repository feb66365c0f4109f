"""Every page fits a phone: at 390×844 nothing is wider than the screen."""
from __future__ import annotations

import pytest

from tests.browser import chromium, ui


@pytest.mark.parametrize("name", ui.PAGES)
def test_no_page_scrolls_sideways_on_a_phone(name, open_page, fleet, tokens, shown):
    page = open_page(fleet, viewport=chromium.MOBILE)
    if name != "signin":
        ui.signed_in(page, tokens["operator"])
    page.goto(ui.PAGES[name](shown))

    width, screen = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")

    assert width <= screen, f"{name} ({page.url}) is {width}px wide on a {screen}px screen"
