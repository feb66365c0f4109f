"""Retries: safe calls are retried with backoff and honour Retry-After; unsafe ones never are
once they may have reached the coordinator. Driven by a scripted local HTTP server."""
from __future__ import annotations

import random
import time

import pytest
import requests

from fleetclient import FleetClient, errors, retry
from tests.factory.conftest import FAST, closed_port, problem

QUEUE_STATE = {"productId": "web", "version": 7, "updatedAt": None}
BUSY = (503, {"Retry-After": "1", "Content-Type": "application/problem+json"},
        problem(503, "store_busy", "throttled", retryAfter=1))
NO_JOB = {"job": None, "reason": "no_job"}


def test_a_read_answered_503_is_retried_after_retry_after(stub):
    server = stub([BUSY, (200, {}, QUEUE_STATE)])

    with FleetClient(server.url, backoff=FAST) as fleet:
        started = time.monotonic()
        state = fleet.queue_state("web")
        waited = time.monotonic() - started

    assert state.version == 7
    assert len(server.requests) == 2
    assert waited >= 1.0  # Retry-After: 1 wins over the much shorter backoff


def test_a_heartbeat_answered_503_is_retried_not_taken_for_a_lost_lease(stub):
    renewed = {"factoryId": "f1", "leases": [{"jobId": "web:x", "leaseId": "L", "status": "renewed",
                                             "expiresAt": "2030-01-01T00:00:00.000Z"}]}
    server = stub([(503, {}, problem(503, "store_busy")), (503, {}, problem(503, "store_busy")), (200, {}, renewed)])

    with FleetClient(server.url, backoff=FAST) as fleet:
        beat = fleet.heartbeat("f1", ["web"], running=[("web:x", "L")])

    assert [lease.status for lease in beat.leases] == ["renewed"]
    assert [r[0] for r in server.requests] == ["POST"] * 3
    assert server.requests[0][2]["running"] == [{"jobId": "web:x", "leaseId": "L"}]


def test_retries_stop_after_the_last_attempt_with_the_typed_error(stub):
    server = stub([(503, {}, problem(503, "store_busy", "still busy"))])

    with FleetClient(server.url, backoff=FAST) as fleet, pytest.raises(errors.StoreBusy) as raised:
        fleet.get_job("web:aaaaaaaaaaaaaaaaaaaa")

    assert len(server.requests) == FAST.attempts
    assert raised.value.detail == "still busy"


def test_a_store_an_operator_must_fix_is_its_own_error_and_still_a_busy_store(stub):
    unavailable = problem(503, "store_unavailable", "sqlite: attempt to write a readonly database", reason="read_only")
    server = stub([(503, {"Retry-After": "5"}, unavailable)])

    with FleetClient(server.url, backoff=FAST) as fleet, pytest.raises(errors.StoreUnavailable) as raised:
        fleet.claim("f1", "web")

    assert isinstance(raised.value, errors.StoreBusy)
    assert (raised.value.code, raised.value.retry_after) == ("store_unavailable", 5.0)
    assert raised.value.problem["reason"] == "read_only"


@pytest.mark.parametrize("call", [
    pytest.param(lambda f: f.claim("f1", "web"), id="claim"),
    pytest.param(lambda f: f.patch_job("web:x", "L", "building"), id="patch"),
    pytest.param(lambda f: f.release_lease("web:x", "L", result="retry"), id="release"),
])
def test_a_non_idempotent_call_answered_503_is_not_retried(stub, call):
    server = stub([BUSY, (200, {}, NO_JOB)])

    with FleetClient(server.url, backoff=FAST) as fleet, pytest.raises(errors.StoreBusy) as raised:
        call(fleet)

    assert len(server.requests) == 1
    assert raised.value.retry_after == 1.0


def test_a_non_idempotent_call_that_timed_out_is_not_retried(stub):
    server = stub([(200, {}, NO_JOB)], delay=0.5)

    with FleetClient(server.url, timeout=(1.0, 0.1), backoff=FAST) as fleet:
        with pytest.raises(errors.FleetUnreachable, match="timed out"):
            fleet.claim("f1", "web")

    assert len(server.requests) == 1


