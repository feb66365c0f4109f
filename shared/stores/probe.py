"""`Probe`: the health check's ping of the store, answered within a short deadline of its own.

A stalled store must not stall `/fleet/health`, and health must not grow a thread per request:
one worker thread (a daemon, started on first use) runs one ping at a time, and a check that
finds a ping in flight waits on that one instead of starting another. A check waits at most
`deadline` seconds. The ping itself ends within the store deadline; the first check after it
ended starts a fresh one.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from fleet import errors

log = logging.getLogger("fleet.health")

#: Seconds a health check waits for the store's answer.
DEADLINE = 2.0


@dataclass(frozen=True)
class Reading:
    """What one check found: the store answered, or the fault that kept it from answering."""

    reachable: bool
    reason: errors.StoreFault | None = None
    detail: str | None = None


class _Ping:
    """One ping, shared by every check that waits on it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None


class Probe:
    """Runs `ping` (which raises when the store is not usable) on one worker thread."""

    def __init__(self, ping: Callable[[], None], deadline: float = DEADLINE) -> None:
        self.deadline = deadline
        self._ping = ping
        self._lock = threading.Lock()
        self._inflight: _Ping | None = None
        self._pending: queue.SimpleQueue[_Ping] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None

    def check(self) -> Reading:
        """The store's state, within `deadline` seconds (`TIMEOUT` when it did not answer)."""
        with self._lock:
            ping = self._inflight
            if ping is None or ping.done.is_set():
                ping = self._inflight = _Ping()
                self._pending.put(ping)
                if self._worker is None:
                    self._worker = threading.Thread(target=self._work, name="store probe", daemon=True)
                    self._worker.start()
        if not ping.done.wait(self.deadline):
            return Reading(False, errors.StoreFault.TIMEOUT, f"the store did not answer within {self.deadline:g} s")
        return _reading(ping.error)

    def _work(self) -> None:
        while True:
            ping = self._pending.get()
            try:
                self._ping()
            except BaseException as exc:  # noqa: BLE001 - reported to every waiting check
                ping.error = exc
            finally:
                ping.done.set()


def _reading(error: BaseException | None) -> Reading:
    if error is None:
        return Reading(True)
    if isinstance(error, (errors.StoreBusy, errors.StoreUnavailable)):
        return Reading(False, error.reason, error.detail)
    log.warning("store ping failed", exc_info=error)
    detail = error.detail if isinstance(error, errors.FleetError) else type(error).__name__
    return Reading(False, errors.StoreFault.UNAVAILABLE, detail)
