"""Scoring weights, their resolution, the score and the rank key.

    score = w.age * ageMinutes + w.priority * priorityOrder + w.retries * attempts
            + w.capabilities * capabilityBonus

Age is linear in time, so for fixed weights the order of two queued jobs never changes:
`rankKey = w.priority*priorityOrder + w.retries*attempts − w.age*createdAtMinutes` is stored on
each job, and `score = rankKey + w.age*nowMinutes + w.capabilities*bonus`.
"""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from fleet import clock

_FINITE = dict(allow_inf_nan=False, ge=-1e6, le=1e6)


class Weights(BaseModel):
    """A full set of weights."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    age: float = Field(1.0, **_FINITE)
    priority: float = Field(10.0, **_FINITE)
    retries: float = Field(-2.0, **_FINITE)
    capabilities: float = Field(5.0, **_FINITE)


class WeightsPatch(BaseModel):
    """Some weights: what a request or a product registry overrides, field by field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    age: float | None = Field(None, **_FINITE)
    priority: float | None = Field(None, **_FINITE)
    retries: float | None = Field(None, **_FINITE)
    capabilities: float | None = Field(None, **_FINITE)


DEFAULTS = Weights()


def resolve(*patches: WeightsPatch | None) -> Weights:
    """Merge patches over the defaults per field; later patches win (product, then request)."""
    merged = DEFAULTS.model_dump()
    for patch in patches:
        if patch is not None:
            merged.update(patch.model_dump(exclude_none=True))
    return Weights(**merged)


def capability_bonus(required: list[str] | tuple[str, ...], offered: frozenset[str]) -> int:
    """How many of the job's required capabilities the factory has."""
    return sum(1 for cap in required if cap in offered)


def rank_key(priority_order: int, attempts: int, created_at: datetime, weights: Weights) -> float:
    return weights.priority * priority_order + weights.retries * attempts - weights.age * clock.minutes(created_at)


def score(
    priority_order: int, attempts: int, created_at: datetime, bonus: int, now: datetime, weights: Weights
) -> float:
    age_minutes = clock.minutes(now) - clock.minutes(created_at)
    return (
        weights.age * age_minutes
        + weights.priority * priority_order
        + weights.retries * attempts
        + weights.capabilities * bonus
    )


def orders_like(a: Weights, b: Weights) -> bool:
    """Whether two weight sets order queued jobs the same way by rank key (only the capability
    weight may differ, and it is applied at claim time)."""
    return (a.age, a.priority, a.retries) == (b.age, b.priority, b.retries)
