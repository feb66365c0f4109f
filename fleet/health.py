"""The coordinator's own health: whether its store answers, and which features are on."""
from __future__ import annotations

from enum import Enum

from pydantic import Field

from fleet.context import Settings
from fleet.jobs import Model

class HealthStatus(str, Enum):
    """Whether the coordinator can do its work."""

    OK = "ok"  # the store answers
    DEGRADED = "degraded"  # the store does not answer: every other call will fail until it does


class StoreHealth(Model):
    #: The store adapter's class, e.g. `SqliteStore`, `CosmosStore`; None if it could not even be opened.
    kind: str | None = None
    reachable: bool
    #: Why it is not usable (`busy`, `timeout`, `unreachable`, `read_only`, `full`, `denied`,
    #: `unavailable`); None when it is.
    reason: str | None = None


class Health(Model):
    """`GET /fleet/health` (200 when ok, 503 when degraded)."""

    status: HealthStatus
    store: StoreHealth
    #: The optional features and whether they are on: `preemption`, `budgets`.
    flags: dict[str, bool] = Field(default_factory=dict)
    version: str


def report(store: StoreHealth, settings: Settings, version: str) -> Health:
    """The answer, given what the probe of the store found, the settings and the API `version`."""
    return Health(
        status=HealthStatus.OK if store.reachable else HealthStatus.DEGRADED,
        store=store,
        flags={"preemption": settings.preemption, "budgets": settings.budgets},
        version=version,
    )
