"""Retries and restarts over HTTP against a real `fleet serve`, on each store.

A factory write repeated after a lost answer gets the answer it would have had, and nothing is
applied twice; a coordinator restart longer than a lease is not an outage for the fleet: the
holder carries on, nobody else can take its job, and a holder that never comes back is requeued
one lease term after the restart.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from fleet import clock
from tests.e2e.conftest import Http

pytestmark = pytest.mark.e2e

#: A lease much shorter than the restarts below.
SHORT_LEASE = {"FLEET_LEASE_SECONDS": "2"}
#: Timers off: the tests run the sweep when they mean to (`POST /admin/functions/...`).
NO_TIMERS = ("--no-timers",)


class Factory:
    """One factory's calls, over its own connection."""

    def __init__(self, url: str, name: str) -> None:
        self.http, self.name = Http(url), name
        self.lease: str | None = None

    def claim(self, product: str = "p") -> dict:
        answer = self.http.post("/fleet/claim", {"factoryId": self.name, "productId": product})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        if body["job"] is not None:
            self.lease = body["lease"]["leaseId"]
        return body

    def patch(self, job_id: str, stage: str, lease: str | None = None, **fields):
        return self.http.call("PATCH", f"/fleet/jobs/{job_id}", {"leaseId": lease or self.lease, "stage": stage, **fields})

    def release(self, job_id: str, lease: str | None = None, **fields):
        return self.http.post(f"/fleet/jobs/{job_id}/lease/release", {"leaseId": lease or self.lease, **fields})

    def heartbeat(self, job_id: str, lease: str | None = None) -> dict:
        body = {"products": ["p"], "running": [{"jobId": job_id, "leaseId": lease or self.lease}]}
        answer = self.http.post(f"/fleet/factories/{self.name}/heartbeat", body)
        assert answer.status_code == 200, answer.text
        [lease_answer] = answer.json()["leases"]
        return lease_answer

    def reconnect(self) -> None:
        """A fresh connection, after the coordinator restarted."""
        self.http.close()
        self.http = Http(self.http.url)

    def close(self) -> None:
        self.http.close()


def reconnect(*clients: "Http | Factory") -> list["Http | Factory"]:
    """Fresh connections for every client, after the coordinator restarted."""
    fresh = []
    for client in clients:
        if isinstance(client, Factory):
            client.reconnect()
            fresh.append(client)
        else:
            client.close()
            fresh.append(Http(client.url))
    return fresh


def submit(http: Http, key: str = "k1") -> dict:
    answer = http.post("/fleet/jobs", {"productId": "p", "idempotencyKey": key, "title": key})
    assert answer.status_code == 201, answer.text
    return answer.json()


def sweep(http: Http) -> None:
    assert http.post("/admin/functions/sweep_expired_leases", {"input": ""}).status_code == 202


def job(http: Http, job_id: str) -> dict:
    return http.get(f"/fleet/jobs/{job_id}").json()


def wait_until_past(expires_at: str, margin: float) -> None:
    """Wait (bounded) until the wall clock is `margin` seconds past `expires_at`."""
    deadline = clock.parse(expires_at).timestamp() + margin
    while (left := deadline - datetime.now(timezone.utc).timestamp()) > 0:
        time.sleep(min(left, 0.5))


# Retries are safe


