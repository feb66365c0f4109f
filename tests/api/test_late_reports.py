"""A lease taken from its holder reports its run over HTTP (`POST /fleet/jobs/{id}/lease/report`):
the run's cost reaches the budget and the day's spend once, whoever ended the run (a preemption,
the sweep, an operator), and nothing else of the job changes."""
from __future__ import annotations

from fleet import activity
from fleet.principals import Role


def _report(api, job_id: str, lease_id: str, token=..., **fields):
    return api.call("POST", f"/fleet/jobs/{job_id}/lease/report", {"leaseId": lease_id, **fields}, token=token)


def _spent(api, product: str = "p") -> float:
    return api.get(f"/fleet/budgets/{product}").json["spentUsd"]


def test_a_preempted_runs_cost_reaches_the_budget_once(flagged_api):
    api = flagged_api
    api.call("PUT", "/fleet/budgets/p", {"ceilingUsd": 10, "window": "daily"})
    api.post("/fleet/factories/f1/heartbeat", {"seatLimit": 1})
    low = api.submit("low", priority="low")
    first = api.claim()
    api.submit("urgent", priority="critical")
    assert api.claim()["preempted"] == [low["id"]]
    lost = first["lease"]["leaseId"]
    # The command learns its cost as it stops; the release is refused, the lease being gone
    refused = api.post(f"/fleet/jobs/{low['id']}/lease/release", {"leaseId": lost, "result": "retry",
                                                                  "insights": {"costUsd": 0.4}})
    assert refused.json["code"] == "lease_lost" and _spent(api) == 0
    spent_today = activity.days(api.ctx, 1)[0].spent_usd
    before = api.job(low["id"])

    reported = _report(api, low["id"], lost, insights={"costUsd": 0.4, "tokensIn": 900},
                       prUrl="https://example.com/pr/1")
    assert reported.status_code == 200, reported.json
    run = reported.json["runs"][-1]
    assert run["result"] == "preempted" and run["lateReport"]["insights"] == {"costUsd": 0.4, "tokensIn": 900}
    assert run["lateReport"]["prUrl"] == "https://example.com/pr/1" and run["lateReport"]["accrued"] is True
    assert _spent(api) == 0.4
    assert activity.days(api.ctx, 1)[0].spent_usd == spent_today + 0.4
    # nothing else of the job moved: it is still queued, at its attempts, for the next claim
    after = api.job(low["id"])
    assert (after["stage"], after["attempts"], after["lease"]) == (before["stage"], before["attempts"], before["lease"])

    # a retry of the same report (its answer lost) is answered and counts nothing more
    again = _report(api, low["id"], lost, insights={"costUsd": 0.4, "tokensIn": 900}, prUrl="https://example.com/pr/1")
    assert again.status_code == 200 and _spent(api) == 0.4
    other = _report(api, low["id"], lost, insights={"costUsd": 3})
    assert other.status_code == 409 and other.json["code"] == "idempotency_conflict" and _spent(api) == 0.4


def test_a_report_adds_only_what_the_holder_had_not_reported(flagged_api):
    api = flagged_api
    api.call("PUT", "/fleet/budgets/p", {"ceilingUsd": 10, "window": "daily"})
    job = api.submit("k1")
    lease = api.claim()["lease"]["leaseId"]
    api.call("PATCH", f"/fleet/jobs/{job['id']}", {"leaseId": lease, "stage": "building", "insights": {"costUsd": 0.5}})
    api.run_timers_for(301)  # the factory went quiet: the sweep requeues the job, its run expired
    expired = api.job(job["id"])
    assert expired["stage"] == "queued" and expired["runs"][-1]["result"] == "expired"
    assert _spent(api) == 0.5  # what the holder had reported was accrued as the run ended

    reported = _report(api, job["id"], lease, insights={"costUsd": 1.25})
    assert reported.status_code == 200, reported.json
    assert _spent(api) == 1.25  # the run's whole cost, its PATCHed part counted once


