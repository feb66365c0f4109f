"""The README's curl walk-through runs as written against a real `fleet serve`."""
from __future__ import annotations

import re
import shutil
import sys
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
        assert not list(tmp_path.glob("*.json"))  # it leaves nothing in the directory it ran in


def cli_examples() -> str:
    text = README.read_text()
    section = text[text.index("### The `fleet` CLI"):]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def test_the_cli_examples_work_after_the_walkthrough(tmp_path):
    env = {"FLEET_AUTH": None, "FLEET_BUDGETS": "1"}  # as `FLEET_BUDGETS=1 make run`
    with running_server(db=str(tmp_path / "readme.db"), env=env) as server:
        token = str(tmp_path / "admin-token")
        walk = walkthrough().replace("localhost:7071", server.url.removeprefix("http://"))
        walk = walk.replace(".fleet/admin-token", token).replace("curl -s", "curl -sf")
        # a job a factory parked lease-free at testing, for the review gate's lines
        park = walk.replace("/actions/ship", "/actions/requeue")
        park += '\ncurl -sf -H "$AUTH" -X POST localhost:7071/fleet/claim -H "content-type: application/json"'
        park += ' -d \'{"factoryId":"factory-1","productId":"web","capabilities":["python"]}\' > claim.json'
        park += '\nLEASE=$(python3 -c \'import json;print(json.load(open("claim.json"))["lease"]["leaseId"])\')'
        park += '\ncurl -sf -H "$AUTH" -X POST "localhost:7071/fleet/jobs/$JOB/lease/release"'
        park += ' -H "content-type: application/json" -d "{\\"leaseId\\":\\"$LEASE\\",\\"stage\\":\\"testing\\"}"'
        # and a job whose run's lease an operator took (requeued), for the late report's line
        post = 'curl -sf -H "$AUTH" -H "content-type: application/json" -X POST localhost:7071/fleet'
        park += f'\n{post}/jobs -d \'{{"productId":"web","idempotencyKey":"late","title":"Late"}}\' > /dev/null'
        park += f'\n{post}/claim -d \'{{"factoryId":"factory-1","productId":"web"}}\' > taken.json'
        park += '\nTAKEN=$(python3 -c \'import json;print(json.load(open("taken.json"))["job"]["id"])\')'
        park += f'\n{post}/jobs/$TAKEN/actions/requeue -d "{{}}" > /dev/null'
        park += '\nTAKEN_LEASE=$(python3 -c \'import json;print(json.load(open("taken.json"))["lease"]["leaseId"])\')'
        park = park.replace("localhost:7071", server.url.removeprefix("http://"))
        cli = cli_examples().replace(". .venv/bin/activate", f"PATH={Path(sys.executable).parent}:$PATH")
        cli = cli.replace("http://127.0.0.1:7071", server.url).replace(".fleet/admin-token", token)
        # the approval needs a reviewer's token (the admin's is refused): the request is enough here
        cli = cli.replace('fleet jobs review "$PARKED"', 'true "$PARKED"')
        script = f"{park}\nPARKED=$JOB\n{cli}"
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        out = done.stdout
        assert "submitted web:" in out and "Fix signup" in out and "blocked  Add tests" in out
        assert "reported run 1, $0.42: web:" in out and "queued  Late" in out
        assert "├─" in out and "└─" in out  # the children added, as a tree
        assert "review requested:" in out and re.search(r"^paused: +yes \(manual\)$", out, re.M)
