"""Continuation tokens as clients see them: opaque and tamper-evident.

A store's own continuation token says where its next page starts (the last document's order
values, `shared.stores.keyset`), and a client could edit it to page from anywhere, or carry
it over to a listing with other filters. So a listing hands out `seal(...)` instead: the store's
token and an HMAC-SHA256 over it and the listing's filters, base64url, `{token}.{mac}`. `unseal`
gives the store's token back only for a token this fleet sealed for the same filters.

The key is shared by every coordinator over one store: a random secret kept in the store itself,
in the reserved partition no product can have (`outage.STATE_PARTITION`), created by whichever
coordinator needs it first, and read once per process.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import threading
import weakref
from typing import Any

from fleet import errors, outage
from fleet.context import Context
from fleet.store import Store

SECRET_ID = "continuation-secret"
#: Longest token accepted; the stores' own tokens are far shorter.
MAX_LENGTH = 4096

_lock = threading.Lock()
#: The last store whose secret was read, and that secret (one store per process in service).
_cached: tuple[weakref.ref[Store], bytes] | None = None


def seal(ctx: Context, store_token: str, filters: dict[str, Any]) -> str:
    """The token a client gets for the store's `store_token` of a listing with `filters`."""
    return f"{_b64(store_token.encode())}.{_b64(_mac(ctx, store_token, filters))}"


def unseal(ctx: Context, token: str, filters: dict[str, Any]) -> str:
    """The store's token inside `token`; `ValidationFailed` (field `continuation`) for a token
    that was not sealed by this fleet for a listing with these `filters`."""
    try:
        if len(token) > MAX_LENGTH:
            raise ValueError("too long")
        body, mac = token.split(".")
        store_token = _unb64(body).decode("utf-8")
        if hmac.compare_digest(_unb64(mac), _mac(ctx, store_token, filters)):
            return store_token
    except (ValueError, binascii.Error):  # UnicodeDecodeError is a ValueError
        pass
    raise errors.ValidationFailed(
        "continuation is not a token this listing handed out", [{"field": "continuation", "message": "invalid token"}]
    )


def keyed_digest(ctx: Context, purpose: str, message: str) -> str:
    """HMAC-SHA256 of `message` for `purpose`, under the same shared key, hex: what else must be
    tamper-evident across coordinators (the dashboard's form tokens). Never equal to a seal's."""
    return hmac.new(_secret(ctx.store), f"{purpose}\0{message}".encode(), hashlib.sha256).hexdigest()


def _mac(ctx: Context, store_token: str, filters: dict[str, Any]) -> bytes:
    message = json.dumps([store_token, filters], sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(_secret(ctx.store), message, hashlib.sha256).digest()


def _secret(store: Store) -> bytes:
    global _cached
    with _lock:
        if _cached is not None and _cached[0]() is store:
            return _cached[1]
    key = base64.b64decode(_read_or_create(store)["key"])
    with _lock:
        _cached = (weakref.ref(store), key)
    return key


def _read_or_create(store: Store) -> dict[str, Any]:
    try:
        return store.read("jobs", outage.STATE_PARTITION, SECRET_ID)
    except errors.NotFound:
        pass
    doc = {"id": SECRET_ID, "productId": outage.STATE_PARTITION, "key": base64.b64encode(secrets.token_bytes(32)).decode()}
    try:
        return store.create("jobs", doc)
    except errors.Conflict:  # another coordinator created it first: use theirs
        return store.read("jobs", outage.STATE_PARTITION, SECRET_ID)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    # One spelling per token: no padding, no `+` or `/`, no stray bits in the last character.
    if _b64(raw) != text:
        raise ValueError("not canonical base64url")
    return raw
