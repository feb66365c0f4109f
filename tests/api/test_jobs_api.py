"""Jobs over HTTP: submit, read, list, claim, PATCH, release, actions, queue-state."""
from __future__ import annotations

from datetime import timedelta

from fleet import clock


def test_submit_is_idempotent_by_key(api):
    first = api.post("/fleet/jobs", {"productId": "p", "idempotencyKey": "k1", "title": "Fix login"})
    again = api.post("/fleet/jobs", {"productId": "p", "idempotencyKey": "k1", "title": "Fix login"})
    other = api.post("/fleet/jobs", {"productId": "p", "idempotencyKey": "k1", "title": "Something else"})

    assert first.status_code == 201 and first.json["stage"] == "queued"
    assert first.headers["x-fleet-request-charge"] == "0"  # SQLite charges no request units
    assert again.status_code == 200 and again.json["id"] == first.json["id"]
    assert other.status_code == 409 and other.json["code"] == "idempotency_conflict"
    assert other.headers["content-type"] == "application/problem+json"


def test_job_id_names_its_product_and_reads_back_with_runs_and_events(api):
    job = api.submit("k1", title="t")
    assert job["id"].startswith("p:") and len(job["id"]) == len("p:") + 20

    body = api.job(job["id"])
    assert body["runs"] == [] and body["events"][0]["type"] == "submitted"


def test_deps_block_until_every_dep_ships(api):
    a = api.submit("a")
    b = api.submit("b")
    c = api.submit("c", deps=["a", "b"])
    assert c["stage"] == "blocked"
    assert {d["idempotencyKey"] for d in c["blockedOn"]} == {"a", "b"}

    for job in (a, b):
        assert api.post(f"/fleet/jobs/{job['id']}/actions/ship").json["stage"] == "shipped"

    assert api.job(c["id"])["stage"] == "queued"


def test_unknown_dep_is_refused(api):
    response = api.post("/fleet/jobs", {"productId": "p", "idempotencyKey": "x", "deps": ["nope"]})
    assert response.status_code == 400 and response.json["code"] == "validation_error"
    assert "nope" in response.json["detail"]


def test_claim_patch_release_walk(api):
    job = api.submit("k1", priority="high")
    claimed = api.claim()
    lease = claimed["lease"]
    assert claimed["job"]["id"] == job["id"] and claimed["job"]["stage"] == "assigned"
    assert lease["epoch"] == 1 and lease["expiresAt"] == "2026-03-02T10:05:00.000Z"  # now + 300 s

    for stage in ("building", "review", "building", "testing"):
        response = api.call("PATCH", f"/fleet/jobs/{job['id']}", {"leaseId": lease["leaseId"], "stage": stage})
        assert response.status_code == 200, response.json
        assert response.json["stage"] == stage

    released = api.post(
        f"/fleet/jobs/{job['id']}/lease/release",
        {
            "leaseId": lease["leaseId"],
            "stage": "shipped",
            "insights": {"costUsd": 0.42, "tokensIn": 1000, "tokensOut": 200},
            "prUrl": "https://github.com/acme/app/pull/7",
            "branch": "aq/job/1",
        },
    ).json
    run = released["runs"][-1]
    assert released["stage"] == "shipped" and released["lease"] is None
    assert run["result"] == "shipped" and run["endedAt"] and run["prUrl"].endswith("/7")
    assert run["insights"] == {"costUsd": 0.42, "tokensIn": 1000, "tokensOut": 200}


def test_patch_with_a_wrong_or_expired_lease_is_lease_lost(api):
    job = api.submit("k1")
    lease = api.claim()["lease"]

    wrong = api.call("PATCH", f"/fleet/jobs/{job['id']}", {"leaseId": "not-it", "stage": "building"})
    api.clock.advance(301)
    expired = api.call("PATCH", f"/fleet/jobs/{job['id']}", {"leaseId": lease["leaseId"], "stage": "building"})

    assert wrong.status_code == expired.status_code == 409
    assert wrong.json["code"] == expired.json["code"] == "lease_lost"
    assert api.job(job["id"])["stage"] == "assigned"  # nothing written


