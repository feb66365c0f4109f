"""The auth mode a process serves in: on by default, and off only when asked, loudly."""
from __future__ import annotations

import logging

from shared import auth, config
from tests.api.conftest import done, make_api


def test_auth_is_on_unless_fleet_auth_says_off(monkeypatch):
    monkeypatch.delenv("FLEET_AUTH", raising=False)
    config.use_auth(None)
    try:
        assert config.auth_mode() == auth.Mode.TOKENS
    finally:
        config.use_auth(None)


def test_with_auth_off_every_request_is_an_admin_and_every_start_warns(tmp_path, caplog):
    api = make_api(tmp_path)
    try:
        assert api.get("/fleet/jobs", token=None).status_code == 401
        config.use_auth(auth.Mode.OFF)
        with caplog.at_level(logging.WARNING, logger="fleet.config"):
            config.use(api.ctx)
        assert any("AUTHENTICATION IS OFF" in r.getMessage() for r in caplog.records)
        assert api.get("/fleet/jobs", token=None).status_code == 200
        assert api.post("/admin/functions/sweep_expired_leases", {"input": ""}, token=None).status_code == 202
    finally:
        done()
