"""The RU gate: an idle factory claims only when the queue-state version says something changed,
while draining, on the backstop, or when the version cannot be read."""
from __future__ import annotations

import pytest

from fleetclient.gate import Gate, OpenGate, Why


class Versions:
    """A scripted `read_version`: each call takes the next value; an exception value is raised."""

    def __init__(self, *values) -> None:
        self.values = list(values)
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        value = self.values.pop(0) if len(self.values) > 1 else self.values[0]
        if isinstance(value, Exception):
            raise value
        return value


def polls(gate: Gate, outcomes: list[bool | None]) -> list[str]:
    """Poll once per outcome; a claim gets that outcome (True: a job, False: none, None: failed).
    The result lists each poll's reason (`why`), upper-case when the poll claimed."""
    seen = []
    for outcome in outcomes:
        decision = gate.decide()
        seen.append(decision.why.value.upper() if decision.claim else decision.why.value)
        if decision.claim:
            gate.claimed(bool(outcome)) if outcome is not None else gate.claim_failed()
    return seen


def test_the_first_poll_claims_then_an_unchanged_version_holds_claims_back():
    gate = Gate(Versions(3), backstop_polls=100)
    assert polls(gate, [False, False, False]) == ["FIRST", "unchanged", "unchanged"]


def test_a_new_version_lets_one_claim_through():
    gate = Gate(Versions(3, 3, 4, 4), backstop_polls=100)
    assert polls(gate, [False, False, False, False]) == ["FIRST", "unchanged", "CHANGED", "unchanged"]


def test_while_claims_find_jobs_the_runner_drains_without_reading_the_version():
    versions = Versions(5)
    gate = Gate(versions, backstop_polls=100)

    # Given a claim that found a job, when the next polls come, then they claim until one finds none.
    assert polls(gate, [True, True, True, False, False]) == ["FIRST", "DRAINING", "DRAINING", "DRAINING", "unchanged"]
    assert versions.reads == 2  # the first poll and the last: none while draining


def test_the_backstop_claims_every_nth_poll_whatever_the_version():
    gate = Gate(Versions(1), backstop_polls=3)
    seen = polls(gate, [False] * 7)
    # 3 polls per cycle: two held back, the third claims.
    assert seen == ["FIRST", "unchanged", "unchanged", "BACKSTOP", "unchanged", "unchanged", "BACKSTOP"]


def test_a_failed_read_opens_the_gate():
    gate = Gate(Versions(1, 1, OSError("coordinator down"), 1), backstop_polls=100)
    assert polls(gate, [False, False, False, False]) == ["FIRST", "unchanged", "READ_FAILED", "unchanged"]


def test_a_claim_that_failed_is_made_again_on_the_next_poll():
    gate = Gate(Versions(1), backstop_polls=100)
    # The claim the new version allowed got no answer: the version is forgotten, so the next poll claims.
    assert polls(gate, [None, False, False]) == ["FIRST", "FIRST", "unchanged"]


def test_without_the_gate_every_poll_claims():
    gate = OpenGate()
    assert [gate.decide().claim for _ in range(3)] == [True, True, True]
    assert gate.decide().why == Why.OFF


def test_the_backstop_must_be_positive():
    with pytest.raises(ValueError):
        Gate(Versions(1), backstop_polls=0)
