"""The coordinator core over HTTP, as factories and operators use it."""
from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from tests.e2e.conftest import Http

pytestmark = pytest.mark.e2e


def test_submit_claim_patch_ship(http):
    job = http.post("/fleet/jobs", {"productId": "web", "idempotencyKey": "fix-login", "title": "Fix login"}).json()
    claimed = http.post("/fleet/claim", {"factoryId": "f1", "productId": "web"}).json()
    lease = claimed["lease"]["leaseId"]
    assert claimed["job"]["id"] == job["id"]

    for stage in ("building", "review", "testing"):
        assert http.call("PATCH", f"/fleet/jobs/{job['id']}", {"leaseId": lease, "stage": stage}).status_code == 200
    shipped = http.post(f"/fleet/jobs/{job['id']}/actions/ship", {"actor": "ops"}).json()
    assert shipped["stage"] == "shipped" and shipped["runs"][0]["result"] == "shipped"


def test_racing_factories_never_hold_a_job_twice(http, server):
    """Given 120 queued jobs, when 8 factories race to claim and ship them over HTTP, then
    every job is claimed exactly once; and no PATCH naming a superseded lease ever succeeds."""
    jobs = 120
    for n in range(jobs):
        assert http.post("/fleet/jobs", {"productId": "race", "idempotencyKey": f"j{n}"}).status_code == 201

    claims: list[tuple[str, str, str]] = []
    lock = threading.Lock()
    errors: list[str] = []

    def factory(name: str) -> None:
        client = Http(server.url)
        try:
            while True:
                body = client.post("/fleet/claim", {"factoryId": name, "productId": "race"}).json()
                if body["job"] is None:
                    return
                job_id, lease = body["job"]["id"], body["lease"]["leaseId"]
                with lock:
                    claims.append((job_id, name, lease))
                for stage in ("building", "testing", "shipped"):
                    response = client.call("PATCH", f"/fleet/jobs/{job_id}", {"leaseId": lease, "stage": stage})
                    if response.status_code != 200:
                        errors.append(f"{name} {job_id} {stage}: {response.text}")
        finally:
            client.close()

    threads = [threading.Thread(target=factory, args=(f"f{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)

    assert not errors
    per_job = Counter(job_id for job_id, _, _ in claims)
    assert len(per_job) == jobs and set(per_job.values()) == {1}
    assert len({f for _, f, _ in claims}) > 1  # they really raced
    listed = http.get("/fleet/jobs?productId=race&stage=shipped&limit=500").json()["items"]
    assert len(listed) == jobs and all(j["leaseEpoch"] == 1 for j in listed)


def test_superseded_leases_are_fenced_under_contention(http, server):
    """Given jobs whose leases an operator revokes and other factories re-claim, when the old
    holders keep writing with their old leases (concurrently), every such write is 409."""
    keys = [f"s{n}" for n in range(12)]
    for key in keys:
        http.post("/fleet/jobs", {"productId": "fence", "idempotencyKey": key})
    old = [http.post("/fleet/claim", {"factoryId": "old", "productId": "fence"}).json() for _ in keys]
    for claimed in old:
        http.post(f"/fleet/jobs/{claimed['job']['id']}/actions/requeue", {"actor": "ops"})

    outcomes: list[int] = []
    lock = threading.Lock()

    def zombie(claimed: dict) -> None:
        client = Http(server.url)
        for stage in ("building", "review", "testing", "shipped"):
            status = client.call(
                "PATCH", f"/fleet/jobs/{claimed['job']['id']}", {"leaseId": claimed["lease"]["leaseId"], "stage": stage}
            ).status_code
            with lock:
                outcomes.append(status)
        client.close()

    def newcomer() -> None:
        client = Http(server.url)
        while client.post("/fleet/claim", {"factoryId": "new", "productId": "fence"}).json()["job"]:
            pass
        client.close()

    threads = [threading.Thread(target=zombie, args=(c,)) for c in old] + [threading.Thread(target=newcomer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert outcomes and set(outcomes) == {409}
    for claimed in old:
        job = http.get(f"/fleet/jobs/{claimed['job']['id']}").json()
        assert job["lease"]["factoryId"] == "new" and job["lease"]["epoch"] == 2 and job["stage"] == "assigned"


def test_leases_expire_through_the_admin_endpoint(serve):
    with serve({"FLEET_LEASE_SECONDS": "1"}) as server:
        http = Http(server.url)
        job = http.post("/fleet/jobs", {"productId": "p", "idempotencyKey": "k"}).json()
        lease = http.post("/fleet/claim", {"factoryId": "f1", "productId": "p"}).json()["lease"]
        time.sleep(1.2)  # the lease is 1 s long; the server's clock is real
        assert http.post("/admin/functions/sweep_expired_leases", {"input": ""}).status_code == 202
        swept = http.get(f"/fleet/jobs/{job['id']}").json()
        assert swept["stage"] == "queued" and swept["attempts"] == 1
        late = http.call("PATCH", f"/fleet/jobs/{job['id']}", {"leaseId": lease["leaseId"], "stage": "building"})
        assert late.status_code == 409 and late.json()["code"] == "lease_lost"
        http.close()


def test_data_survives_a_restart(http, server):
    job = http.post("/fleet/jobs", {"productId": "p", "idempotencyKey": "durable"}).json()
    http.post("/fleet/claim", {"factoryId": "f1", "productId": "p"})
    server.restart()
    again = Http(server.url)
    body = again.get(f"/fleet/jobs/{job['id']}").json()
    assert body["stage"] == "assigned" and body["lease"]["factoryId"] == "f1"
    assert again.get("/fleet/queue-state?productId=p").json()["version"] == 1
    again.close()


def test_function_keys_guard_everything_but_health(serve):
    with serve({"FLEET_FUNCTION_KEYS": "k1,k2"}) as server:
        anonymous, keyed = Http(server.url), Http(server.url, key="k2")
        assert anonymous.get("/fleet/health").status_code == 200
        denied = anonymous.get("/fleet/jobs")
        assert denied.status_code == 401 and denied.headers["content-type"] == "application/problem+json"
        assert anonymous.get("/fleet/jobs?code=k1").status_code == 200
        assert keyed.get("/fleet/jobs").status_code == 200
        assert anonymous.post("/admin/functions/sweep_expired_leases", {"input": ""}).status_code == 401
        assert keyed.post("/admin/functions/sweep_expired_leases", {"input": ""}).status_code == 202
        anonymous.close()
        keyed.close()


def test_bad_input_over_the_wire(http):
    raw = http.session.post(http.url + "/fleet/jobs", data=b"{nope", headers={"content-type": "application/json"})
    assert raw.status_code == 400 and raw.json()["code"] == "validation_error"
    big = http.session.post(http.url + "/fleet/jobs", data=b"x" * (5 * 1024 * 1024))
    assert big.status_code == 413
    assert http.get("/fleet/jobs/p:zzzzzzzzzzzzzzzzzzzz").status_code == 404
    assert http.get("/fleet/nothing/here").json()["code"] == "not_found"


def test_each_response_reports_its_request_charge(http, store_env):
    response = http.post("/fleet/jobs", {"productId": "p", "idempotencyKey": "charged"})
    charge = float(response.headers["x-fleet-request-charge"])
    assert charge > 0 if store_env["FLEET_STORE"] == "cosmos" else charge == 0
    poll = http.get("/fleet/queue-state?productId=p")
    if store_env["FLEET_STORE"] == "cosmos":
        assert float(poll.headers["x-fleet-request-charge"]) >= 1  # one point read
