"""Scoring: weights resolve per field (request → product → defaults), and

    score = w.age*ageMinutes + w.priority*priorityOrder + w.retries*attempts + w.capabilities*bonus
          = rankKey + w.age*nowMinutes + w.capabilities*bonus
"""
from __future__ import annotations

from datetime import timedelta

import pydantic
import pytest
from hypothesis import given, settings, strategies as st

from fleet import clock, scoring
from fleet.scoring import Weights, WeightsPatch

NOW = clock.parse("2026-01-05T09:00:00.000Z")


# Resolution


def test_the_defaults_are_the_designs():
    assert scoring.resolve() == Weights(age=1, priority=10, retries=-2, capabilities=5)


@pytest.mark.parametrize(
    "product, request_, expected",
    [
        # nothing set anywhere: the defaults
        (None, None, Weights(age=1, priority=10, retries=-2, capabilities=5)),
        # the product sets age; the rest stay default
        (WeightsPatch(age=3), None, Weights(age=3, priority=10, retries=-2, capabilities=5)),
        # the request sets priority; age comes from the product, the rest from the defaults
        (WeightsPatch(age=3), WeightsPatch(priority=50), Weights(age=3, priority=50, retries=-2, capabilities=5)),
        # both set age: the request wins for that field only
        (WeightsPatch(age=3, retries=0), WeightsPatch(age=7), Weights(age=7, priority=10, retries=0, capabilities=5)),
        # an explicit zero is a value, not "unset"
        (WeightsPatch(capabilities=0), WeightsPatch(age=0), Weights(age=0, priority=10, retries=-2, capabilities=0)),
        # negative weights are allowed
        (None, WeightsPatch(age=-1, capabilities=-5), Weights(age=-1, priority=10, retries=-2, capabilities=-5)),
    ],
)
def test_weights_resolve_per_field_request_over_product_over_defaults(product, request_, expected):
    assert scoring.resolve(product, request_) == expected


@pytest.mark.parametrize(
    "fields",
    [
        {"age": float("inf")},
        {"priority": float("nan")},
        {"retries": 1e6 + 1},
        {"capabilities": -1e6 - 1},
        {"speed": 1},  # unknown field
    ],
)
def test_weights_refuse_non_finite_out_of_range_and_unknown_fields(fields):
    with pytest.raises(pydantic.ValidationError):
        WeightsPatch(**fields)


# The score


@pytest.mark.parametrize(
    "weights, priority_order, attempts, age_minutes, bonus, expected",
    [
        # defaults, a fresh normal job: 1*0 + 10*1 - 2*0 + 5*0
        (Weights(), 1, 0, 0, 0, 10),
        # defaults, 30 minutes old: 1*30 + 10*1 = 40
        (Weights(), 1, 0, 30, 0, 40),
        # defaults, critical, retried twice, one matching capability: 0 + 10*3 - 2*2 + 5*1 = 31
        (Weights(), 3, 2, 0, 1, 31),
        # defaults, low, 9 attempts, 2 hours old, 3 capabilities: 120 + 0 - 18 + 15 = 117
        (Weights(), 0, 9, 120, 3, 117),
        # age only counts half, priority dominates, retries ignored, capabilities penalised:
        # 0.5*10 + 100*2 + 0*1 - 1*2 = 203
        (Weights(age=0.5, priority=100, retries=0, capabilities=-1), 2, 1, 10, 2, 203),
        # negative age weight favours new work: -1*60 + 10*1 = -50
        (Weights(age=-1), 1, 0, 60, 0, -50),
        # everything zero: every job scores 0
        (Weights(age=0, priority=0, retries=0, capabilities=0), 3, 5, 999, 4, 0),
    ],
)
def test_score_is_the_weighted_sum(weights, priority_order, attempts, age_minutes, bonus, expected):
    created_at = NOW - timedelta(minutes=age_minutes)
    assert scoring.score(priority_order, attempts, created_at, bonus, NOW, weights) == pytest.approx(expected)


@pytest.mark.parametrize(
    "required, offered, bonus",
    [
        ([], {"py", "gpu"}, 0),  # nothing required: no bonus
        (["py"], {"py", "gpu"}, 1),
        (["gpu", "py"], {"py", "gpu", "db"}, 2),  # every required capability counts once
        (["gpu", "py"], {"py"}, 1),  # counts only what the factory has (eligibility is the claim's business)
        (["py"], set(), 0),
    ],
)
def test_capability_bonus_counts_the_required_capabilities_the_factory_has(required, offered, bonus):
    assert scoring.capability_bonus(required, frozenset(offered)) == bonus


@pytest.mark.parametrize(
    "priority_order, attempts, minutes_after_epoch, expected",
    [
        # 10*1 - 2*0 - 1*0 = 10
        (1, 0, 0, 10),
        # 10*3 - 2*2 - 1*60 = -34
        (3, 2, 60, -34),
    ],
)
def test_rank_key_is_the_score_without_now_and_capabilities(priority_order, attempts, minutes_after_epoch, expected):
    created_at = clock.parse("1970-01-01T00:00:00.000Z") + timedelta(minutes=minutes_after_epoch)
    assert scoring.rank_key(priority_order, attempts, created_at, Weights()) == pytest.approx(expected)


finite = st.floats(-1000, 1000, allow_nan=False, allow_infinity=False)


@settings(max_examples=100, deadline=None)
@given(
    weights=st.builds(Weights, age=finite, priority=finite, retries=finite, capabilities=finite),
    priority_order=st.integers(0, 3),
    attempts=st.integers(0, 9),
    age_ms=st.integers(0, 30 * 24 * 3600 * 1000),
    bonus=st.integers(0, 8),
)
def test_rank_key_plus_now_and_bonus_terms_is_the_score(weights, priority_order, attempts, age_ms, bonus):
    """The identity the claim's fast path stands on."""
    created_at = NOW - timedelta(milliseconds=age_ms)
    key = scoring.rank_key(priority_order, attempts, created_at, weights)
    rebuilt = key + weights.age * clock.minutes(NOW) + weights.capabilities * bonus
    expected = scoring.score(priority_order, attempts, created_at, bonus, NOW, weights)
    # The two sides differ only by float rounding, relative to w.age*minutesSinceEpoch (~3e7 minutes).
    rounding = 1e-14 * (abs(weights.age) * clock.minutes(NOW) + 1e4)
    assert rebuilt == pytest.approx(expected, abs=rounding)


@pytest.mark.parametrize(
    "a, b, same_order",
    [
        (Weights(), Weights(capabilities=50), True),  # the capability weight applies at claim time
        (Weights(), Weights(age=2), False),
        (Weights(), Weights(priority=11), False),
        (Weights(), Weights(retries=0), False),
    ],
)
def test_only_the_capability_weight_leaves_the_rank_order_alone(a, b, same_order):
    assert scoring.orders_like(a, b) is same_order