def test_illegal_transition(api):
    job = api.submit("k1")
    lease = api.claim()["lease"]
    api.call("PATCH", f"/fleet/jobs/{job['id']}", {"leaseId": lease["leaseId"], "stage": "review"})

    back = api.call("PATCH", f"/fleet/jobs/{job['id']}", {"leaseId": lease["leaseId"], "stage": "assigned"})
    assert back.status_code == 409 and back.json["code"] == "illegal_transition"


def test_retry_counts_attempts_and_dead_letters_at_max(api):
    job = api.submit("k1", maxAttempts=3)
    for expected, wait in (("queued", 30), ("queued", 60), ("dead_letter", None)):
        lease = api.claim()["lease"]
        released = api.post(f"/fleet/jobs/{job['id']}/lease/release", {"leaseId": lease["leaseId"], "result": "retry"}).json
        assert released["stage"] == expected
        if wait is None:
            assert released["retryAt"] is None
            break
        # The job waits out its backoff (30 s, then doubling): no claim takes it meanwhile
        assert released["retryAt"] == clock.format(api.clock.now() + timedelta(seconds=wait))
        assert released["events"][-2]["detail"]["retryAt"] == released["retryAt"]
        assert "waits to retry until" in api.get(f"/dashboard/fleet/jobs/{job['id']}").text
        assert "retry at " in api.get("/dashboard/fleet/jobs?stage=queued").text
        assert api.claim()["job"] is None
        named = api.post(f"/fleet/jobs/{job['id']}/claim", {"factoryId": "f1"})
        assert named.status_code == 409 and named.json["reason"] == "retry_wait"
        assert named.json["retryAt"] == released["retryAt"]
        api.clock.advance(wait - 1)
        api.sweep()
        assert api.claim()["job"] is None  # a second early
        # When its time has passed, the sweep moves it back
        api.clock.advance(1)
        api.sweep()
        assert api.job(job["id"])["retryAt"] is None
    assert api.job(job["id"])["attempts"] == 3


def test_an_operators_requeue_ends_a_retry_wait(api):
    job = api.submit("k1")
    lease = api.claim()["lease"]
    api.post(f"/fleet/jobs/{job['id']}/lease/release", {"leaseId": lease["leaseId"], "result": "retry"})
    requeued = api.post(f"/fleet/jobs/{job['id']}/actions/requeue").json
    assert requeued["retryAt"] is None and requeued["attempts"] == 0
    assert api.claim()["job"]["id"] == job["id"]


def test_a_retry_wait_of_zero_queues_the_job_claimable_at_once(tmp_path):
    from tests.api.conftest import done, make_api

    api = make_api(tmp_path, retry_backoff_seconds=0)
    try:
        job = api.submit("k1")
        lease = api.claim()["lease"]
        released = api.post(f"/fleet/jobs/{job['id']}/lease/release", {"leaseId": lease["leaseId"], "result": "retry"}).json
        assert released["retryAt"] is None and api.claim()["job"]["id"] == job["id"]
    finally:
        done()


def test_give_back_keeps_attempts_and_checkpoint(api):
    job = api.submit("k1")
    lease = api.claim()["lease"]
    released = api.post(
        f"/fleet/jobs/{job['id']}/lease/release", {"leaseId": lease["leaseId"], "checkpoint": {"step": 3}}
    ).json
    assert released["stage"] == "queued" and released["attempts"] == 0 and released["checkpoint"] == {"step": 3}
    assert released["runs"][-1]["result"] == "released"


def test_claim_prefers_score_and_respects_capabilities(api):
    api.submit("low", priority="low")
    api.clock.advance(60)
    gpu = api.submit("gpu", priority="critical", capabilities=["gpu"])
    high = api.submit("high", priority="high")

    # A factory without gpu skips the critical gpu job and takes the high one.
    assert api.claim("f1", capabilities=[])["job"]["id"] == high["id"]
    assert api.claim("f2", capabilities=["gpu"])["job"]["id"] == gpu["id"]
    # Nothing left that needs nothing but the low job; then nothing at all.
    assert api.claim("f3", capabilities=[])["job"]["idempotencyKey"] == "low"
    assert api.claim("f3", capabilities=[]) == {"job": None, "reason": "no_job"}


