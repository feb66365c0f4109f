"""Budgets over HTTP (`FLEET_BUDGETS`): the budget endpoints, claims refused for the budget, window
rolls, accrual once per run, reservations of estimates, validation; 404 while the flag is off."""
from __future__ import annotations

import pytest


def test_budget_endpoints_are_404_feature_disabled_when_off(api):
    for method, path in [("GET", "/fleet/budgets/p"), ("PUT", "/fleet/budgets/p"),
                         ("POST", "/fleet/budgets/p/pause"), ("POST", "/fleet/budgets/p/resume")]:
        response = api.call(method, path, None if method == "GET" else {"ceilingUsd": 1})  # a GET takes no body
        assert response.status_code == 404 and response.json["code"] == "feature_disabled", path


def test_budget_lifecycle_and_claim_refusals(flagged_api):
    api = flagged_api
    assert api.get("/fleet/budgets/p").json["code"] == "not_found"
    budget = api.call("PUT", "/fleet/budgets/p", {"ceilingUsd": 1.0, "window": "daily"}).json
    assert budget["ceilingUsd"] == 1.0 and budget["windowStart"] == "2026-03-02T00:00:00.000Z"

    job = api.submit("k1")
    claimed = api.claim()
    api.post(f"/fleet/jobs/{job['id']}/lease/release",
             {"leaseId": claimed["lease"]["leaseId"], "stage": "shipped", "insights": {"costUsd": 1.25}})
    budget = api.get("/fleet/budgets/p").json
    assert budget["spentUsd"] == 1.25 and budget["paused"] and budget["pausedBy"] == "ceiling"
    assert budget["refusal"] == "budget_paused"

    api.submit("k2")
    api.store.reset()
    assert api.claim() == {"job": None, "reason": "budget_paused"}
    assert api.store.total("query:jobs") == 0  # the budget is checked first: no job scan

    resumed = api.post("/fleet/budgets/p/resume").json
    # resumed, but spend is at the ceiling: the answer says claims are still refused, and why
    assert resumed["paused"] is False and resumed["refusal"] == "budget_exceeded"
    assert api.claim() == {"job": None, "reason": "budget_exceeded"}
    raised = api.call("PUT", "/fleet/budgets/p", {"ceilingUsd": 5.0, "window": "daily"}).json
    assert raised["paused"] is False and raised["refusal"] is None
    assert api.claim()["job"]["idempotencyKey"] == "k2"


def test_manual_pause_survives_the_window_roll_and_ceiling_pause_does_not(flagged_api):
    api = flagged_api
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


def test_shipping_twice_accrues_once(flagged_api):
    api = flagged_api
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


def test_estimates_reserve_the_ceiling_at_claim(flagged_api):
    api = flagged_api
    api.call("PUT", "/fleet/budgets/p", {"ceilingUsd": 10})
    for n in range(3):
        api.submit(f"k{n}", estimatedCostUsd=4)
    claims = [api.claim("f1"), api.claim("f2")]
    assert all(claim["job"] is not None for claim in claims)
    assert api.claim("f3") == {"job": None, "reason": "budget_exceeded"}  # 4 + 4 + 4 > 10
    answer = api.get("/fleet/budgets/p")
    budget = answer.json
    assert (budget["reservedUsd"], budget["remainingUsd"]) == (8, 2)  # the room the third claim lacked
    # each named by its run, never by its lease (a write capability any reader would see here)
    assert budget["reservations"].keys() == {claim["runId"] for claim in claims}
    assert all(held["amountUsd"] == 4 and held.keys() == {"amountUsd", "at"} for held in budget["reservations"].values())
    assert not any(claim["lease"]["leaseId"] in answer.text for claim in claims)


def test_what_is_shown_of_spend_is_rounded_to_a_millionth(flagged_api):
    api = flagged_api
    api.call("PUT", "/fleet/budgets/p", {"ceilingUsd": 1})
    for n, cost in enumerate((0.1, 0.2, 0.3)):  # 0.1 + 0.2 + 0.3 is 0.6000000000000001 in floats
        job = api.submit(f"k{n}")
        lease = api.claim()["lease"]["leaseId"]
        api.post(f"/fleet/jobs/{job['id']}/lease/release", {"leaseId": lease, "stage": "shipped", "insights": {"costUsd": cost}})

    budget = api.get("/fleet/budgets/p").json

    assert (budget["spentUsd"], budget["remainingUsd"]) == (0.6, 0.4)


