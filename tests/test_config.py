"""The settings read from the environment (`shared.config.settings_from`)."""
from __future__ import annotations

import pytest

from shared import config


@pytest.mark.parametrize("name", [
    "FLEET_LEASE_SECONDS", "FLEET_RETRY_BACKOFF_SECONDS", "FLEET_RETRY_BACKOFF_MAX_SECONDS",
    "FLEET_PREEMPT_EXEMPT_SECONDS", "FLEET_CLAIM_WEIGHTS_SECONDS", "FLEET_TOKEN_RECHECK_SECONDS",
])
def test_a_duration_past_thirty_days_is_refused_naming_the_setting(name):
    # Regression: a retry backoff of 1e13 s made every retry release fail (a date past year 9999).
    assert config.settings_from({name: str(config.MAX_SECONDS)})
    with pytest.raises(ValueError, match=f"{name} must be at most {config.MAX_SECONDS}"):
        config.settings_from({name: "10000000000000"})


def test_the_retry_backoff_is_read_with_its_defaults():
    assert (config.settings_from({}).retry_backoff_seconds, config.settings_from({}).retry_backoff_max_seconds) == (30, 900)
    read = config.settings_from({"FLEET_RETRY_BACKOFF_SECONDS": "0", "FLEET_RETRY_BACKOFF_MAX_SECONDS": "60"})
    assert (read.retry_backoff_seconds, read.retry_backoff_max_seconds) == (0, 60)
