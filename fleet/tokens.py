"""API tokens: `Authorization: Bearer fleet_<id>_<secret>`, the same locally and on Azure.

A token is shown once, when it is created. The store keeps only the SHA-256 of its secret
(256 random bits, so a fast hash is enough), in the `tokens` container under the token's id,
so authenticating is one point read and a constant-time comparison. Revoking marks the
document, and the next request that presents the token is refused. `lastUsedAt` is written at
most once a minute per token, never on every request.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta
from typing import Any

from pydantic import Field

from fleet import clock, errors, store
from fleet.context import Context
from fleet.jobs import PRODUCT_ID, Model, Time
from fleet.principals import Principal, Role

CONTAINER = "tokens"
PREFIX = "fleet"
#: How stale `lastUsedAt` may be before a request refreshes it.
LAST_USED_RESOLUTION = timedelta(seconds=60)
_TOKEN = re.compile(r"fleet_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_PRODUCT = re.compile(PRODUCT_ID.rstrip("$") + r"\Z")
_FACTORY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}")
_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,100}")


class Token(Model):
    """A token's record: everything about it but its secret."""

    id: str
    name: str
    role: Role
    products: tuple[str, ...] | None = None
    factory_id: str | None = None
    created_at: Time
    expires_at: Time | None = None
    last_used_at: Time | None = None
    revoked_at: Time | None = None

    def principal(self) -> Principal:
        return Principal(id=self.id, name=self.name, role=self.role, products=self.products, factory_id=self.factory_id)

    def usable(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


class TokenList(Model):
    """`GET /fleet/tokens`: every token's record, newest first (never a token itself)."""

    items: list[Token] = Field(default_factory=list)


class Created(Token):
    """The answer to creating a token: its record and the token itself, shown this once."""

    token: str


def create(
    ctx: Context,
    role: Role,
    *,
    name: str | None = None,
    products: list[str] | None = None,
    factory_id: str | None = None,
    expires_in: timedelta | None = None,
) -> Created:
    """Mint a token. A `factory` token names the one factory it speaks for; no other role does."""
    _check(role, name, products, factory_id, expires_in)
    now = ctx.clock.now()
    id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    record = Token(
        id=id,
        name=name or f"{role.value}-{id[:6]}",
        role=role,
        products=tuple(products) if products else None,
        factory_id=factory_id,
        created_at=now,
        expires_at=now + expires_in if expires_in else None,
    )
    ctx.store.create("tokens", {**record.to_doc(), "hash": _hash(secret)})
    return Created(**dict(record), token=f"{PREFIX}_{id}_{secret}")


def authenticate(ctx: Context, presented: str) -> Principal:
    """The principal `presented` stands for; `Unauthorized` if it is malformed, unknown,
    revoked or expired (one message for all: the caller learns nothing about which)."""
    match = _TOKEN.fullmatch(presented)
    if match is None:
        raise errors.Unauthorized("the bearer token is not valid")
    id, secret = match.groups()
    try:
        doc = ctx.store.read(CONTAINER, id, id)
    except errors.NotFound:
        raise errors.Unauthorized("the bearer token is not valid") from None
    now = ctx.clock.now()
    record = Token.from_doc(doc)
    if not hmac.compare_digest(doc.get("hash", ""), _hash(secret)) or not record.usable(now):
        raise errors.Unauthorized("the bearer token is not valid")
    if record.last_used_at is None or now - record.last_used_at >= LAST_USED_RESOLUTION:
        _touch(ctx, doc, now)
    return record.principal()


def list_all(ctx: Context) -> list[Token]:
    """Every token's record, newest first."""
    docs = store.query_all(ctx.store, store.Query(CONTAINER, None, limit=200))
    return sorted((Token.from_doc(d) for d in docs), key=lambda t: t.created_at, reverse=True)


def revoke(ctx: Context, id: str) -> Token:
    """Mark the token revoked (idempotent); `NotFound` if there is no such token."""
    now = ctx.clock.now()

    def decide(doc: dict[str, Any]) -> dict[str, Any] | None:
        return None if doc.get("revokedAt") else {**doc, "revokedAt": clock.format(now)}

    if not re.fullmatch(r"[0-9a-f]{16}", id):
        raise errors.NotFound(f"no token {id!r}")
    try:
        return Token.from_doc(store.update(ctx.store, "tokens", id, id, decide))
    except errors.NotFound:
        raise errors.NotFound(f"no token {id!r}") from None


def any_usable(ctx: Context) -> bool:
    """Whether any token could still be used (the bootstrap's question)."""
    now = ctx.clock.now()
    return any(t.usable(now) for t in list_all(ctx))


def _touch(ctx: Context, doc: dict[str, Any], now: datetime) -> None:
    """Record the use; losing a race or a busy store only leaves `lastUsedAt` a little old."""
    try:
        ctx.store.replace("tokens", {**doc, "lastUsedAt": clock.format(now)}, doc["_etag"])
    except (errors.PreconditionFailed, errors.NotFound, errors.StoreBusy):
        pass


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _check(role, name, products, factory_id, expires_in) -> None:
    def refuse(field: str, message: str) -> None:
        raise errors.ValidationFailed(message, [{"field": field, "message": message}])

    if role == Role.FACTORY and not factory_id:
        refuse("factoryId", "a factory token names the factory it speaks for")
    if role != Role.FACTORY and factory_id:
        refuse("factoryId", "only a factory token names a factory")
    if factory_id and not _FACTORY.fullmatch(factory_id):
        refuse("factoryId", "not a valid factory id")
    for product in products or ():
        if not _PRODUCT.fullmatch(product):
            refuse("products", f"{product[:80]!r} is not a valid product id")
    if name is not None and not _NAME.fullmatch(name):
        refuse("name", "a name is 1 to 100 printable characters")
    if expires_in is not None and expires_in <= timedelta(0):
        refuse("expiresIn", "an expiry lies in the future")
