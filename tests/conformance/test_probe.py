"""`shared.stores.probe`: health's ping answers within its own deadline, one ping at a time on
one worker, however slow the store is."""
from __future__ import annotations

import concurrent.futures
import threading
import time

from fleet import errors
from fleet.errors import StoreFault
from shared.stores import probe


class Ping:
    """A store ping that blocks while `stalled` is clear, counting its calls."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.calls = 0
        self.error = error
        self.flowing = threading.Event()
        self.flowing.set()

    def __call__(self) -> None:
        self.calls += 1
        self.flowing.wait(10)
        if self.error is not None:
            raise self.error


def test_a_store_that_answers_is_reachable():
    assert probe.Probe(Ping()).check() == probe.Reading(True)


def test_a_stalled_store_times_out_at_the_probe_deadline():
    ping = Ping()
    ping.flowing.clear()
    checker = probe.Probe(ping, deadline=0.2)

    started = time.monotonic()
    reading = checker.check()

    assert (reading.reachable, reading.reason) == (False, StoreFault.TIMEOUT)
    assert time.monotonic() - started < 1
    ping.flowing.set()


def test_checks_during_a_stall_share_the_ping_in_flight_and_start_no_threads():
    ping = Ping()
    ping.flowing.clear()
    checker = probe.Probe(ping, deadline=0.3)
    checker.check()  # starts the worker and the stalled ping
    threads = threading.active_count()

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        readings = list(pool.map(lambda _: checker.check(), range(10)))
        during = threading.active_count() - 10  # the pool's own threads

    assert {r.reason for r in readings} == {StoreFault.TIMEOUT}
    assert ping.calls == 1 and during <= threads
    ping.flowing.set()


def test_a_check_after_the_stall_ends_gets_the_answer_then_pings_afresh():
    ping = Ping()
    ping.flowing.clear()
    checker = probe.Probe(ping, deadline=0.1)
    assert not checker.check().reachable

    ping.flowing.set()

    assert checker.check().reachable  # the ping in flight answered
    assert checker.check().reachable and ping.calls == 2  # and the next check pinged again


def test_a_store_fault_says_what_is_wrong():
    reading = probe.Probe(Ping(errors.StoreUnavailable("read-only", errors.StoreFault.READ_ONLY))).check()

    assert (reading.reachable, reading.reason, reading.detail) == (False, StoreFault.READ_ONLY, "read-only")


def test_a_busy_store_is_busy():
    reading = probe.Probe(Ping(errors.StoreBusy("locked"))).check()

    assert (reading.reachable, reading.reason) == (False, StoreFault.BUSY)


def test_any_other_failure_is_unavailable():
    reading = probe.Probe(Ping(RuntimeError("no store configured"))).check()

    assert (reading.reachable, reading.reason) == (False, StoreFault.UNAVAILABLE)