@pytest.mark.parametrize(
    "body, stage, attempts",
    [
        pytest.param({"stage": "shipped", "insights": {"costUsd": 2.5}}, "shipped", 0, id="terminal"),
        pytest.param({"result": "retry", "insights": {"costUsd": 2.5}}, "queued", 1, id="retry"),
    ],
)
def test_a_release_retried_after_a_crash_gets_the_job_and_is_applied_once(serve, body, stage, attempts):
    with serve({"FLEET_BUDGETS": "1"}) as server:
        http, factory = Http(server.url), Factory(server.url, "f1")
        assert http.call("PUT", "/fleet/budgets/p", {"ceilingUsd": 100}).status_code == 200
        submitted = submit(http)
        factory.claim()
        assert factory.patch(submitted["id"], "building").status_code == 200
        # Given a release that was applied, but whose answer the factory never saw (a crash)
        first = factory.release(submitted["id"], **body)
        assert first.status_code == 200
        server.restart()
        http, factory = reconnect(http, factory)
        # When the factory sends it again
        again = factory.release(submitted["id"], **body)
        # Then it gets the job as the release left it, not lease_lost
        assert again.status_code == 200, again.text
        answered = again.json()
        assert (answered["stage"], answered["attempts"]) == (stage, attempts)
        assert answered["updatedAt"] == first.json()["updatedAt"]
        # and nothing was applied twice: one run ended once, one accrual, no second event
        stored = job(http, submitted["id"])
        assert [(run["endedAt"], run["result"]) for run in stored["runs"]] == [
            (first.json()["runs"][0]["endedAt"], "shipped" if stage == "shipped" else "retry")
        ]
        assert [event["type"] for event in stored["events"]].count("released") == 1
        assert http.get("/fleet/budgets/p").json()["spentUsd"] == 2.5
        # while a different write by that lease is still refused
        different = factory.release(submitted["id"], stage="failed")
        assert (different.status_code, different.json()["code"]) == (409, "lease_lost")
        http.close()
        factory.close()


def test_a_retried_autoship_patch_gets_the_shipped_job(server):
    http, factory = Http(server.url), Factory(server.url, "f1")
    submitted = submit(http)
    factory.claim()
    assert factory.patch(submitted["id"], "testing").status_code == 200
    shipped = factory.patch(submitted["id"], "shipped", insights={"costUsd": 1.0})
    assert shipped.status_code == 200
    again = factory.patch(submitted["id"], "shipped", insights={"costUsd": 1.0})
    assert again.status_code == 200, again.text
    assert (again.json()["stage"], again.json()["updatedAt"]) == ("shipped", shipped.json()["updatedAt"])
    assert [run["result"] for run in job(http, submitted["id"])["runs"]] == ["shipped"]
    # A different write by that lease is still lease_lost
    for different in (factory.patch(submitted["id"], "building"), factory.release(submitted["id"], stage="shipped")):
        assert (different.status_code, different.json()["code"]) == (409, "lease_lost")
    http.close()
    factory.close()


def test_a_stale_lease_never_overwrites_the_new_owner_but_its_retry_is_answered(serve):
    with serve({"FLEET_RETRY_BACKOFF_SECONDS": "1"}, args=NO_TIMERS) as server:
        http, old, new = Http(server.url), Factory(server.url, "f1"), Factory(server.url, "f2")
        submitted = submit(http)
        old.claim()
        retried = old.release(submitted["id"], result="retry")
        assert retried.status_code == 200 and retried.json()["retryAt"]
        # The job waits out its backoff; once past, the sweep moves it back and another factory takes it
        assert new.claim()["job"] is None
        time.sleep(max(0.0, (clock.parse(retried.json()["retryAt"]) - datetime.now(timezone.utc)).total_seconds()) + 0.05)
        assert http.post("/admin/functions/sweep_expired_leases", {"input": ""}).status_code == 202
        claimed = new.claim()
        assert claimed["job"]["id"] == submitted["id"]
        # The old lease's retry of its release is answered with the job, now the new owner's
        again = old.release(submitted["id"], result="retry")
        assert again.status_code == 200, again.text
        assert (again.json()["lease"]["leaseId"], again.json()["attempts"]) == (new.lease, 1)
        # and any other write by the old lease is refused, leaving the new owner's job untouched
        for stale in (old.patch(submitted["id"], "building"), old.release(submitted["id"], stage="shipped")):
            assert (stale.status_code, stale.json()["code"]) == (409, "lease_lost")
        assert old.heartbeat(submitted["id"])["status"] == "revoked"
        after = job(http, submitted["id"])
        assert (after["stage"], after["lease"]["leaseId"], after["attempts"]) == ("assigned", new.lease, 1)
        http.close()
        old.close()
        new.close()


