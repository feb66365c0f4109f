"""Principals and API tokens: the role table, product scopes, factory binding, and tokens that
are random, stored only as a hash, expire, and stop working once they are revoked (at once on
the process that revoked them, within the recheck window elsewhere)."""
from __future__ import annotations

import dataclasses
import json
import threading
from datetime import timedelta

import pytest

from fleet import errors, tokens
from fleet.clock import FixedClock
from fleet.context import Context, Settings
from fleet.principals import GRANTS, Permission, Principal, Role
from fleet.store import CountingStore
from shared.stores.sqlite_store import SqliteStore


@pytest.fixture
def ctx():
    store = SqliteStore(":memory:")
    yield Context(store, FixedClock("2026-01-05T09:00:00.000Z"))
    store.close()


# The role table, as the identities issue states it.
@pytest.mark.parametrize(
    "role, allowed",
    [
        (Role.ADMIN, set(Permission)),
        (Role.OPERATOR, {"read", "submit", "operate", "request_review", "set_weights", "manage_budgets"}),
        (Role.SUBMITTER, {"read", "submit"}),
        (Role.REVIEWER, {"read", "review"}),
        (Role.FACTORY, {"read", "work"}),
        (Role.VIEWER, {"read"}),
    ],
)
def test_each_role_holds_exactly_its_permissions(role, allowed):
    principal = Principal(id="p", name="p", role=role, factory_id="f1" if role == Role.FACTORY else None)
    assert {p for p in Permission if principal.can(p)} == {Permission(p) for p in allowed}
    assert GRANTS[role] == {Permission(p) for p in allowed}


def test_a_missing_permission_is_forbidden_and_named():
    viewer = Principal(id="v", name="v", role=Role.VIEWER)
    with pytest.raises(errors.Forbidden) as refused:
        viewer.require(Permission.OPERATE)
    assert "operate" in refused.value.detail and refused.value.extra == {"permission": "operate"}


def test_a_product_scope_limits_what_is_seen():
    scoped = Principal(id="s", name="s", role=Role.OPERATOR, products=("web",))
    assert scoped.sees("web") and not scoped.sees("api") and not scoped.sees(None)
    assert Principal(id="a", name="a", role=Role.OPERATOR).sees("api")


def test_a_factory_speaks_only_for_itself_and_sees_only_its_own_leases():
    factory = Principal(id="f", name="f", role=Role.FACTORY, factory_id="f1")
    assert factory.speaks_for("f1") and not factory.speaks_for("f2")
    assert factory.sees_lease_of("f1") and not factory.sees_lease_of("f2")
    operator = Principal(id="o", name="o", role=Role.OPERATOR)
    assert operator.sees_lease_of("f2") and not operator.speaks_for("f2")
    assert not Principal(id="v", name="v", role=Role.VIEWER).sees_lease_of("f1")


def test_a_created_token_authenticates_as_its_principal(ctx):
    created = tokens.create(ctx, Role.FACTORY, name="gpu box", products=["web"], factory_id="f1")
    principal = tokens.authenticate(ctx, created.token)
    assert principal == Principal(id=created.id, name="gpu box", role=Role.FACTORY, products=("web",), factory_id="f1")


def test_tokens_are_random_with_256_bits_and_only_their_hash_is_stored(ctx):
    a, b = tokens.create(ctx, Role.VIEWER), tokens.create(ctx, Role.VIEWER)
    assert a.token != b.token
    secret = a.token.split("_", 2)[2]
    assert len(secret) >= 43  # 32 random bytes, base64url
    stored = json.dumps(ctx.store.read("tokens", a.id, a.id))
    assert secret not in stored and a.token not in stored
    assert "token" not in tokens.list_all(ctx)[0].to_doc()


@pytest.mark.parametrize(
    "presented",
    ["", "nope", "fleet_0123456789abcdef_" + "x" * 43, "Bearer x", "fleet_zz_" + "a" * 43],
)
def test_an_unknown_or_malformed_token_is_unauthorized(ctx, presented):
    with pytest.raises(errors.Unauthorized):
        tokens.authenticate(ctx, presented)