def test_request_weights_override_per_field(api):
    old_low = api.submit("old-low", priority="low")
    api.clock.advance(minutes=30)
    api.submit("new-high", priority="high")
    # Default: 10*2 + 0 beats 1*30 + 10*0?  20 < 30, so the old low job wins on age.
    # With priority weighted 100 the high job wins: 100*2 = 200 > 30.
    assert api.claim("f1", weights={"priority": 100})["job"]["idempotencyKey"] == "new-high"
    assert api.claim("f2")["job"]["id"] == old_low["id"]


def test_product_weight_registry_merges_per_field(api):
    put = api.call("PUT", "/fleet/weights/p", {"age": 0.5})
    assert put.status_code == 200
    assert put.json["resolved"] == {"age": 0.5, "priority": 10.0, "retries": -2.0, "capabilities": 5.0}
    again = api.call("PUT", "/fleet/weights/p", {"priority": 3}).json
    assert again["weights"] == {"age": 0.5, "priority": 3.0}
    bad = api.call("PUT", "/fleet/weights/p", {"agee": 1})
    assert bad.status_code == 400 and bad.json["errors"][0]["field"] == "agee"
    # a weight sent as null drops its override: the default applies again, the rest are kept
    reset = api.call("PUT", "/fleet/weights/p", {"age": None}).json
    assert reset["weights"] == {"priority": 3.0} and reset["resolved"]["age"] == 1.0


def test_claim_named_job(api):
    job = api.submit("k1", capabilities=["python"])
    refused = api.post(f"/fleet/jobs/{job['id']}/claim", {"factoryId": "f1", "capabilities": []})
    assert refused.status_code == 409 and refused.json["reason"] == "capabilities"
    elsewhere = api.post(f"/fleet/jobs/{job['id']}/claim", {"factoryId": "f1", "productId": "q", "capabilities": ["python"]})
    assert elsewhere.status_code == 400 and elsewhere.json["errors"][0]["field"] == "productId"
    assert api.post(f"/fleet/jobs/{job['id']}/claim", {"factoryId": "f1", "productId": "p", "capabilities": []}).json["reason"] == "capabilities"
    taken = api.post(f"/fleet/jobs/{job['id']}/claim", {"factoryId": "f1", "capabilities": ["python"]})
    assert taken.status_code == 200 and taken.json["lease"]["factoryId"] == "f1"
    again = api.post(f"/fleet/jobs/{job['id']}/claim", {"factoryId": "f2", "capabilities": ["python"]})
    assert again.status_code == 409 and again.json["reason"] == "not_queued"


def test_heartbeat_renews_and_revokes(api):
    job = api.submit("k1")
    lease = api.claim()["lease"]
    api.clock.advance(100)
    beat = api.post(
        "/fleet/factories/f1/heartbeat",
        {"capabilities": ["python"], "seatLimit": 2, "running": [
            {"jobId": job["id"], "leaseId": lease["leaseId"]},
            {"jobId": job["id"], "leaseId": "stale"},
            {"jobId": "garbage", "leaseId": "x"},
        ]},
    ).json
    statuses = [entry["status"] for entry in beat["leases"]]
    assert statuses == ["renewed", "revoked", "revoked"]
    assert beat["leases"][0]["expiresAt"] == "2026-03-02T10:06:40.000Z"  # 10:01:40 + 300 s

    factories = api.get("/fleet/factories").json["items"]
    assert factories == [
        {
            "id": "f1",
            "products": [],
            "capabilities": ["python"],
            "seatLimit": 2,
            "seatsUsed": 1,
            "lastHeartbeatAt": "2026-03-02T10:01:40.000Z",
            "health": "online",
        }
    ]
    api.clock.advance(61)
    assert api.get("/fleet/factories").json["items"][0]["health"] == "stale"
    api.clock.advance(240)
    assert api.get("/fleet/factories").json["items"][0]["health"] == "offline"


