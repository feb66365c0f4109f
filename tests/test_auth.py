"""Authentication at the HTTP edge: bearer tokens in every mode but `off`, and App Service
Authentication's principal header trusted only in `easyauth` mode."""
from __future__ import annotations

import base64
import json

import pytest

from fleet import errors, tokens
from fleet.clock import FixedClock
from fleet.context import Context
from fleet.principals import ANONYMOUS, Principal, Role
from shared import auth
from shared.stores.sqlite_store import SqliteStore


@pytest.fixture
def ctx():
    store = SqliteStore(":memory:")
    yield Context(store, FixedClock("2026-01-05T09:00:00.000Z"))
    store.close()


def easy_auth(*roles: str, name: str = "ann@example.com", oid: str = "oid-1") -> str:
    claims = [{"typ": "roles", "val": r} for r in roles]
    claims += [{"typ": "name", "val": name}, {"typ": auth.OBJECT_ID_CLAIM, "val": oid}]
    payload = {"auth_typ": "aad", "claims": claims, "name_typ": "name", "role_typ": "roles"}
    return base64.b64encode(json.dumps(payload).encode()).decode()


@pytest.mark.parametrize("raw, mode", [(None, "tokens"), ("", "tokens"), ("TOKENS", "tokens"),
                                       (" easyauth ", "easyauth"), ("off", "off")])
def test_the_mode_is_tokens_unless_said_otherwise(raw, mode):
    assert auth.mode_from({} if raw is None else {"FLEET_AUTH": raw}) == auth.Mode(mode)


def test_an_unknown_mode_is_refused_at_start():
    with pytest.raises(ValueError, match="FLEET_AUTH"):
        auth.mode_from({"FLEET_AUTH": "maybe"})


def test_off_acts_as_the_anonymous_admin(ctx):
    assert auth.principal_of(ctx, auth.Mode.OFF, {}) == ANONYMOUS


@pytest.mark.parametrize("mode", [auth.Mode.TOKENS, auth.Mode.EASYAUTH])
def test_a_bearer_token_is_its_principal(ctx, mode):
    created = tokens.create(ctx, Role.SUBMITTER, name="ci", products=["web"])
    principal = auth.principal_of(ctx, mode, {"Authorization": f"Bearer {created.token}"})
    assert (principal.id, principal.role, principal.products) == (created.id, Role.SUBMITTER, ("web",))


@pytest.mark.parametrize("headers", [{}, {"authorization": "Basic abc"}, {"Authorization": "Bearer "},
                                     {"Authorization": "Bearer fleet_nope"}])
def test_no_or_a_bad_credential_is_unauthorized(ctx, headers):
    with pytest.raises(errors.Unauthorized):
        auth.principal_of(ctx, auth.Mode.TOKENS, headers)


def test_the_platform_header_is_not_trusted_in_tokens_mode(ctx):
    with pytest.raises(errors.Unauthorized):
        auth.principal_of(ctx, auth.Mode.TOKENS, {"X-MS-CLIENT-PRINCIPAL": easy_auth("Fleet.Admin")})


def test_easy_auth_takes_the_role_and_name_from_the_platform(ctx):
    principal = auth.principal_of(ctx, auth.Mode.EASYAUTH, {"X-MS-CLIENT-PRINCIPAL": easy_auth("Fleet.Reviewer")})
    assert principal == Principal(id="oid-1", name="ann@example.com", role=Role.REVIEWER)


def test_an_easy_auth_name_is_cut_to_a_principals_name_a_gate_can_list(ctx):
    # A display name of 120 characters whose 100th is a space: cut, and trimmed
    long = "A" * 99 + " " + "B" * 20
    principal = auth.easy_auth_principal(easy_auth("Fleet.Reviewer", name=long))
    assert principal.name == "A" * 99
    assert auth.easy_auth_principal(easy_auth("Fleet.Reviewer", name="   ")).name == "oid-1"


@pytest.mark.parametrize("given, name", [
    ("Jo\u00adhn Smith", "John Smith"),  # a soft hyphen
    ("Ann\u200b", "Ann"),  # a trailing zero-width space
    ("\u3164", "oid-1"),  # a lone Hangul filler: nothing left, the user id instead
    ("A" * 99 + "\u200bB", "A" * 99 + "B"),
])
def test_an_easy_auth_name_loses_what_no_principal_name_holds(ctx, given, name):
    assert auth.easy_auth_principal(easy_auth("Fleet.Reviewer", name=given)).name == name


def test_easy_auth_app_roles_naming_products_scope_the_principal(ctx):
    header = easy_auth("Fleet.Operator.web", "Fleet.Operator.api", "Fleet.Viewer")
    principal = auth.easy_auth_principal(header)
    assert (principal.role, principal.products) == (Role.OPERATOR, ("api", "web"))
    assert auth.easy_auth_principal(easy_auth("Fleet.Operator.web", "Fleet.Operator")).products is None


def test_easy_auth_picks_the_most_powerful_role():
    assert auth.easy_auth_principal(easy_auth("Fleet.Viewer", "Fleet.Admin")).role == Role.ADMIN


@pytest.mark.parametrize("roles", [(), ("Reader",), ("Fleet.Factory",), ("Fleet.Nobody",)])
def test_easy_auth_without_a_fleet_role_is_forbidden(roles):
    with pytest.raises(errors.Forbidden):
        auth.easy_auth_principal(easy_auth(*roles))


@pytest.mark.parametrize("header", ["not base64!", base64.b64encode(b"[1, 2]").decode(), base64.b64encode(b"{").decode()])
def test_an_unreadable_platform_header_is_unauthorized(header):
    with pytest.raises(errors.Unauthorized):
        auth.easy_auth_principal(header)