def test_the_ceiling_holds_to_the_millionth_the_figures_show(flagged_api):
    # 0.3 + 0.55 + 0.05 is 0.9000000000000001 in floats: the 0.1 shown as left must fit a 0.1 job
    api = flagged_api
    api.call("PUT", "/fleet/budgets/p", {"ceilingUsd": 1})
    for n, cost in enumerate((0.3, 0.55, 0.05)):
        job = api.submit(f"k{n}")
        lease = api.claim()["lease"]["leaseId"]
        api.post(f"/fleet/jobs/{job['id']}/lease/release", {"leaseId": lease, "stage": "shipped", "insights": {"costUsd": cost}})
    assert api.get("/fleet/budgets/p").json["remainingUsd"] == 0.1
    api.submit("last", estimatedCostUsd=0.1)

    assert api.claim()["job"]["idempotencyKey"] == "last"


def test_a_pause_may_say_why_and_the_reason_is_checked(flagged_api):
    api = flagged_api
    api.call("PUT", "/fleet/budgets/p", {"ceilingUsd": 10})

    paused = api.post("/fleet/budgets/p/pause", {"reason": "vendor outage"})
    too_long = api.post("/fleet/budgets/p/pause", {"reason": "x" * 501})
    unknown = api.post("/fleet/budgets/p/pause", {"why": "x"})
    bare = api.post("/fleet/budgets/p/resume")

    assert paused.status_code == 200 and paused.json["pauseReason"] == "vendor outage"
    assert paused.json["pausedBy"] == "manual"
    assert too_long.status_code == 400 and too_long.json["errors"][0]["field"] == "reason"
    assert unknown.status_code == 400 and unknown.json["errors"][0]["field"] == "why"
    assert bare.status_code == 200 and bare.json["pauseReason"] is None
    assert api.post("/fleet/budgets/p/pause").json["pauseReason"] is None  # no body: no reason


def test_a_default_estimate_reserves_for_jobs_that_name_no_cost(flagged_api):
    api = flagged_api
    budget = api.call("PUT", "/fleet/budgets/p", {"ceilingUsd": 10, "defaultEstimateUsd": 4}).json
    assert budget["defaultEstimateUsd"] == 4
    for n in range(3):
        api.submit(f"k{n}")  # no estimatedCostUsd
    claims = [api.claim("f1"), api.claim("f2")]
    assert all(claim["job"] is not None for claim in claims)
    assert api.claim("f3") == {"job": None, "reason": "budget_exceeded"}  # 4 + 4 + 4 > 10
    budget = api.get("/fleet/budgets/p").json
    assert (budget["reservedUsd"], budget["remainingUsd"]) == (8, 2)
    assert budget["reservations"].keys() == {claim["runId"] for claim in claims}

    # a PUT that leaves it out keeps it; null clears it, and the third job then fits
    assert api.call("PUT", "/fleet/budgets/p", {"ceilingUsd": 10}).json["defaultEstimateUsd"] == 4
    cleared = api.call("PUT", "/fleet/budgets/p", {"ceilingUsd": 10, "defaultEstimateUsd": None}).json
    assert cleared["defaultEstimateUsd"] is None
    third = api.claim("f3")
    assert third["job"] is not None and third["runId"] not in api.get("/fleet/budgets/p").json["reservations"]


def test_a_put_keeps_what_it_leaves_out(flagged_api):
    api = flagged_api
    assert api.call("PUT", "/fleet/budgets/p", {"ceilingUsd": 10}).json["window"] == "monthly"  # a new budget's
    api.call("PUT", "/fleet/budgets/p", {"ceilingUsd": 10, "window": "daily"})
    raised = api.call("PUT", "/fleet/budgets/p", {"ceilingUsd": 12}).json
    assert (raised["ceilingUsd"], raised["window"]) == (12, "daily")
    defaulted = api.call("PUT", "/fleet/budgets/p", {"defaultEstimateUsd": 3}).json
    assert (defaulted["ceilingUsd"], defaulted["window"], defaulted["defaultEstimateUsd"]) == (12, "daily", 3)
    weekly = api.call("PUT", "/fleet/budgets/p", {"window": "weekly"}).json
    assert (weekly["ceilingUsd"], weekly["window"], weekly["defaultEstimateUsd"]) == (12, "weekly", 3)
    # the kept ceiling still bounds a new default
    above = api.call("PUT", "/fleet/budgets/p", {"defaultEstimateUsd": 13})
    assert above.status_code == 400 and above.json["errors"][0]["field"] == "defaultEstimateUsd"


