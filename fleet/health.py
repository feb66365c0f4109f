"""The coordinator's own health: whether its store answers, and which features are on."""
from __future__ import annotations

import logging
from enum import Enum

from pydantic import Field

from fleet.context import Context
from fleet.jobs import Model

log = logging.getLogger("fleet.health")


class HealthStatus(str, Enum):
    """Whether the coordinator can do its work."""

    OK = "ok"  # the store answers
    DEGRADED = "degraded"  # the store does not answer: every other call will fail until it does


class StoreHealth(Model):
    #: The store adapter's class, e.g. `SqliteStore`, `CosmosStore`.
    kind: str
    reachable: bool


class Health(Model):
    """`GET /fleet/health` (200 when ok, 503 when degraded)."""

    status: HealthStatus
    store: StoreHealth
    #: The optional features and whether they are on: `preemption`, `budgets`.
    flags: dict[str, bool] = Field(default_factory=dict)
    version: str


def check(ctx: Context, version: str) -> Health:
    """Ping the store; report it with the feature flags and the API `version`."""
    try:
        ctx.store.ping()
        reachable = True
    except Exception:  # health reports the store's state; it must not fail itself
        log.exception("store ping failed")
        reachable = False
    settings = ctx.settings
    return Health(
        status=HealthStatus.OK if reachable else HealthStatus.DEGRADED,
        store=StoreHealth(kind=type(ctx.store).__name__, reachable=reachable),
        flags={"preemption": settings.preemption, "budgets": settings.budgets},
        version=version,
    )
