"""Timer functions on their NCRONTAB schedules (see ``shared.devhost.ncrontab``), as the Functions host
runs them for ``shared.devhost``.

A ``Timer`` is called with an ``azure.functions.TimerRequest``: ``past_due`` when it runs more
than a second after it fell due, and a ``schedule_status`` of its last, next and this run. A
timer never runs concurrently with itself.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from azure.functions import timer as func_timer

from shared.devhost import ncrontab

# The dev host logs under one name, whichever of its modules does the work.
log = logging.getLogger("shared.devhost")

_PAST_DUE_AFTER = dt.timedelta(seconds=1)


@dataclasses.dataclass(eq=False)
class Timer:
    """One timer function: ``call`` runs it, to completion, with a ``TimerRequest``."""

    name: str
    schedule: ncrontab.Schedule
    run_on_startup: bool
    call: Callable[[func_timer.TimerRequest], Any]
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    last: dt.datetime | None = None


def schedule_of(name: str, expression: str,
                environ: Mapping[str, str] | None = None) -> ncrontab.Schedule:
    """The schedule of timer function ``name``: ``expression`` is NCRONTAB, or ``%SETTING%``
    naming the app setting (environment variable) that holds it. Raises ``ValueError``
    naming the function when the setting is unset or the expression is not NCRONTAB."""
    environ = os.environ if environ is None else environ
    if len(expression) > 2 and expression[0] == expression[-1] == "%":
        setting = expression.strip("%")
        if not environ.get(setting):
            raise ValueError(f"timer function {name}: app setting {setting} is not set")
        expression = environ[setting]
    try:
        return ncrontab.parse(expression)
    except ValueError as error:
        raise ValueError(f"timer function {name}: {error}") from None


class Scheduler:
    """Runs ``timers`` on demand (``run``) and on their schedules (``start`` until ``stop``).
    Names are case-insensitive; of two timers with one name, the last is kept."""

    def __init__(self, timers: Iterable[Timer]) -> None:
        self._timers = {timer.name.lower(): timer for timer in timers}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._timers

    def run(self, name: str, *, past_due: bool = False) -> None:
        """Run the timer ``name`` now and wait for it; waits first for a run of it already
        under way. Raises ``KeyError`` for an unknown name, and whatever the timer raises."""
        timer = self._timers[name.lower()]
        with timer.lock:
            self._fire(timer, past_due)

    def start(self) -> None:
        """Run each timer on its schedule (and now, if it runs on startup) on its own thread,
        until ``stop``. A timer that raises is logged; a run that falls due while the previous
        one is still going is skipped. Does nothing while already started."""
        if self._threads:
            return
        self._stop = threading.Event()
        for timer in self._timers.values():
            thread = threading.Thread(target=self._schedule_loop, args=(timer, self._stop),
                                      name=f"timer {timer.name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the schedules; waits up to ``timeout`` seconds for running timers."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("%s is still running; leaving it behind", thread.name)
        self._threads = []

    def _schedule_loop(self, timer: Timer, stop: threading.Event) -> None:
        try:
            if timer.run_on_startup:
                self._scheduled_run(timer, past_due=False)
            due = timer.schedule.next_after(_now())
            while not stop.is_set():
                wait = (due - _now()).total_seconds()
                if wait > 0:
                    stop.wait(min(wait, 30.0))  # re-read the clock at least every 30 s
                    continue
                self._scheduled_run(timer, past_due=_now() - due > _PAST_DUE_AFTER)
                due = timer.schedule.next_after(max(_now(), due))
        except Exception:
            log.exception("the schedule of timer %s stopped", timer.name)

    def _scheduled_run(self, timer: Timer, past_due: bool) -> None:
        if not timer.lock.acquire(blocking=False):
            log.info("timer %s: skipped, the previous run is still going", timer.name)
            return
        try:
            self._fire(timer, past_due)
        except Exception:
            log.exception("timer %s failed", timer.name)
        finally:
            timer.lock.release()

    @staticmethod
    def _fire(timer: Timer, past_due: bool) -> None:
        now = _now()
        status = {"Last": timer.last.isoformat() if timer.last else None,
                  "Next": timer.schedule.next_after(now).isoformat(),
                  "LastUpdated": now.isoformat()}
        timer.last = now
        log.info("timer %s: running%s", timer.name, " (past due)" if past_due else "")
        timer.call(func_timer.TimerRequest(past_due=past_due, schedule_status=status,
                                           schedule={"AdjustForDST": True}))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
