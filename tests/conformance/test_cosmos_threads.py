"""`CosmosStore` shares one SDK client between the threads of a process, and the SDK keeps
the headers of the last response on it (`last_response_headers`): each call sets it to its
response's headers, stamps retry counts into it, and a query copies the headers it was
given. Shared by every thread, a call could stamp the very headers another thread's query was
copying (`RuntimeError: OrderedDict mutated during iteration`, after the service answered: a
500 for a write that was applied). The store gives each thread its own."""
from __future__ import annotations

import threading

import pytest
from azure.core.utils import CaseInsensitiveDict

from shared.stores.cosmos_store import CosmosStore
from tests.support.cosmos import unverified_loopback

pytestmark = [unverified_loopback, pytest.mark.cosmos]


@pytest.fixture(scope="module")
def store(cosmos_account):
    store = CosmosStore(cosmos_account.endpoint, key=cosmos_account.key, database="threads", verify_tls=False, create=True)
    yield store
    store.close()


def test_each_thread_sees_the_headers_of_its_own_last_response(store):
    connection = store._client.client_connection
    seen: dict[str, object] = {}

    def call(name: str) -> None:
        store.upsert("factories", {"id": name})  # the SDK sets the headers of this thread's answer
        seen[name] = connection.last_response_headers

    threads = [threading.Thread(target=call, args=(f"f{n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert seen["f0"] is not seen["f1"]
    assert connection.last_response_headers is not seen["f0"] and connection.last_response_headers is not seen["f1"]


def test_a_thread_stamping_its_headers_never_disturbs_another_copying_its_own(store):
    # What the SDK does on every call (set, then stamp) against what a query does (copy).
    connection = store._client.client_connection
    stop = threading.Event()
    failures: list[BaseException] = []

    def stamp() -> None:
        connection.last_response_headers = CaseInsensitiveDict()
        n = 0
        while not stop.is_set():
            connection.last_response_headers[f"x-ms-retry-{n % 512}"] = n
            n += 1

    def copy() -> None:
        try:
            for _ in range(500):
                connection.last_response_headers = CaseInsensitiveDict({f"h{k}": k for k in range(256)})
                CaseInsensitiveDict().update(connection.last_response_headers)  # as a query page does
        except RuntimeError as exc:
            failures.append(exc)
        finally:
            stop.set()

    stamping, copying = threading.Thread(target=stamp), threading.Thread(target=copy)
    stamping.start()
    copying.start()
    copying.join()
    stamping.join()

    assert failures == []
