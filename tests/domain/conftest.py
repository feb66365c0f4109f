"""Domain tests: every test gets a fresh `fleet.testing.World` (a real in-memory SQLite store, a
fixed clock at `testing.T0`, the fault-injecting store) and its verbs as fixtures.

    def test_a_critical_job_goes_first(make_job, claim):
        make_job("old", priority="normal")
        urgent = make_job("urgent", priority="critical")
        assert claim().job.id == urgent.id

The world's settings are `testing.world_settings()` (both flags off) unless the test or its
module says otherwise with the `settings` mark:

    pytestmark = pytest.mark.settings(testing.flags_on())

Hypothesis tests cannot take function-scoped fixtures: they open their own world with
`testing.open_world(...)`, one per example.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from fleet import testing
from fleet.clock import FixedClock
from fleet.context import Context, Settings


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "settings(settings): the `Settings` of the test's world")


@pytest.fixture
def settings(request: pytest.FixtureRequest) -> Settings:
    mark = request.node.get_closest_marker("settings")
    return mark.args[0] if mark else testing.world_settings()


@pytest.fixture
def world(settings: Settings) -> Iterator[testing.World]:
    with testing.open_world(settings) as opened:
        yield opened


@pytest.fixture
def clock(world: testing.World) -> FixedClock:
    return world.clock


@pytest.fixture
def store(world: testing.World) -> testing.FaultyStore:
    return world.store


@pytest.fixture
def faulty(world: testing.World) -> testing.FaultyStore:
    """The world's store, to crash or interleave (the same object as `store`)."""
    return world.store


@pytest.fixture
def ctx(world: testing.World) -> Context:
    return world.ctx


@pytest.fixture
def make_job(world: testing.World):
    return world.make_job


@pytest.fixture
def submit_job(world: testing.World):
    return world.submit_job


@pytest.fixture
def claim(world: testing.World):
    return world.claim


@pytest.fixture
def running_job(world: testing.World):
    return world.running_job
