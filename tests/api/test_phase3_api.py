"""Phase 3 over HTTP: DAGs, preemption, budgets, the review gate, and the flags."""
from __future__ import annotations

import pytest


# DAG decomposition


def test_composite_parent_waits_for_its_children(api):
    parent = api.post(
        "/fleet/jobs",
        {"productId": "p", "idempotencyKey": "epic", "kind": "composite", "priority": "high",
         "children": [{"idempotencyKey": "c1", "bodyMd": "one"}, {"idempotencyKey": "c2", "bodyMd": "two"}]},
    )
    assert parent.status_code == 201
    body = parent.json
    assert body["stage"] == "blocked" and body["deps"] == ["c1", "c2"] and len(body["children"]) == 2

    dag = api.get(f"/fleet/jobs/{body['id']}/dag").json
    assert [c["idempotencyKey"] for c in dag["children"]] == ["c1", "c2"]
    assert all(c["priority"] == "high" for c in dag["children"])  # inherited

    for _ in range(2):
        claimed = api.claim()
        api.post(f"/fleet/jobs/{claimed['job']['id']}/lease/release",
                 {"leaseId": claimed["lease"]["leaseId"], "stage": "done"})
    assert api.job(body["id"])["stage"] == "queued"


def test_children_added_later_put_a_queued_parent_back_to_blocked(api):
    parent = api.submit("epic", kind="composite")
    assert parent["stage"] == "queued"
    added = api.post(f"/fleet/jobs/{parent['id']}/children", {"children": [{"idempotencyKey": "c3"}]})
    assert added.status_code == 201
    assert added.json["parent"]["stage"] == "blocked" and added.json["children"][0]["parentId"] == parent["id"]


def test_children_cannot_be_added_to_a_running_parent(api):
    parent = api.submit("epic", kind="composite")
    api.claim()
    response = api.post(f"/fleet/jobs/{parent['id']}/children", {"children": [{"idempotencyKey": "c3"}]})
    assert response.status_code == 409 and response.json["code"] == "illegal_transition"


def test_cycles_are_refused_naming_the_cycle(api):
    response = api.post(
        "/fleet/jobs",
        {"productId": "p", "idempotencyKey": "epic", "kind": "composite",
         "children": [{"idempotencyKey": "a", "deps": ["b"]}, {"idempotencyKey": "b", "deps": ["a"]}]},
    )
    assert response.status_code == 400
    assert "a → b → a" in response.json["detail"] or "b → a → b" in response.json["detail"]
    assert api.get("/fleet/jobs").json["items"] == []

    parent = api.submit("parent", kind="composite")
    api.submit("waiter", deps=["parent"])
    looped = api.post(f"/fleet/jobs/{parent['id']}/children", {"children": [{"idempotencyKey": "c", "deps": ["waiter"]}]})
    assert looped.status_code == 400 and "parent → c → waiter → parent" in looped.json["detail"]


def test_cancel_cancels_unfinished_descendants(api):
    parent = api.post(
        "/fleet/jobs",
        {"productId": "p", "idempotencyKey": "epic", "kind": "composite",
         "children": [{"idempotencyKey": "c1"}, {"idempotencyKey": "c2"}]},
    ).json
    first = api.claim()
    api.post(f"/fleet/jobs/{first['job']['id']}/lease/release", {"leaseId": first["lease"]["leaseId"], "stage": "shipped"})

    api.post(f"/fleet/jobs/{parent['id']}/actions/cancel")
    stages = {c["idempotencyKey"]: c["stage"] for c in api.get(f"/fleet/jobs/{parent['id']}/dag").json["children"]}
    assert stages == {"c1": "shipped", "c2": "cancelled"}


# Preemption


def test_critical_job_preempts_the_lowest_scoring_lower_priority_job(phase3):
    api = phase3
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


def test_at_the_seat_limit_only_critical_work_is_taken(phase3):
    api = phase3
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


# Budgets


def test_budget_endpoints_are_404_feature_disabled_when_off(api):
    for method, path in [("GET", "/fleet/budgets/p"), ("PUT", "/fleet/budgets/p"),
                         ("POST", "/fleet/budgets/p/pause"), ("POST", "/fleet/budgets/p/resume")]:
        response = api.call(method, path, None if method == "GET" else {"ceilingUsd": 1})  # a GET takes no body
        assert response.status_code == 404 and response.json["code"] == "feature_disabled", path


def test_budget_lifecycle_and_claim_refusals(phase3):
    api = phase3
    assert api.get("/fleet/budgets/p").json["code"] == "not_found"
    budget = api.call("PUT", "/fleet/budgets/p", {"ceilingUsd": 1.0, "window": "daily"}).json
    assert budget["ceilingUsd"] == 1.0 and budget["windowStart"] == "2026-03-02T00:00:00.000Z"

    job = api.submit("k1")
    claimed = api.claim()
    api.post(f"/fleet/jobs/{job['id']}/lease/release",
             {"leaseId": claimed["lease"]["leaseId"], "stage": "shipped", "insights": {"costUsd": 1.25}})
    budget = api.get("/fleet/budgets/p").json
    assert budget["spentUsd"] == 1.25 and budget["paused"] and budget["pausedBy"] == "ceiling"

    api.submit("k2")
    api.store.reset()
    assert api.claim() == {"job": None, "reason": "budget_paused"}
    assert api.store.total("query:jobs") == 0  # the budget is checked first: no job scan

    assert api.post("/fleet/budgets/p/resume").json["paused"] is False
    assert api.claim() == {"job": None, "reason": "budget_exceeded"}
    raised = api.call("PUT", "/fleet/budgets/p", {"ceilingUsd": 5.0, "window": "daily"}).json
    assert raised["paused"] is False
    assert api.claim()["job"]["idempotencyKey"] == "k2"


