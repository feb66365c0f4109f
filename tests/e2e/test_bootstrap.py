"""`fleet serve` with auth on and no token in its store mints one admin token: printed once,
kept in `admin-token` (mode 0600) beside the SQLite file, never minted again, never logged."""
from __future__ import annotations

import socket
import stat
from pathlib import Path

import requests

from shared.devhost.process import running_server


def test_a_fresh_store_gets_one_admin_token_printed_once_and_kept_private(tmp_path):
    db = tmp_path / "fleet.db"
    token_file = tmp_path / "admin-token"
    with running_server(db=str(db), env={"FLEET_AUTH": None}, args=["--no-timers"]) as server:
        token = token_file.read_text().strip()
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert token.startswith("fleet_") and server.output().count(token) == 1
        answer = requests.get(f"{server.url}/fleet/queue-state?productId=p",
                              headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert answer.status_code == 200
        first_log = server.log()
        server.restart()
        assert token_file.read_text().strip() == token  # a usable token exists: none minted
        assert token not in server.output()
        for log in (first_log, server.log()):
            assert token not in log and token.split("_", 2)[2] not in log  # the whole secret (it may hold "_")


def test_with_auth_off_nothing_is_minted_and_every_start_warns(tmp_path):
    with running_server(db=str(tmp_path / "fleet.db"), env={"FLEET_AUTH": "off"}, args=["--no-timers"]) as server:
        assert not Path(tmp_path / "admin-token").exists()
        assert "FLEET_AUTH=off" in server.log() or "FLEET_AUTH=off" in server.output()


def test_a_store_out_of_reach_at_start_is_served_as_503_not_a_failed_start(tmp_path):
    # Regression: with auth on, the start's check for a token failed on the store and the
    # process exited with a traceback; with auth off the same host served 503s until it was back
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    env = {"FLEET_AUTH": None, "FLEET_STORE": "cosmos", "COSMOS_ENDPOINT": f"https://127.0.0.1:{closed}/",
           "COSMOS_KEY": "a2V5", "FLEET_STORE_TIMEOUT_SECONDS": "1"}
    with running_server(db=str(tmp_path / "fleet.db"), env=env, args=["--no-timers"]) as server:
        answer = requests.get(f"{server.url}/fleet/queue-state?productId=p",
                              headers={"Authorization": "Bearer fleet_0123456789abcdef_x"}, timeout=30)
        assert answer.status_code == 503 and answer.headers.get("Retry-After")
        assert "could not check for an API token" in server.log() + server.output()
        assert not (tmp_path / "admin-token").exists()
