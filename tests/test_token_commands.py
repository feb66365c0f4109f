"""`fleet tokens create|list|revoke` against a SQLite store, in-process: a file that is not
there is not taken for an empty store, and a token given whole is never shown back."""
from __future__ import annotations

import os

import pytest

from shared.devhost import cli


@pytest.fixture
def run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLEET_DB", raising=False)
    monkeypatch.setenv("FLEET_STORE", "sqlite")

    def run_(*argv: str) -> tuple[int, str, str]:
        code = cli.main(["tokens", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run_


def test_listing_or_revoking_where_there_is_no_store_says_so_and_creates_none(run, tmp_path):
    code, out, err = run("list")
    assert code == 1 and out == ""
    assert "no store at" in err and ".fleet/fleet.db" in err and "--db" in err
    assert run("revoke", "0123456789abcdef")[0] == 1
    assert not (tmp_path / ".fleet").exists()


def test_creating_a_token_in_a_new_store_warns_that_it_is_new(run, tmp_path):
    code, out, err = run("create", "--role", "viewer", "--db", str(tmp_path / "new.db"))
    assert code == 0 and out.startswith("fleet_")
    assert "this made one" in err
    code, out, err = run("create", "--role", "viewer", "--db", str(tmp_path / "new.db"))
    assert code == 0 and "this made one" not in err  # the store is there now
    assert run("list", "--db", str(tmp_path / "new.db"))[1].count(" active") == 2


def test_a_token_given_whole_to_revoke_is_revoked_by_its_id_and_never_printed(run, tmp_path):
    db = str(tmp_path / "fleet.db")
    token = run("create", "--role", "operator", "--db", db)[1].strip()
    code, out, err = run("revoke", token, "--db", db)
    assert code == 0 and f"token {token.split('_')[1]} revoked" in out
    secret = token.split("_", 2)[2]
    assert secret not in out + err
    # a mistyped token is refused without being shown back either
    code, out, err = run("revoke", token[:-2], "--db", db)
    assert code == 1 and secret[:-2] not in out + err and "16 hex digits" in err


def test_the_db_flag_leaves_the_environment_as_it_was(run, tmp_path):
    assert run("create", "--role", "viewer", "--db", str(tmp_path / "elsewhere.db"))[0] == 0
    assert "FLEET_DB" not in os.environ


def test_a_store_named_by_uri_is_not_looked_for_as_a_file(run, monkeypatch):
    monkeypatch.setenv("FLEET_DB", ":memory:")
    code, out, err = run("list")
    assert code == 0 and "no store" not in err


def test_a_refused_create_makes_no_store(run, tmp_path):
    code, out, err = run("create", "--role", "factory")  # a factory token names its factory
    assert code == 2 and out == "" and "--factory-id: a factory token names the factory" in err
    assert not (tmp_path / ".fleet").exists()
    assert run("list")[0] == 1  # still no store here
