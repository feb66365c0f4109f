"""The one seam through which the domain learns the time.

Use cases take a `Clock`; production passes `SystemClock`, tests pass `FixedClock` and move it
forward instead of sleeping. Times are timezone-aware UTC and serialised as ISO-8601 with
milliseconds and a `Z` suffix, so that they sort as strings in every store.
"""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def sleep(self, seconds: float) -> None:
        """Pause for `seconds` (a backoff between optimistic-concurrency retries)."""
        ...


class SystemClock:
    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def now(self) -> datetime:
        """Now, truncated to the millisecond: the precision times are stored with, so a value
        computed from `now` (a rank key) equals the one recomputed from the stored time."""
        return truncated(datetime.now(timezone.utc))


class FixedClock:
    """A clock that only moves when told to; safe to share between threads. Its `sleep`
    returns at once and leaves the time alone (a backoff must not move a test's clock); it
    only counts the pauses asked for, in `pauses` and `paused_seconds`."""

    def __init__(self, at: datetime | str = "2026-01-05T09:00:00.000Z") -> None:
        self._now = parse(at) if isinstance(at, str) else at
        self._lock = threading.Lock()
        self.pauses = 0
        self.paused_seconds = 0.0

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.pauses += 1
            self.paused_seconds += seconds

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float = 0, **delta: float) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=seconds, **delta)
            return self._now

    def set(self, at: datetime | str) -> None:
        with self._lock:
            self._now = parse(at) if isinstance(at, str) else at


def format(at: datetime) -> str:  # noqa: A001 - the module's name makes the meaning plain
    """`2026-01-05T09:00:00.123Z`: UTC, milliseconds, sortable as a string."""
    if at.tzinfo is not timezone.utc:
        at = at.astimezone(timezone.utc)
    return (
        f"{at.year:04d}-{at.month:02d}-{at.day:02d}T{at.hour:02d}:{at.minute:02d}:{at.second:02d}"
        f".{at.microsecond // 1000:03d}Z"
    )


def parse(text: str) -> datetime:
    """Inverse of `format`; accepts any ISO-8601 with an offset or `Z` (naive means UTC)."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def truncated(at: datetime) -> datetime:
    """`at` to the millisecond: the precision times are stored with (what `parse(format(at))`
    gives back)."""
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def minutes(at: datetime) -> float:
    """Minutes since the Unix epoch: the unit of the score's age term."""
    return at.timestamp() / 60.0