def test_manual_pause_survives_the_window_roll_and_ceiling_pause_does_not(phase3):
    api = phase3
    api.call("PUT", "/fleet/budgets/p", {"ceilingUsd": 0.5, "window": "daily"})
    api.call("PUT", "/fleet/budgets/q", {"ceilingUsd": 0.5, "window": "daily"})
    for product in ("p", "q"):
        api.submit("k", product=product)
        claimed = api.claim(product=product)
        api.post(f"/fleet/jobs/{claimed['job']['id']}/lease/release",
                 {"leaseId": claimed["lease"]["leaseId"], "stage": "shipped", "insights": {"costUsd": 1}})
    api.post("/fleet/budgets/q/pause")

    api.clock.advance(days=1)
    assert api.post("/admin/functions/roll_budget_windows", {"input": ""}).status_code == 202
    p, q = api.get("/fleet/budgets/p").json, api.get("/fleet/budgets/q").json
    assert (p["spentUsd"], p["paused"]) == (0.0, False)
    assert (q["spentUsd"], q["paused"], q["pausedBy"]) == (0.0, True, "manual")


def test_shipping_twice_accrues_once(phase3):
    api = phase3
    api.call("PUT", "/fleet/budgets/p", {"ceilingUsd": 100})
    job = api.submit("k1")
    claimed = api.claim()
    api.post(f"/fleet/jobs/{job['id']}/lease/release",
             {"leaseId": claimed["lease"]["leaseId"], "stage": "testing", "insights": {"costUsd": 2}})
    api.post(f"/fleet/jobs/{job['id']}/actions/ship")
    api.post(f"/fleet/jobs/{job['id']}/actions/ship")
    api.sweep()
    assert api.get("/fleet/budgets/p").json["spentUsd"] == 2.0
    assert api.job(job["id"])["runs"][-1]["accrued"] is True


def test_estimates_reserve_the_ceiling_at_claim(phase3):
    api = phase3
    api.call("PUT", "/fleet/budgets/p", {"ceilingUsd": 10})
    for n in range(3):
        api.submit(f"k{n}", estimatedCostUsd=4)
    assert api.claim("f1")["job"] is not None
    assert api.claim("f2")["job"] is not None
    assert api.claim("f3") == {"job": None, "reason": "budget_exceeded"}  # 4 + 4 + 4 > 10
    assert api.get("/fleet/budgets/p").json["reservedUsd"] == 8


@pytest.mark.parametrize("body,field", [({"ceilingUsd": -1}, "ceilingUsd"), ({"ceilingUsd": 1, "window": "hourly"}, "window"), ({}, "ceilingUsd")])
def test_budget_validation(phase3, body, field):
    response = phase3.call("PUT", "/fleet/budgets/p", body)
    assert response.status_code == 400 and response.json["errors"][0]["field"] == field


# Review gate


def _parked(api, key="k1"):
    job = api.submit(key)
    claimed = api.claim()
    api.post(f"/fleet/jobs/{job['id']}/lease/release", {"leaseId": claimed["lease"]["leaseId"], "stage": "testing"})
    return job


def test_quorum_of_distinct_reviewers_ships(api):
    job = _parked(api)
    api.post(f"/fleet/jobs/{job['id']}/review/request", {"required": 2, "reviewers": ["ann", "bob", "cy"]})
    assert api.post(f"/fleet/jobs/{job['id']}/review", {"reviewer": "eve", "decision": "approve"}).status_code == 403
    api.post(f"/fleet/jobs/{job['id']}/review", {"reviewer": "ann", "decision": "approve"})
    again = api.post(f"/fleet/jobs/{job['id']}/review", {"reviewer": "ann", "decision": "approve"}).json
    assert again["stage"] == "testing" and again["review"]["approvals"] == ["ann"]
    shipped = api.post(f"/fleet/jobs/{job['id']}/review", {"reviewer": "bob", "decision": "approve"}).json
    assert shipped["stage"] == "shipped" and shipped["runs"][-1]["result"] == "shipped"


def test_a_reject_sends_the_job_back_for_rework(api):
    job = _parked(api)
    api.post(f"/fleet/jobs/{job['id']}/review/request", {"required": 1})
    rejected = api.post(f"/fleet/jobs/{job['id']}/review",
                        {"reviewer": "ann", "decision": "reject", "comment": "tests missing"}).json
    assert rejected["stage"] == "queued"
    assert rejected["events"][-1]["type"] == "review_rejected" and rejected["events"][-1]["detail"]["comment"] == "tests missing"


def test_review_needs_a_testing_job(api):
    job = api.submit("k1")
    response = api.post(f"/fleet/jobs/{job['id']}/review/request", {"required": 1})
    assert response.status_code == 409 and response.json["code"] == "illegal_transition"


def test_a_cancelled_blocked_job_no_longer_says_what_it_waits_for(api):
    parent = api.post("/fleet/jobs", {"productId": "p", "idempotencyKey": "epic", "kind": "composite",
                                      "children": [{"idempotencyKey": "c1"}]}).json
    assert parent["blockedOn"]
    cancelled = api.post(f"/fleet/jobs/{parent['id']}/actions/cancel").json
    assert cancelled["stage"] == "cancelled" and cancelled["blockedOn"] == []
