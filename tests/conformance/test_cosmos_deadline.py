"""`CosmosStore`'s deadline and its edge: every primitive answers within the store deadline
when the endpoint stalls (the local Cosmos server behind a proxy that stops moving bytes),
works again once it flows, and refusals become `StoreUnavailable`."""
from __future__ import annotations

import gc
import time
from collections.abc import Iterator

import pytest
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError, ServiceResponseError
from azure.cosmos import exceptions as cosmos_exceptions

from fleet import errors
from fleet.errors import StoreFault
from fleet.store import Query
from shared import config
from shared.stores import cosmos_store
from shared.stores.cosmos_store import CosmosStore
from tests.support.cosmos import unverified_loopback
from tests.support.faults import cosmos_behind_proxy
from tests.support.proxy import TcpProxy

pytestmark = [unverified_loopback, pytest.mark.cosmos]

DEADLINE = 1.0
SLACK = 1.0


@pytest.fixture(scope="module")
def stalling() -> Iterator[tuple[CosmosStore, TcpProxy]]:
    """A store whose every call passes a proxy the test can pause."""
    with cosmos_behind_proxy() as (server, proxy, endpoint):
        store = CosmosStore(endpoint, key=server.key, database="deadline", verify_tls=False, create=True,
                            timeout=DEADLINE)
        store.upsert("factories", {"id": "f1"})
        yield store, proxy
        store.close()
        gc.collect()  # connections the stalls broke: finalize them here, not in a later test


PRIMITIVES = {
    "read": lambda s: s.read("factories", "f1", "f1"),
    "create": lambda s: s.create("factories", {"id": f"c{time.monotonic_ns()}"}),
    "replace": lambda s: s.replace("factories", {"id": "f1"}, '"stale"'),
    "upsert": lambda s: s.upsert("factories", {"id": "f2"}),
    "delete": lambda s: s.delete("factories", "gone", "gone"),
    "increment": lambda s: s.increment("jobs", "p", "queue-state", "version", 1, {"productId": "p"}),
    "query": lambda s: s.query(Query("factories", "f1")),
    "ping": lambda s: s.ping(),
}


@pytest.mark.parametrize("primitive", PRIMITIVES)
def test_a_stalled_endpoint_makes_every_call_busy_within_the_deadline(stalling, primitive):
    store, proxy = stalling
    call = PRIMITIVES[primitive]

    proxy.pause()
    started = time.monotonic()
    try:
        with pytest.raises(errors.StoreBusy) as busy:
            call(store)
        took = time.monotonic() - started
    finally:
        proxy.resume()

    assert busy.value.reason is StoreFault.TIMEOUT and busy.value.code == "store_busy"
    assert took < DEADLINE + SLACK  # the SDK alone would wait 65 s per attempt
    assert store.read("factories", "f1", "f1")["id"] == "f1"  # and it serves again at once


def refusal(status: int, sub_status: int | None = None) -> cosmos_exceptions.CosmosHttpResponseError:
    exc = cosmos_exceptions.CosmosHttpResponseError(status_code=status, message="refused")
    exc.headers = {}
    exc.sub_status = sub_status
    return exc


@pytest.mark.parametrize(
    "status, sub_status, fault",
    [
        (401, None, StoreFault.DENIED),  # a key or token not accepted
        (403, None, StoreFault.DENIED),  # RBAC: the identity lacks the data-plane role
        (403, 3, StoreFault.READ_ONLY),  # write forbidden: a read-only region or account
        (403, 1014, StoreFault.FULL),  # the logical partition reached its storage quota
    ],
)
def test_refusals_become_store_unavailable(status, sub_status, fault):
    domain = cosmos_store.converted(refusal(status, sub_status), "jobs/x")

    assert isinstance(domain, errors.StoreUnavailable) and domain.reason is fault
    assert "refused" not in domain.detail  # the SDK's message is logged, not answered


def test_a_deadline_the_sdk_ran_out_of_is_busy():
    with pytest.raises(errors.StoreBusy) as busy:
        with cosmos_store._converted("jobs/x"):
            raise cosmos_exceptions.CosmosClientTimeoutError()

    assert busy.value.reason is StoreFault.TIMEOUT


@pytest.mark.parametrize("raised, code", [
    (ServiceRequestError("HTTPSConnection(host='10.0.0.7', port=443): Failed to establish"), "store_busy"),
    (ServiceResponseError("HTTPSConnectionPool(host='10.0.0.7', port=443): Read timed out"), "store_busy"),
    (ClientAuthenticationError("token for https://10.0.0.7:443 refused"), "store_unavailable"),
])
def test_the_sdks_words_about_the_endpoint_reach_the_log_not_the_answer(raised, code, caplog):
    with pytest.raises(errors.FleetError) as failed:
        with cosmos_store._converted("jobs/x"):
            raise raised

    assert failed.value.code == code and "10.0.0.7" not in failed.value.detail
    assert "10.0.0.7" in caplog.text


def test_the_deadline_bounds_each_attempt_and_the_throttling_waits():
    assert cosmos_store.deadline_options(2.0) == {
        "timeout": 2.0,
        "connection_timeout": 2.0,
        "read_timeout": 2.0,
        "retry_backoff_max": 2.0,
        "retry_connect": 1,
        "retry_read": 1,
    }


def test_the_cosmos_store_gets_the_deadline(cosmos_server):
    env = {**cosmos_server.environ(database="deadline-env"), "FLEET_STORE_TIMEOUT_SECONDS": "3"}

    store = config.store_from(env)
    try:
        assert isinstance(store, CosmosStore) and store.timeout == 3.0
    finally:
        store.close()
        gc.collect()
