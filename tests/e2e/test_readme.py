"""The README's curl walk-through runs as written against a real `fleet serve`."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from shared.devhost.process import running_server

README = Path(__file__).resolve().parents[2] / "README.md"

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")]


def walkthrough() -> str:
    text = README.read_text()
    section = text[text.index("### A walk through with curl"):]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def test_the_curl_walkthrough_works(tmp_path):
    with running_server(db=str(tmp_path / "readme.db"), env={"FLEET_AUTH": None}) as server:
        script = walkthrough().replace("localhost:7071", server.url.removeprefix("http://"))
        # the token `fleet serve` minted, beside its SQLite file (.fleet/ under `make run`)
        script = script.replace(".fleet/admin-token", str(tmp_path / "admin-token"))
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script.replace("curl -s", "curl -sf")],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert '"stage":"shipped"' in done.stdout
        assert '"version":1' in done.stdout