def test_a_token_with_a_wrong_secret_is_unauthorized(ctx):
    created = tokens.create(ctx, Role.ADMIN)
    forged = created.token[:-1] + ("A" if created.token[-1] != "A" else "B")
    with pytest.raises(errors.Unauthorized):
        tokens.authenticate(ctx, forged)


def test_revoking_stops_the_next_request(ctx):
    created = tokens.create(ctx, Role.OPERATOR)
    tokens.authenticate(ctx, created.token)
    assert tokens.revoke(ctx, created.id).revoked_at is not None
    with pytest.raises(errors.Unauthorized):
        tokens.authenticate(ctx, created.token)
    assert tokens.revoke(ctx, created.id).revoked_at is not None  # idempotent


def test_an_expired_token_is_unauthorized(ctx):
    created = tokens.create(ctx, Role.VIEWER, expires_in=timedelta(days=30))
    ctx.clock.advance(timedelta(days=30).total_seconds() - 1)
    tokens.authenticate(ctx, created.token)
    ctx.clock.advance(1)
    with pytest.raises(errors.Unauthorized):
        tokens.authenticate(ctx, created.token)


def test_last_used_is_written_at_most_once_an_hour(ctx):
    created = tokens.create(ctx, Role.VIEWER)
    etag = lambda: ctx.store.read("tokens", created.id, created.id)["_etag"]  # noqa: E731
    tokens.authenticate(ctx, created.token)
    first = etag()
    for _ in range(59):
        ctx.clock.advance(60)
        tokens.authenticate(ctx, created.token)
    assert etag() == first
    ctx.clock.advance(60)
    tokens.authenticate(ctx, created.token)
    assert etag() != first
    assert tokens.list_all(ctx)[0].last_used_at == ctx.clock.now()


def counted(ctx) -> Context:
    return dataclasses.replace(ctx, store=CountingStore(ctx.store))


def calls(ctx) -> dict[str, int]:
    return dict(ctx.store.calls)


def test_a_token_read_is_trusted_for_the_recheck_window_then_read_again(ctx):
    created = tokens.create(ctx, Role.VIEWER)
    ctx = counted(ctx)
    tokens.authenticate(ctx, created.token)  # read, and lastUsedAt written
    tokens.authenticate(ctx, created.token)  # read again: that write changed the record
    assert calls(ctx) == {"read:tokens": 2, "replace:tokens": 1}
    for _ in range(5):
        ctx.clock.advance(10)
        tokens.authenticate(ctx, created.token)
    assert calls(ctx) == {"read:tokens": 2, "replace:tokens": 1}  # remembered
    ctx.clock.advance(10)  # 60 s since it was read
    tokens.authenticate(ctx, created.token)
    assert calls(ctx) == {"read:tokens": 3, "replace:tokens": 1}


def test_with_no_recheck_window_every_request_reads_the_token(ctx):
    created = tokens.create(ctx, Role.VIEWER)
    ctx = dataclasses.replace(counted(ctx), settings=Settings(token_recheck_seconds=0))
    for _ in range(3):
        tokens.authenticate(ctx, created.token)
    assert calls(ctx)["read:tokens"] == 3


def test_a_remembered_token_still_needs_its_secret_and_expires_on_time(ctx):
    created = tokens.create(ctx, Role.ADMIN, expires_in=timedelta(seconds=90))
    ctx.clock.advance(50)
    ctx = counted(ctx)
    tokens.authenticate(ctx, created.token)
    tokens.authenticate(ctx, created.token)  # remembered from here on
    reads = calls(ctx)["read:tokens"]
    forged = created.token[:-1] + ("A" if created.token[-1] != "A" else "B")
    with pytest.raises(errors.Unauthorized):
        tokens.authenticate(ctx, forged)
    ctx.clock.advance(40)
    with pytest.raises(errors.Unauthorized):
        tokens.authenticate(ctx, created.token)
    assert calls(ctx)["read:tokens"] == reads  # both refused from what was remembered


