"""API tokens: `Authorization: Bearer fleet_<id>_<secret>`, the same locally and on Azure.

A token is shown once, when it is created. The store keeps only the SHA-256 of its secret
(256 random bits, so a fast hash is enough), in the `tokens` container under the token's id,
so authenticating is one point read and a constant-time comparison. A process remembers the
records it read for `Settings.token_recheck_seconds` (`FLEET_TOKEN_RECHECK_SECONDS`, 60 by
default), so a busy token costs one point read a minute, not one a request: otherwise every
idle factory's poll would be two point reads, and every call one more. The secret is compared
and the expiry checked on every request either way. Revoking marks the document and drops the
record this process remembers, so the next request that presents the token here is refused;
another instance of a scaled-out app refuses it once its remembered record is that old.
`lastUsedAt` is written at most once an hour per token (`LAST_USED_RESOLUTION`): a replace of
the record, the dearest call a request could make, never on every request.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta
from typing import Any

from pydantic import Field

from fleet import clock, errors, memory, store
from fleet.context import Context
from fleet.jobs import PRODUCT_ID, Model, Time
from fleet.principals import Principal, Role, is_factory_id, is_principal_name

CONTAINER = "tokens"
PREFIX = "fleet"
#: How stale `lastUsedAt` may be before a request refreshes it.
LAST_USED_RESOLUTION = timedelta(hours=1)
#: Token records a process remembers; past this, it forgets them all.
MAX_REMEMBERED = 1024
_TOKEN = re.compile(r"fleet_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_ID = re.compile(r"[0-9a-f]{16}")
_PRODUCT = re.compile(PRODUCT_ID.rstrip("$") + r"\Z")


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
    check(role, name, products, factory_id, expires_in)
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
    now = ctx.clock.now()
    known, forgets = _recalled(ctx, id, now)
    fresh = known is None
    if known is None:
        try:
            doc = ctx.store.read(CONTAINER, id, id)
        except errors.NotFound:
            raise errors.Unauthorized("the bearer token is not valid") from None
        known = _Known(doc, Token.from_doc(doc), now)
    if not hmac.compare_digest(known.doc.get("hash", ""), _hash(secret)) or not known.record.usable(now):
        raise errors.Unauthorized("the bearer token is not valid")
    last_used = known.record.last_used_at
    if last_used is None or now - last_used >= LAST_USED_RESOLUTION:
        _touch(ctx, known.doc, now)
        _forget(ctx, id)  # the record changed: the next request reads it again
    elif fresh:
        _remember(ctx, id, known, forgets)
    return known.record.principal()


def list_all(ctx: Context) -> list[Token]:
    """Every token's record, newest first."""
    docs = store.query_all(ctx.store, store.Query(CONTAINER, None, limit=200))
    return sorted((Token.from_doc(d) for d in docs), key=lambda t: t.created_at, reverse=True)


def id_of(given: str) -> str:
    """The token id `given` names: an id as it is, a whole token as its id (so a tool may take
    either without ever showing the secret back)."""
    match = _TOKEN.fullmatch(given.strip())
    return match.group(1) if match else given.strip()


def find(ctx: Context, id: str) -> Token:
    """The record of token `id` (never the token); `NotFound` if there is no such token."""
    return Token.from_doc(_read(ctx, id))


def revoke(ctx: Context, id: str) -> Token:
    """Mark the token revoked (idempotent); `NotFound` if there is no such token."""
    now = ctx.clock.now()

    def decide(doc: dict[str, Any]) -> dict[str, Any] | None:
        return None if doc.get("revokedAt") else {**doc, "revokedAt": clock.format(now)}

    _check_id(id)
    try:
        return Token.from_doc(store.update(ctx.store, "tokens", id, id, decide))
    except errors.NotFound:
        raise errors.NotFound(f"no token {id!r}") from None
    finally:
        _forget(ctx, id)


def _read(ctx: Context, id: str) -> dict[str, Any]:
    _check_id(id)
    try:
        return ctx.store.read(CONTAINER, id, id)
    except errors.NotFound:
        raise errors.NotFound(f"no token {id!r}") from None


def _check_id(id: str) -> None:
    if not _ID.fullmatch(id):
        # Never echo it: what was given may be a whole token, secret and all.
        raise errors.NotFound("no such token: a token's id is the 16 hex digits after fleet_")


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


class _Known:
    """A token's document as a read found it, its record, and when (by the reader's clock)."""

    __slots__ = ("doc", "record", "read_at")

    def __init__(self, doc: dict[str, Any], record: Token, read_at: datetime) -> None:
        self.doc, self.record, self.read_at = doc, record, read_at


#: The token records this process read, by id. A revocation or a `lastUsedAt` write forgets
#: one: a read that began before it is not remembered, for it may hold the record from before.
_remembered: memory.Memory[_Known] = memory.Memory(MAX_REMEMBERED)


def _recalled(ctx: Context, id: str, now: datetime) -> tuple[_Known | None, int]:
    """The token's record as this process read it within `token_recheck_seconds`, if it did,
    and the count of forgets a read made now would be remembered under (`_remember`)."""
    known, forgets = _remembered.recall(ctx.store, id)
    if known is None or not 0 <= (now - known.read_at).total_seconds() < ctx.settings.token_recheck_seconds:
        return None, forgets
    return known, forgets


def _remember(ctx: Context, id: str, known: _Known, forgets: int) -> None:
    """Remember `known`, read after `forgets` forgets, unless a record was forgotten since."""
    if ctx.settings.token_recheck_seconds > 0:
        _remembered.remember(ctx.store, id, known, since=forgets)


def _forget(ctx: Context, id: str) -> None:
    _remembered.forget(ctx.store, id)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check(role, name, products, factory_id, expires_in) -> None:
    """`ValidationFailed`, naming the field, unless a token of these fields may be minted."""
    def refuse(field: str, message: str) -> None:
        raise errors.ValidationFailed(message, [{"field": field, "message": message}])

    if role == Role.FACTORY and not factory_id:
        refuse("factoryId", "a factory token names the factory it speaks for")
    if role != Role.FACTORY and factory_id:
        refuse("factoryId", "only a factory token names a factory")
    if factory_id and not is_factory_id(factory_id):
        refuse("factoryId", "not a valid factory id")
    if products is not None and not products:
        refuse("products", "name at least one product, or leave products out for a token of every product")
    for product in products or ():
        if not _PRODUCT.fullmatch(product):
            refuse("products", f"{product[:80]!r} is not a valid product id")
    if name is not None and not is_principal_name(name):
        refuse("name", "a name is 1 to 100 characters, none of them a control or an invisible one, with no space at either end")
    if expires_in is not None and expires_in <= timedelta(0):
        refuse("expiresIn", "an expiry lies in the future")
