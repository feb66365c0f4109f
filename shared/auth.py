"""Who a request acts as: authentication at the HTTP edge, by `FLEET_AUTH` mode.

- `tokens` (the default): `Authorization: Bearer <token>`, an API token from `fleet.tokens`.
- `easyauth`: as `tokens`, and also App Service Authentication's `X-MS-CLIENT-PRINCIPAL`
  header (Entra ID app roles in its `roles` claims). That header is trusted only in this mode,
  where the platform strips any copy a client sends and sets its own.
- `off`: every request acts as `fleet.principals.ANONYMOUS` (an admin); a warning is logged at
  every start.

A missing, unknown, expired or revoked credential is `Unauthorized` (401 with
`WWW-Authenticate: Bearer`). The token itself never reaches a log line or an error body.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from enum import Enum
from pathlib import Path
from typing import Mapping

from fleet import errors, principals, tokens
from fleet.context import Context
from fleet.principals import ANONYMOUS, Principal, Role

log = logging.getLogger("fleet.auth")

EASY_AUTH_HEADER = "x-ms-client-principal"
#: Entra ID app role values: `Fleet.<Role>` for every product, `Fleet.<Role>.<productId>` for
#: one (a user may hold several of one role to reach several products). Factories are not
#: people: they use API tokens, so there is no `Fleet.Factory` app role.
APP_ROLE_PREFIX = "Fleet."
PEOPLE = (Role.ADMIN, Role.OPERATOR, Role.SUBMITTER, Role.REVIEWER, Role.VIEWER)
OBJECT_ID_CLAIM = "http://schemas.microsoft.com/identity/claims/objectidentifier"


class Mode(str, Enum):
    TOKENS = "tokens"  # bearer API tokens (the default)
    EASYAUTH = "easyauth"  # bearer tokens, and App Service Authentication's principal header
    OFF = "off"  # no authentication: every request is an admin (local experiments only)


def mode_from(env: Mapping[str, str]) -> Mode:
    raw = (env.get("FLEET_AUTH") or "tokens").strip().lower()
    try:
        return Mode(raw)
    except ValueError:
        raise ValueError(f"FLEET_AUTH must be tokens, easyauth or off, not {raw!r}") from None


def principal_of(ctx: Context, mode: Mode, headers: Mapping[str, str]) -> Principal:
    """The principal a request with these headers (any case) acts as, or `Unauthorized`."""
    if mode == Mode.OFF:
        return ANONYMOUS
    lowered = {k.lower(): v for k, v in headers.items()}
    authorization = lowered.get("authorization", "")
    if authorization:
        scheme, _, credential = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise errors.Unauthorized("send the token as Authorization: Bearer <token>")
        return tokens.authenticate(ctx, credential.strip())
    if mode == Mode.EASYAUTH and lowered.get(EASY_AUTH_HEADER):
        return easy_auth_principal(lowered[EASY_AUTH_HEADER])
    raise errors.Unauthorized()


def easy_auth_principal(header: str) -> Principal:
    """The principal App Service Authentication vouches for. Its role is the first of `PEOPLE`
    among its Fleet app roles; it is limited to the products its app roles of that role name,
    unless one of them names none."""
    try:
        payload = json.loads(base64.b64decode(header, validate=True))
        claims = payload.get("claims") or []
        role_type = payload.get("role_typ") or "roles"
        name_type = payload.get("name_typ") or "name"
    except (binascii.Error, ValueError, AttributeError):
        raise errors.Unauthorized("the platform's principal header could not be read") from None
    values: dict[str, list[str]] = {}
    for claim in claims if isinstance(claims, list) else []:
        if isinstance(claim, dict) and isinstance(claim.get("typ"), str) and isinstance(claim.get("val"), str):
            values.setdefault(claim["typ"], []).append(claim["val"])
    granted: dict[Role, set[str | None]] = {}
    for value in values.get(role_type, []) + (values.get("roles", []) if role_type != "roles" else []):
        role_name, _, product = value.removeprefix(APP_ROLE_PREFIX).partition(".")
        role = next((r for r in PEOPLE if value.startswith(APP_ROLE_PREFIX) and r.value == role_name.lower()), None)
        if role is not None:
            granted.setdefault(role, set()).add(product or None)
    role = next((r for r in PEOPLE if r in granted), None)
    if role is None:
        raise errors.Forbidden(f"the signed-in user holds no Fleet app role ({APP_ROLE_PREFIX}Operator, ...)")
    products = None if None in granted[role] else tuple(sorted(p for p in granted[role] if p))
    user_id = (values.get(OBJECT_ID_CLAIM) or values.get("oid") or values.get(name_type) or ["easyauth"])[0]
    name = (values.get(name_type) or values.get("preferred_username") or [user_id])[0]
    # Fitted to what a principal's name may be, so a gate can name the user.
    fitted = principals.fitted_name(name) or principals.fitted_name(user_id) or "easyauth"
    return Principal(id=user_id[:128], name=fitted, role=role, products=products)


def bootstrap(ctx: Context, token_file: Path) -> str | None:
    """With no usable token in the store, create one `admin` token, write it to `token_file`
    (mode 0600, replacing any old one) and return it, for the caller to print once. None when
    a usable token exists: bootstrap never mints a second admin behind an operator's back."""
    if tokens.any_usable(ctx):
        return None
    created = tokens.create(ctx, Role.ADMIN, name="bootstrap admin")
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.unlink(missing_ok=True)
    descriptor = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(created.token + "\n")
    return created.token
