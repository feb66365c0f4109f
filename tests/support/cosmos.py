"""The Cosmos fixtures: `cosmos_server`, the local Cosmos-compatible server of
`shared.stores.local_cosmos`, and `cosmos_account`, which a suite that can run against a real
account wants: the account named by `COSMOS_ENDPOINT` (with `COSMOS_KEY`, or `az login`
credentials) when that is set, else the local server. Both are session-scoped, so a run starts
the server at most once. Where the server cannot start (no node, no `npm install`), they skip,
and fail when `CI=true` (STYLE.md, rule 8).

`CosmosStore` silences urllib3's warning about the local server's self-signed certificate for
loopback hosts only, but pytest resets warning filters around every test, so tests that talk to
the server in-process carry the `unverified_loopback` mark.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NoReturn

import pytest

from shared.stores import local_cosmos

#: For tests that call the server in-process: see the module docstring.
unverified_loopback = pytest.mark.filterwarnings(
    r"ignore:Unverified HTTPS request is being made to host '127\.0\.0\.1':urllib3.exceptions.InsecureRequestWarning"
)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Skip the test for a missing server locally; fail it under `CI=true`."""
    if in_ci():
        pytest.fail(f"CI=true and the Cosmos server is unavailable: {reason}", pytrace=False)
    pytest.skip(f"Cosmos server unavailable: {reason}")


@pytest.fixture(scope="session")
def cosmos_server() -> Iterator[local_cosmos.CosmosServer]:
    """The local server, started once per test session."""
    try:
        server = local_cosmos.start_cosmos_server()
    except local_cosmos.ServerUnavailable as exc:
        unavailable(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cosmos_account(request: pytest.FixtureRequest) -> local_cosmos.CosmosAccount:
    """`COSMOS_ENDPOINT`'s account when set, else the local server (started on first use)."""
    return local_cosmos.account_from_env() or request.getfixturevalue("cosmos_server")