def test_a_lease_expired_before_the_sweep_reports_and_the_sweep_accrues_it(flagged_api):
    api = flagged_api
    api.call("PUT", "/fleet/budgets/p", {"ceilingUsd": 10, "window": "daily"})
    job = api.submit("k1")
    lease = api.claim()["lease"]["leaseId"]
    api.call("PATCH", f"/fleet/jobs/{job['id']}", {"leaseId": lease, "stage": "building", "insights": {"costUsd": 0.5}})
    api.clock.advance(301)  # past the lease, the sweep not yet run: the job still names the lease
    refused = api.post(f"/fleet/jobs/{job['id']}/lease/release", {"leaseId": lease, "result": "shipped"})
    assert refused.json["code"] == "lease_lost"
    spent_today = activity.days(api.ctx, 1)[0].spent_usd

    reported = _report(api, job["id"], lease, insights={"costUsd": 2.0})
    assert reported.status_code == 200, reported.json
    run = reported.json["runs"][-1]
    assert run["endedAt"] is None and run["lateReport"]["accrued"] is False
    assert reported.json["stage"] == "building" and _spent(api) == 0  # it waits for the run's end
    assert _report(api, job["id"], lease, insights={"costUsd": 2.0}).status_code == 200  # a retry
    api.run_timers_for(60)
    swept = api.job(job["id"])
    assert swept["stage"] == "queued" and swept["runs"][-1]["result"] == "expired"
    assert swept["runs"][-1]["lateReport"]["accrued"] is True and swept["accrualPending"] is False
    assert _spent(api) == 2.0  # the holder's 0.5 and the report's 1.5 more, each once
    assert activity.days(api.ctx, 1)[0].spent_usd == spent_today + 2.0


def test_a_run_given_back_by_an_operator_can_be_reported(flagged_api):
    api = flagged_api
    api.call("PUT", "/fleet/budgets/p", {"ceilingUsd": 10, "window": "daily"})
    job = api.submit("k1", estimatedCostUsd=2.0)
    lease = api.claim()["lease"]["leaseId"]
    api.post(f"/fleet/jobs/{job['id']}/actions/requeue", {"reason": "wrong repo"})
    # its lease was taken: the reservation is held for the late report it may still send
    assert api.get("/fleet/budgets/p").json["reservedUsd"] == 2.0
    assert _report(api, job["id"], lease, insights={"costUsd": 0.75}).status_code == 200
    assert _spent(api) == 0.75
    assert api.get("/fleet/budgets/p").json["reservedUsd"] == 0  # and gives way to it


def test_what_a_report_is_refused(flagged_api):
    api = flagged_api
    job = api.submit("k1")
    lease = api.claim()["lease"]["leaseId"]
    live = _report(api, job["id"], lease, insights={"costUsd": 1})
    assert live.status_code == 409 and live.json["code"] == "illegal_transition"  # PATCH or release it
    assert "still holds" in live.json["detail"]

    api.post(f"/fleet/jobs/{job['id']}/lease/release", {"leaseId": lease, "result": "retry"})
    own = _report(api, job["id"], lease, insights={"costUsd": 1})
    assert own.status_code == 409 and own.json["code"] == "illegal_transition"  # its release was its report

    unknown = _report(api, job["id"], "not-a-lease", insights={"costUsd": 1})
    assert unknown.status_code == 404 and unknown.json["code"] == "not_found"
    assert unknown.json["detail"] == f"job {job['id']} keeps no run held under lease not-a-lease"
    absent = _report(api, "p:nosuchjobnosuchjobno", lease, insights={"costUsd": 1})
    assert absent.status_code == 404 and absent.json["detail"] == "no job 'p:nosuchjobnosuchjobno'"
    empty = _report(api, job["id"], lease)
    assert empty.status_code == 400 and "report names" in empty.json["detail"] + str(empty.json.get("errors"))
    negative = _report(api, job["id"], lease, insights={"costUsd": -1})
    assert negative.status_code == 400 and negative.json["errors"][0]["field"].startswith("insights")
    assert api.job(job["id"])["runs"][-1]["lateReport"] is None


def test_only_the_runs_own_factory_reports_it(flagged_api):
    api = flagged_api
    f1 = api.mint(Role.FACTORY, factory_id="f1")
    f2 = api.mint(Role.FACTORY, factory_id="f2")
    viewer = api.mint(Role.VIEWER)
    job = api.submit("k1")
    lease = api.call("POST", "/fleet/claim", {"factoryId": "f1", "productId": "p"}, token=f1).json["lease"]["leaseId"]
    api.post(f"/fleet/jobs/{job['id']}/actions/requeue")
    # the lease id stays the holder's: another factory reading the job does not see it
    assert lease not in api.call("GET", f"/fleet/jobs/{job['id']}", token=f2).text
    assert _report(api, job["id"], lease, token=f2, insights={"costUsd": 1}).status_code == 403
    assert _report(api, job["id"], lease, token=viewer, insights={"costUsd": 1}).status_code == 403
    assert _report(api, job["id"], lease, token=f1, insights={"costUsd": 1}).status_code == 200
    assert api.call("GET", f"/fleet/jobs/{job['id']}", token=f1).json["runs"][-1]["leaseId"] == lease
