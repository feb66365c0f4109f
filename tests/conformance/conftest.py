"""The `store` fixture: every adapter of the store port, one test run each.

- `sqlite`: a fresh SQLite file per test (WAL, a bounded connection pool, as `fleet serve` runs it).
- `cosmos`: `CosmosStore` through the real SDK, against the local server in a database created
  for this session, or against the account `COSMOS_ENDPOINT` names (its containers must exist:
  Bicep, or `COSMOS_CREATE=1` with a key). The Cosmos store is shared by the session; tests keep
  to their own partitions (`ns`), and on a real account what they wrote is deleted afterwards.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from fleet.store import PARTITION_KEYS, Store
from shared import config
from shared.stores.cosmos_store import CosmosStore
from shared.stores.local_cosmos import CosmosAccount
from shared.stores.sqlite_store import SqliteStore
from tests.support.cosmos import cosmos_account, cosmos_server  # noqa: F401 (fixtures)

STORES = ["sqlite", "cosmos"]


@pytest.fixture
def ns() -> str:
    """A prefix no other test uses: partition keys and ids start with it."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def cosmos_store(cosmos_account: CosmosAccount) -> Iterator[CosmosStore]:
    if cosmos_account.local:
        store = CosmosStore(
            cosmos_account.endpoint,
            key=cosmos_account.key,
            database=f"conformance-{uuid.uuid4().hex[:8]}",
            verify_tls=cosmos_account.verify_tls,
            create=True,
        )
    else:
        store = CosmosStore(**config.cosmos_settings(os.environ))
    yield store
    store.close()


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path, ns: str) -> Iterator[Store]:
    if request.param == "sqlite":
        sqlite = SqliteStore(str(tmp_path / "fleet.db"))
        yield sqlite
        sqlite.close()
        return
    account: CosmosAccount = request.getfixturevalue("cosmos_account")
    cosmos: CosmosStore = request.getfixturevalue("cosmos_store")
    yield cosmos
    if not account.local:
        _delete_namespace(cosmos, ns)


def _delete_namespace(store: CosmosStore, ns: str) -> None:
    """Remove what a test wrote to a real account: every document whose partition key is ns-…"""
    for container, field in PARTITION_KEYS.items():
        client = store._containers[container]
        rows = client.query_items(
            f'SELECT c.id, c["{field}"] AS pk FROM c WHERE STARTSWITH(c["{field}"], @ns)',
            parameters=[{"name": "@ns", "value": ns}],
            enable_cross_partition_query=True,
        )
        for row in list(rows):
            client.delete_item(item=row["id"], partition_key=row["pk"])