def test_a_read_that_timed_out_is_retried(stub):
    server = stub([(200, {}, QUEUE_STATE)], delay=0.3)

    with FleetClient(server.url, timeout=(1.0, 0.1), backoff=FAST) as fleet:
        with pytest.raises(errors.FleetUnreachable):
            fleet.queue_state("web")

    assert len(server.requests) == FAST.attempts


def test_a_claim_is_retried_when_the_connection_was_never_made():
    sleeps: list[float] = []
    with FleetClient(f"http://127.0.0.1:{closed_port()}", backoff=FAST, sleep=sleeps.append) as fleet:
        with pytest.raises(errors.FleetUnreachable, match="connection refused"):
            fleet.claim("f1", "web")

    assert len(sleeps) == FAST.attempts - 1  # refused before sending: safe to try again


def test_a_submit_is_retried_because_its_idempotency_key_makes_it_safe(stub):
    job = {"id": "web:aaaaaaaaaaaaaaaaaaaa", "productId": "web", "idempotencyKey": "k", "stage": "queued",
           "createdAt": "2026-01-05T09:00:00.000Z", "updatedAt": "2026-01-05T09:00:00.000Z"}
    server = stub([(502, {}, b"<html>bad gateway</html>"), (201, {}, job)])

    with FleetClient(server.url, backoff=FAST) as fleet:
        submitted = fleet.submit_job({"productId": "web", "idempotencyKey": "k"})

    assert submitted.created and submitted.job.id == job["id"]
    assert server.requests[0][2] == server.requests[1][2]


def test_an_answer_that_is_not_a_problem_document_still_raises_a_typed_error(stub):
    server = stub([(404, {"Content-Type": "text/html"}, b"<h1>Not Found</h1>")])

    with FleetClient(server.url, backoff=FAST) as fleet, pytest.raises(errors.NotFound) as raised:
        fleet.get_dag("web:x")

    assert (raised.value.status, raised.value.code) == (404, "not_found")
    assert "Not Found" in raised.value.detail


def test_a_problem_code_wins_over_the_status(stub):
    server = stub([(404, {}, problem(404, "feature_disabled", "budgets are off"))])

    with FleetClient(server.url, backoff=FAST) as fleet, pytest.raises(errors.FeatureDisabled):
        fleet.get_budget("web")


class TestBackoff:
    @pytest.mark.parametrize("retry_number, ceiling", [(1, 0.25), (2, 0.5), (3, 1.0), (10, 8.0)])
    def test_full_jitter_under_a_doubling_capped_ceiling(self, retry_number, ceiling):
        rng = random.Random(1)
        delays = [retry.Backoff().delay(retry_number, rng=rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays) and max(delays) > ceiling / 2

    def test_retry_after_is_honoured_with_a_little_jitter_and_a_cap(self):
        backoff = retry.Backoff(base_seconds=0.25, max_retry_after=30)
        assert 3 <= backoff.delay(1, retry_after=3) <= 3.25
        assert 30 <= backoff.delay(1, retry_after=600) <= 30.25


class TestNeverSent:
    def test_a_refused_connection_was_never_sent(self):
        with pytest.raises(requests.ConnectionError) as raised, requests.Session() as session:
            session.get(f"http://127.0.0.1:{closed_port()}/", timeout=2)
        assert retry.never_sent(raised.value)

    def test_a_read_timeout_may_have_been_sent(self, stub):
        server = stub([(200, {}, {})], delay=0.3)
        with pytest.raises(requests.Timeout) as raised, requests.Session() as session:
            session.get(server.url, timeout=(1, 0.05))
        assert not retry.never_sent(raised.value)


@pytest.mark.parametrize("header, seconds", [("2", 2.0), ("0.5", 0.5), ("-3", 0.0), ("soon", None), (None, None)])
def test_retry_after_headers(header, seconds):
    assert errors.parse_retry_after(header) == seconds
