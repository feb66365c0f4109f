"""Soak and fault tests: a real `fleet serve` under load for thousands of requests, on each
store, and the store made to stall and recover underneath it."""
from __future__ import annotations

from tests.support.cosmos import cosmos_account, cosmos_server  # noqa: F401 (fixtures)
