"""The RU gate (`AQ_FLEET_GATE=1`): an idle factory reads the product's queue-state version
(one cheap point read) and skips the claim (a query) while nothing new can be claimable.

The coordinator bumps the version on every transition into `queued` and whenever claims may
succeed again, so an unchanged version means a claim would find what the last one found:
nothing. Three exceptions keep work from being stranded:

- mid-drain: the last claim returned a job, so more may be waiting; claim without reading;
- a seat freed after a claim refused for a full runner (`seat_limit`, a runner that claims
  while full because the coordinator preempts): what it could not take is claimable now, and
  nothing bumps the version for that; claim without reading;
- backstop: every `backstop_polls`-th poll claims anyway, whatever the version says;
- fail open: if the version cannot be read, claim.

The version is read *before* the claim it gates, so a bump that lands during the claim is seen
by the next poll.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class Why(str, Enum):
    """Why the gate let a claim through, or held it back."""

    FIRST = "first"  # nothing seen yet
    CHANGED = "changed"  # the version moved since the last claim
    DRAINING = "draining"  # the last claim found a job; keep claiming until one finds none
    BACKSTOP = "backstop"  # the periodic safety claim
    READ_FAILED = "read_failed"  # the version could not be read: fail open
    UNCHANGED = "unchanged"  # held back: same version, not draining
    OFF = "off"  # no gate: every poll claims


@dataclass(frozen=True)
class Decision:
    claim: bool
    why: Why


class Gate:
    """Decides, poll by poll, whether to claim. Not thread-safe: one runner loop owns it.

    `read_version()` returns the product's queue-state version and raises on any failure.
    """

    def __init__(self, read_version: Callable[[], int], backstop_polls: int = 12) -> None:
        if backstop_polls < 1:
            raise ValueError("backstop_polls must be at least 1")
        self._read_version = read_version
        self.backstop_polls = backstop_polls
        self._seen: int | None = None
        self._draining = False
        self._skipped = 0

    def decide(self) -> Decision:
        """Whether this poll should claim. Call `claimed` with the outcome after a claim."""
        if self._draining:
            return self._through(Why.DRAINING)
        try:
            version = self._read_version()
        except Exception:  # any failure to read opens the gate: a skipped claim could strand work
            return self._through(Why.READ_FAILED)
        first = self._seen is None
        changed = version != self._seen
        self._seen = version
        if first:
            return self._through(Why.FIRST)
        if changed:
            return self._through(Why.CHANGED)
        if self._skipped + 1 >= self.backstop_polls:
            return self._through(Why.BACKSTOP)
        self._skipped += 1
        return Decision(False, Why.UNCHANGED)

    def claimed(self, got_job: bool) -> None:
        """Record a claim's outcome: a job means the runner is mid-drain."""
        self._draining = got_job

    def claim_failed(self) -> None:
        """The claim got no answer: forget the version, so the next poll claims again."""
        self._seen = None

    def reopen(self) -> None:
        """A seat freed after a claim was refused for a full runner: claim without reading."""
        self._draining = True

    def _through(self, why: Why) -> Decision:
        self._skipped = 0
        return Decision(True, why)


class OpenGate:
    """No gate (`AQ_FLEET_GATE` unset): every poll claims."""

    def decide(self) -> Decision:
        return Decision(True, Why.OFF)

    def claimed(self, got_job: bool) -> None:
        return None

    def claim_failed(self) -> None:
        return None

    def reopen(self) -> None:
        return None