def test_the_budget_page_says_when_jobs_that_name_no_cost_wait(flagged_api):
    api = flagged_api
    api.call("PUT", "/fleet/budgets/p", {"ceilingUsd": 10, "defaultEstimateUsd": 4})
    for n in range(3):
        api.submit(f"k{n}")
    api.claim("f1"), api.claim("f2")  # 8 reserved: 2 left, under the default of 4

    page = api.get("/dashboard/fleet/budget")

    assert page.status_code == 200
    assert "jobs that name no cost wait</strong>: $2.00 left is under the default estimate" in page.text


@pytest.mark.parametrize(
    "body,field",
    [
        ({"ceilingUsd": -1}, "ceilingUsd"),
        ({"ceilingUsd": 1, "window": "hourly"}, "window"),
        ({"ceilingUsd": 1, "window": None}, "window"),  # left out keeps it; null is no window
        ({}, "ceilingUsd"),
        ({"ceilingUsd": None}, "ceilingUsd"),  # left out keeps it; null is no ceiling to keep
        ({"window": "daily"}, "ceilingUsd"),  # a new budget names its ceiling
        ({"defaultEstimateUsd": 1}, "ceilingUsd"),
        ({"ceilingUsd": 1, "defaultEstimateUsd": -0.5}, "defaultEstimateUsd"),
        ({"ceilingUsd": 1, "defaultEstimateUsd": "4"}, "defaultEstimateUsd"),
        ({"ceilingUsd": 1, "defaultEstimateUsd": 1e10}, "defaultEstimateUsd"),
        ({"ceilingUsd": 1, "defaultEstimateUsd": True}, "defaultEstimateUsd"),
        ({"ceilingUsd": 1, "defaultEstimate": 4}, "defaultEstimate"),
        ({"ceilingUsd": 1, "defaultEstimateUsd": 2}, "defaultEstimateUsd"),  # above the ceiling
    ],
)
def test_budget_validation(flagged_api, body, field):
    response = flagged_api.call("PUT", "/fleet/budgets/p", body)
    assert response.status_code == 400 and response.json["errors"][0]["field"] == field
    assert flagged_api.get("/fleet/budgets/p").json["code"] == "not_found"  # nothing half-written


def test_a_product_whose_spend_is_recorded_without_a_ceiling_says_so(flagged_api):
    # Given a product with no budget whose run cost something: its spend is kept, with no ceiling
    api = flagged_api
    job = api.submit("k1", product="q")
    lease = api.claim(product="q")["lease"]["leaseId"]
    api.post(f"/fleet/jobs/{job['id']}/lease/release", {"leaseId": lease, "stage": "shipped", "insights": {"costUsd": 0.2}})
    assert api.get("/fleet/budgets/q").json["ceilingUsd"] is None

    overview, page = api.get("/dashboard/fleet").text, api.get("/dashboard/fleet/budget").text

    assert "$0.20 <span class=\"muted\">(no ceiling)</span> (monthly)" in overview
    assert "no ceiling: spend is recorded" in page
    # paused by hand, it says so: claims are refused though there is no ceiling
    api.post("/fleet/budgets/q/pause")
    assert "<strong>Paused</strong>" in api.get("/dashboard/fleet/budget").text
    assert api.claim(product="q") == {"job": None, "reason": "budget_paused"}
    assert "of —" not in overview
    # a PUT that leaves the ceiling out must name one here: it has none to keep
    refused = api.call("PUT", "/fleet/budgets/q", {"defaultEstimateUsd": 0.1})
    assert refused.status_code == 400 and refused.json["errors"][0]["field"] == "ceilingUsd"
    assert api.get("/fleet/budgets/q").json["defaultEstimateUsd"] is None


def test_a_negative_zero_is_kept_as_zero(flagged_api):
    # Regression: a ceiling of -0.0 passed `ge=0` and was kept and shown as -0.0.
    budget = flagged_api.call("PUT", "/fleet/budgets/p", {"ceilingUsd": -0.0, "defaultEstimateUsd": -0.0}).json
    assert str(budget["ceilingUsd"]) == "0.0" and str(budget["defaultEstimateUsd"]) == "0.0"