class Stalling:
    """The store, with a token read that returns only when the test lets it (`go`)."""

    def __init__(self, inner) -> None:
        self.inner, self.stall = inner, False
        self.read_done, self.go = threading.Event(), threading.Event()

    def read(self, container, partition_key, id):
        doc = self.inner.read(container, partition_key, id)
        if container == "tokens" and self.stall:
            self.read_done.set()
            assert self.go.wait(10)
        return doc

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_read_that_began_before_a_revocation_here_is_not_remembered(ctx):
    created = tokens.create(ctx, Role.OPERATOR)
    ctx = dataclasses.replace(ctx, store=Stalling(ctx.store))
    tokens.authenticate(ctx, created.token)  # its lastUsedAt written: nothing remembered yet
    # A request reads the record, still unrevoked, and is held before it can remember it
    ctx.store.stall = True
    answered: list = []
    racing = threading.Thread(target=lambda: answered.append(tokens.authenticate(ctx, created.token)))
    racing.start()
    assert ctx.store.read_done.wait(10)
    ctx.store.stall = False
    tokens.revoke(ctx, created.id)  # meanwhile, the token is revoked on this process
    ctx.store.go.set()
    racing.join(10)
    assert not racing.is_alive() and answered[0].id == created.id  # it began before: it was let in
    # The next request is refused: what the held request read was not remembered
    with pytest.raises(errors.Unauthorized):
        tokens.authenticate(ctx, created.token)


def test_a_token_revoked_by_another_process_is_refused_here_within_the_recheck_window(ctx):
    created = tokens.create(ctx, Role.OPERATOR)
    tokens.authenticate(ctx, created.token)
    tokens.authenticate(ctx, created.token)
    # Another instance revokes it (its own store client: this process's memory is not told)
    tokens.revoke(Context(CountingStore(ctx.store), ctx.clock), created.id)
    ctx.clock.advance(59)
    assert tokens.authenticate(ctx, created.token).id == created.id
    ctx.clock.advance(1)
    with pytest.raises(errors.Unauthorized):
        tokens.authenticate(ctx, created.token)


@pytest.mark.parametrize(
    "role, fields, field",
    [
        (Role.FACTORY, {}, "factoryId"),
        (Role.OPERATOR, {"factory_id": "f1"}, "factoryId"),
        (Role.FACTORY, {"factory_id": "bad id"}, "factoryId"),
        (Role.VIEWER, {"products": ["web\n"]}, "products"),
        (Role.VIEWER, {"products": []}, "products"),  # not "every product"
        (Role.FACTORY, {"factory_id": "gpu/1"}, "factoryId"),  # no Cosmos document id holds a /
        (Role.VIEWER, {"name": "\x00"}, "name"),
        (Role.VIEWER, {"name": "ann\u2028"}, "name"),  # a line separator
        (Role.VIEWER, {"name": "\u202eann"}, "name"),  # a direction override
        (Role.VIEWER, {"name": "ann "}, "name"),  # "ann" and "ann " would look alike
        (Role.VIEWER, {"name": "x" * 101}, "name"),
        (Role.VIEWER, {"expires_in": timedelta(0)}, "expiresIn"),
    ],
)
def test_a_token_is_refused_unless_its_fields_make_sense(ctx, role, fields, field):
    with pytest.raises(errors.ValidationFailed) as refused:
        tokens.create(ctx, role, **fields)
    assert refused.value.errors[0]["field"] == field


def test_a_name_with_spaces_inside_is_a_name(ctx):
    assert tokens.create(ctx, Role.REVIEWER, name="Ann Smith").name == "Ann Smith"


def test_revoking_an_unknown_token_is_not_found(ctx):
    with pytest.raises(errors.NotFound):
        tokens.revoke(ctx, "0123456789abcdef")
    with pytest.raises(errors.NotFound):
        tokens.revoke(ctx, "../etc")


def test_bootstrap_asks_whether_any_token_is_usable(ctx):
    assert not tokens.any_usable(ctx)
    created = tokens.create(ctx, Role.ADMIN)
    assert tokens.any_usable(ctx)
    tokens.revoke(ctx, created.id)
    assert not tokens.any_usable(ctx)
