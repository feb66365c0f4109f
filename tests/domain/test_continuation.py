"""Continuation tokens: what a listing hands out opens only for the same listing, on any
coordinator over the same store, and nothing a client makes up opens at all."""
from __future__ import annotations

import pytest

from fleet import continuation, errors, outage
from fleet.context import Context
from fleet.store import CountingStore
from shared.stores.sqlite_store import SqliteStore

FILTERS = {"stage": "queued", "productId": "acme"}


@pytest.fixture
def coordinators(tmp_path):
    """Two coordinators (two stores, two contexts) over one database."""
    stores = [CountingStore(SqliteStore(str(tmp_path / "fleet.db"))) for _ in range(2)]
    yield [Context(store) for store in stores]
    for store in stores:
        store.close()


def test_a_token_opens_on_every_coordinator_of_the_store(coordinators):
    first, second = coordinators
    token = continuation.seal(first, "50", FILTERS)

    assert continuation.unseal(second, token, FILTERS) == "50"
    assert "50" not in token.split(".")[1]


def test_the_secret_is_made_once_kept_in_the_reserved_partition_and_read_once(coordinators):
    ctx = coordinators[0]
    for n in range(5):
        continuation.unseal(ctx, continuation.seal(ctx, str(n), FILTERS), FILTERS)

    doc = ctx.store.read("jobs", outage.STATE_PARTITION, continuation.SECRET_ID)
    assert len(doc["key"]) >= 44  # 32 random bytes
    assert ctx.store.calls["create:jobs"] == 1
    assert ctx.store.calls["read:jobs"] == 2  # the miss before the create, and this test's own


@pytest.mark.parametrize("filters", [
    {"stage": None, "productId": "acme"},
    {"stage": "queued", "productId": "acme2"},
    {"stage": "queued", "productId": None},
])
def test_a_token_does_not_open_for_other_filters(coordinators, filters):
    ctx = coordinators[0]
    token = continuation.seal(ctx, "50", FILTERS)

    with pytest.raises(errors.ValidationFailed):
        continuation.unseal(ctx, token, filters)


@pytest.mark.parametrize("forge", [
    lambda token: "50",
    lambda token: token + "A",
    lambda token: token.replace(".", "..", 1),
    lambda token: token.split(".")[0],
    lambda token: f"{token.split('.')[0]}.{token.split('.')[0]}",
    lambda token: "NTE." + token.split(".")[1],  # "51" under the mac of "50"
    lambda token: token[:-1] + ("B" if token[-1] != "B" else "C"),
    lambda token: "x" * (continuation.MAX_LENGTH + 1),
    lambda token: "\u00e9." + token.split(".")[1],
])
def test_nothing_else_opens(coordinators, forge):
    ctx = coordinators[0]
    token = continuation.seal(ctx, "50", FILTERS)

    with pytest.raises(errors.ValidationFailed) as refused:
        continuation.unseal(ctx, forge(token), FILTERS)
    assert refused.value.errors == [{"field": "continuation", "message": "invalid token"}]