def test_operator_actions(api):
    job = api.submit("k1")
    lease = api.claim()["lease"]
    requeued = api.post(f"/fleet/jobs/{job['id']}/actions/requeue", {"reason": "stuck", "actor": "ops"}).json
    assert requeued["stage"] == "queued" and requeued["lease"] is None and requeued["attempts"] == 0
    assert api.call("PATCH", f"/fleet/jobs/{job['id']}", {"leaseId": lease["leaseId"], "stage": "building"}).json[
        "code"
    ] == "lease_lost"

    shipped = api.post(f"/fleet/jobs/{job['id']}/actions/ship").json
    again = api.post(f"/fleet/jobs/{job['id']}/actions/ship")
    assert shipped["stage"] == "shipped" and again.status_code == 200 and again.json["stage"] == "shipped"
    assert api.post(f"/fleet/jobs/{job['id']}/actions/reject").json["code"] == "illegal_transition"
    assert api.post(f"/fleet/jobs/{job['id']}/actions/launch").status_code == 400

    other = api.submit("k2")
    assert api.post(f"/fleet/jobs/{other['id']}/actions/cancel").json["stage"] == "cancelled"
    third = api.submit("k3")
    assert api.post(f"/fleet/jobs/{third['id']}/actions/reject").json["stage"] == "failed"


def test_ship_mirrors_the_outcome_onto_the_latest_run(api):
    job = api.submit("k1")
    lease = api.claim()["lease"]
    api.post(f"/fleet/jobs/{job['id']}/lease/release", {"leaseId": lease["leaseId"], "stage": "testing"})
    parked = api.job(job["id"])
    assert parked["stage"] == "testing" and parked["lease"] is None and parked["runs"][-1]["result"] is None

    shipped = api.post(f"/fleet/jobs/{job['id']}/actions/ship").json
    assert shipped["runs"][-1]["result"] == "shipped" and shipped["runs"][-1]["endedAt"]


def test_ship_of_a_job_given_back_leaves_the_run_that_gave_it_back_released(api):
    job = api.submit("k1")
    lease = api.claim()["lease"]
    api.post(f"/fleet/jobs/{job['id']}/lease/release", {"leaseId": lease["leaseId"]})
    assert api.job(job["id"])["stage"] == "queued"

    shipped = api.post(f"/fleet/jobs/{job['id']}/actions/ship").json
    assert shipped["stage"] == "shipped" and [run["result"] for run in shipped["runs"]] == ["released"]


def test_queue_state_is_one_point_read_and_moves_only_when_claims_may_succeed(api):
    assert api.get("/fleet/queue-state?productId=never").json == {"productId": "never", "version": 0, "updatedAt": None}
    job = api.submit("k1")
    assert api.version() == 1
    lease = api.claim()["lease"]
    api.call("PATCH", f"/fleet/jobs/{job['id']}", {"leaseId": lease["leaseId"], "stage": "building"})
    assert api.version() == 1  # claims and PATCHes free nothing up
    api.post(f"/fleet/jobs/{job['id']}/lease/release", {"leaseId": lease["leaseId"], "result": "retry"})
    assert api.version() == 1  # waiting out its retry backoff: not claimable yet
    api.clock.advance(30)
    api.sweep()
    assert api.version() == 2  # the sweep moved it back

    api.store.reset()
    api.get("/fleet/queue-state?productId=p")
    # The caller's token, read within the minute, is not read again
    assert dict(api.store.calls) == {"read:jobs": 1}
    api.clock.advance(60)
    api.get("/fleet/queue-state?productId=p")
    assert dict(api.store.calls) == {"read:jobs": 2, "read:tokens": 1}  # once a minute


def test_listing_filters_and_pages(api):
    for n in range(5):
        api.submit(f"k{n}", product="a" if n % 2 else "b")
        api.clock.advance(1)
    page = api.get("/fleet/jobs?limit=2").json
    assert [j["idempotencyKey"] for j in page["items"]] == ["k4", "k3"]  # newest first
    assert page["nextOffset"] == 2
    rest = api.get(f"/fleet/jobs?limit=2&offset={page['nextOffset']}").json
    assert [j["idempotencyKey"] for j in rest["items"]] == ["k2", "k1"]
    token = api.get(f"/fleet/jobs?limit=2&continuation={page['continuation']}").json
    assert [j["idempotencyKey"] for j in token["items"]] == ["k2", "k1"]
    last = api.get("/fleet/jobs?limit=2&offset=4").json
    assert len(last["items"]) == 1 and last["nextOffset"] is None and last["continuation"] is None
    both = api.get(f"/fleet/jobs?limit=2&offset=2&continuation={page['continuation']}")
    assert both.status_code == 400 and both.json["errors"] == [
        {"field": "offset", "message": "not allowed with continuation"}]

    assert [j["idempotencyKey"] for j in api.get("/fleet/jobs?productId=a").json["items"]] == ["k3", "k1"]
    assert api.get("/fleet/jobs?stage=shipped").json["items"] == []


