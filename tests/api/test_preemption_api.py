"""Preemption over HTTP (`FLEET_PREEMPTION`): at its seat limit a factory makes room only for a
critical job; with the flag off, seat limits are advisory."""
from __future__ import annotations


def test_critical_job_preempts_the_lowest_scoring_lower_priority_job(flagged_api):
    api = flagged_api
    api.post("/fleet/factories/f1/heartbeat", {"seatLimit": 2})
    low = api.submit("low", priority="low")
    normal = api.submit("normal")
    first, second = api.claim(), api.claim()
    api.submit("urgent", priority="critical")

    claimed = api.claim()
    assert claimed["job"]["idempotencyKey"] == "urgent" and claimed["preempted"] == [low["id"]]
    victim = api.job(low["id"])
    assert victim["stage"] == "queued" and victim["attempts"] == 0 and victim["runs"][-1]["result"] == "preempted"
    assert any(e["type"] == "preempted" and e["detail"]["preemptor"] == claimed["job"]["id"] for e in victim["events"])
    old_lease = first["lease"] if first["job"]["id"] == low["id"] else second["lease"]
    patch = api.call("PATCH", f"/fleet/jobs/{low['id']}", {"leaseId": old_lease["leaseId"], "stage": "building"})
    assert patch.json["code"] == "lease_lost"
    beat = api.post("/fleet/factories/f1/heartbeat", {"seatLimit": 2, "running": [
        {"jobId": low["id"], "leaseId": old_lease["leaseId"]}]}).json
    assert beat["leases"][0]["status"] == "revoked"
    assert api.job(normal["id"])["stage"] == "assigned"


def test_at_the_seat_limit_only_critical_work_is_taken(flagged_api):
    api = flagged_api
    api.submit("a", priority="critical")
    api.claim(seatLimit=1)
    api.submit("b", priority="high")
    api.submit("c", priority="critical")
    assert api.claim(seatLimit=1) == {"job": None, "reason": "seat_limit"}  # never preempts equal priority


def test_without_the_flag_seat_limits_are_advisory(api):
    api.submit("a", priority="low")
    api.submit("b", priority="critical")
    api.claim(seatLimit=1)
    assert api.claim(seatLimit=1)["job"] is not None
