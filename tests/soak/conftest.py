"""Soak and fault tests: a real `fleet serve` under load for thousands of requests, on each
store, and the store made to stall and recover underneath it."""
from __future__ import annotations

import pytest

from tests.support.cosmos import cosmos_account, cosmos_server  # noqa: F401 (fixtures)


@pytest.fixture(scope="package", autouse=True)
def auth_off():
    """The fault tests are about the store, not credentials: every `fleet serve` they start
    (inheriting this environment) runs with FLEET_AUTH=off. The soak test turns auth back on.
    Package-scoped: the servers of tests run after this folder's keep auth on."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLEET_AUTH", "off")
        yield