# A restart is not an outage for the fleet


def stop_longer_than_a_lease(server, expires_at: str) -> None:
    """Stop the coordinator until its holder's lease is 3 s past expiry, then start it on the
    same port and database."""
    port = server.port
    server.stop()
    wait_until_past(expires_at, margin=3.0)
    server.start(port=port)


def test_after_a_restart_longer_than_a_lease_the_holder_renews_and_ships(serve):
    with serve(SHORT_LEASE, args=NO_TIMERS) as server:
        http, holder, other = Http(server.url), Factory(server.url, "f1"), Factory(server.url, "f2")
        submitted = submit(http)
        holder.claim()
        assert holder.patch(submitted["id"], "building").status_code == 200
        beat = holder.heartbeat(submitted["id"])
        assert beat["status"] == "renewed"
        # Given the coordinator is down for longer than the lease
        stop_longer_than_a_lease(server, beat["expiresAt"])
        http, holder, other = reconnect(http, holder, other)
        # When the holder's first heartbeat after the restart arrives
        again = holder.heartbeat(submitted["id"])
        # Then its lease is renewed, not revoked
        assert again["status"] == "renewed", again
        # and nobody else can take the job: not by a claim, not by the sweep
        assert other.claim()["job"] is None
        assert other.heartbeat(submitted["id"], holder.lease)["status"] == "revoked"
        sweep(http)
        assert other.claim()["job"] is None
        # and the holder's writes are accepted: it ships under the lease it kept
        assert holder.heartbeat(submitted["id"])["status"] == "renewed"
        assert holder.patch(submitted["id"], "testing").status_code == 200
        shipped = holder.release(submitted["id"], stage="shipped")
        assert shipped.status_code == 200, shipped.text
        body = shipped.json()
        assert (body["stage"], body["attempts"], [r["result"] for r in body["runs"]]) == ("shipped", 0, ["shipped"])
        for client in (http, holder, other):
            client.close()


def test_a_holder_that_never_comes_back_is_requeued_a_term_after_the_restart(serve):
    with serve(SHORT_LEASE, args=NO_TIMERS) as server:
        http, holder, other = Http(server.url), Factory(server.url, "f1"), Factory(server.url, "f2")
        submitted = submit(http)
        claimed = holder.claim()
        # Given the coordinator is down for longer than the lease, and the holder is gone
        stop_longer_than_a_lease(server, claimed["lease"]["expiresAt"])
        http, holder, other = reconnect(http, holder, other)
        # When another factory comes first, and the sweep runs
        assert other.claim()["job"] is None
        sweep(http)
        # Then the job is still the holder's for one more lease term
        spared = job(http, submitted["id"])
        assert spared["stage"] == "assigned"
        assert (spared["lease"]["leaseId"], spared["lease"]["spared"]) == (holder.lease, True)
        assert spared["events"][-1]["type"] == "lease_spared"
        assert other.claim()["job"] is None
        # and once that term is over, the sweep requeues it with the attempt counted
        wait_until_past(spared["lease"]["expiresAt"], margin=0.2)
        sweep(http)
        requeued = job(http, submitted["id"])
        assert (requeued["stage"], requeued["attempts"], requeued["runs"][-1]["result"]) == ("queued", 1, "expired")
        taken = other.claim()
        assert (taken["job"]["id"], taken["lease"]["epoch"]) == (submitted["id"], 2)
        # and the old holder, back too late, is fenced
        assert holder.heartbeat(submitted["id"])["status"] == "revoked"
        late = holder.release(submitted["id"], stage="shipped")
        assert (late.status_code, late.json()["code"]) == (409, "lease_lost")
        for client in (http, holder, other):
            client.close()
