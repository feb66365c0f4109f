"""Write `docs/screenshots/<page>-desktop.png` (1280×800) and `<page>-mobile.png` (390×844) of
every dashboard page, from a `fleet serve` holding a small demo fleet (`world.demo`).

    make screenshots                       # or: python -m tests.browser.screenshots [--out DIR]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from shared.devhost.process import REPO_ROOT
from tests.browser import chromium, ui, world

OUT = REPO_ROOT / "docs" / "screenshots"
SCREENS = {"desktop": chromium.DESKTOP, "mobile": chromium.MOBILE}


def take(out: Path) -> list[Path]:
    """Every page on every screen, into `out`; the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with world.serving(world.BUDGETS_ON) as fleet, sync_playwright() as driver:
        ids = world.demo(fleet)
        browser = chromium.launch(driver)
        try:
            for screen, viewport in SCREENS.items():
                context = browser.new_context(base_url=fleet.url, viewport=viewport)
                try:
                    page = context.new_page()

                    def shoot(name: str) -> None:
                        page.goto(ui.PAGES[name](ids))
                        expect(page.get_by_role("heading", level=1)).to_be_visible()
                        target = out / f"{name}-{screen}.png"
                        page.screenshot(path=str(target), animations="disabled")
                        written.append(target)

                    shoot("signin")
                    ui.signed_in(page, fleet.admin_token)
                    for name in ui.PAGES:
                        if name != "signin":
                            shoot(name)
                finally:
                    context.close()
        finally:
            browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write them (default {OUT})")
    args = parser.parse_args(argv)
    for path in take(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