def test_lease_expiry_through_the_sweep(api):
    job = api.submit("k1", maxAttempts=2)
    api.claim()
    api.run_timers_for(301)
    swept = api.job(job["id"])
    assert swept["stage"] == "queued" and swept["attempts"] == 1 and swept["runs"][-1]["result"] == "expired"

    api.claim()
    api.run_timers_for(301)
    assert api.job(job["id"])["stage"] == "dead_letter"


def test_an_outage_does_not_cause_mass_expiry(api):
    """Given a sweep that last ran before a 10-minute outage, the leases that expired during
    the outage get one more lease term instead of expiring; the factory can renew them."""
    for n in range(3):
        api.submit(f"k{n}")
    claimed = [api.claim(f"f{n}") for n in range(3)]
    jobs, leases = [c["job"] for c in claimed], [c["lease"] for c in claimed]
    api.sweep()
    api.clock.advance(minutes=10)  # nobody could renew: the store was down
    api.sweep()
    for job, lease in zip(jobs, leases):
        body = api.job(job["id"])
        assert body["stage"] == "assigned" and body["attempts"] == 0
        assert body["lease"]["expiresAt"] == "2026-03-02T10:15:00.000Z"  # 10:10 + 300 s
        assert body["events"][-1]["type"] == "lease_spared"
    beat = api.post("/fleet/factories/f0/heartbeat", {"running": [{"jobId": jobs[0]["id"], "leaseId": leases[0]["leaseId"]}]})
    assert beat.json["leases"][0]["status"] == "renewed"

    api.run_timers_for(301)  # the timer is back on schedule: unrenewed leases now expire
    assert [api.job(j["id"])["stage"] for j in jobs] == ["queued", "queued", "queued"]


def test_health_and_openapi(api):
    health = api.get("/fleet/health").json
    assert health["status"] == "ok" and health["flags"] == {"preemption": False, "budgets": False}

    doc = api.get("/fleet/openapi.json").json
    assert doc["openapi"] == "3.1.0"
    assert doc["paths"]["/fleet/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "JobSpec" in doc["components"]["schemas"]


def test_after_an_outage_the_first_heartbeat_renews_before_any_sweep(api):
    """Given a factory whose lease expired while the coordinator was down, when its heartbeat
    arrives before the first sweep, then the lease is renewed, not revoked, and its writes
    are accepted: the outage is nobody's fault."""
    job = api.submit("k1")
    lease = api.claim("f1")["lease"]["leaseId"]
    api.sweep()
    api.clock.advance(minutes=8)  # down; the lease (5 min) expired meanwhile
    beat = api.post("/fleet/factories/f1/heartbeat", {"running": [{"jobId": job["id"], "leaseId": lease}]}).json
    assert beat["leases"][0]["status"] == "renewed"
    assert beat["leases"][0]["expiresAt"] == "2026-03-02T10:13:00.000Z"  # 10:08 + 300 s
    assert api.call("PATCH", f"/fleet/jobs/{job['id']}", {"leaseId": lease, "stage": "building"}).status_code == 200
    api.sweep()
    assert api.job(job["id"])["attempts"] == 0


def test_without_an_outage_an_expired_lease_is_revoked(api):
    job = api.submit("k1")
    lease = api.claim("f1")["lease"]["leaseId"]
    api.run_timers_for(299)
    api.clock.advance(2)  # the sweep ran a minute ago: no outage, the lease simply expired
    beat = api.post("/fleet/factories/f1/heartbeat", {"running": [{"jobId": job["id"], "leaseId": lease}]}).json
    assert beat["leases"][0]["status"] == "revoked"
