"""Debian's Chromium (`apt-get install chromium`, which `make test` does), driven by Playwright's
sync API. Playwright's own browser builds are never downloaded: `launch` names the system
binary with `executable_path`.

    with sync_playwright() as playwright:
        browser = chromium.launch(playwright)
"""
from __future__ import annotations

import shutil
from pathlib import Path

from playwright.sync_api import Browser, Playwright

#: Headless, without a sandbox (CI runs as root), and quiet: no GPU, no QUIC, and none of the
#: background calls home (updates, sync, first-run pages) a test machine cannot make.
ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

DEBIAN_PATH = Path("/usr/bin/chromium")

DESKTOP = {"width": 1280, "height": 800}
MOBILE = {"width": 390, "height": 844}


def executable() -> str | None:
    """The Chromium binary to drive, or None where it is not installed."""
    if DEBIAN_PATH.exists():
        return str(DEBIAN_PATH)
    return shutil.which("chromium")


def launch(playwright: Playwright) -> Browser:
    path = executable()
    if path is None:
        raise FileNotFoundError("no chromium: `make test` installs it (apt-get install chromium)")
    return playwright.chromium.launch(executable_path=path, args=list(ARGS), headless=True)
