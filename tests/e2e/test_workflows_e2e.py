"""Whole workflows against `fleet serve` with budgets and preemption on: a composite job fanned
out to racing factories; preemption, a budget and the review gate together. And the same server
with both flags off: seat limits advisory, budgets not enforced."""
from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from tests.e2e.conftest import Holds, Http, answered

pytestmark = pytest.mark.e2e

FLAGS_ON = {"FLEET_PREEMPTION": "true", "FLEET_BUDGETS": "1"}


@pytest.fixture
def fleet(serve):
    with serve(FLAGS_ON) as server:
        client = Http(server.url)
        yield client
        client.close()


def _ship(http: Http, claimed: dict, cost: float = 0.0) -> dict:
    return http.post(
        f"/fleet/jobs/{claimed['job']['id']}/lease/release",
        {"leaseId": claimed["lease"]["leaseId"], "stage": "shipped", "insights": {"costUsd": cost}},
    ).json()


def test_health_reports_the_flags(fleet):
    assert fleet.get("/fleet/health").json()["flags"] == {"preemption": True, "budgets": True}


def test_dag_fans_out_and_unblocks_the_parent(fleet):
    parent = fleet.post("/fleet/jobs", {
        "productId": "p", "idempotencyKey": "epic", "kind": "composite",
        "children": [{"idempotencyKey": f"c{n}", "bodyMd": "..."} for n in range(4)],
    }).json()
    assert parent["stage"] == "blocked"

    done: list[str] = []

    def worker(name: str) -> None:
        client = Http(fleet.url)
        while True:
            claimed = client.post("/fleet/claim", {"factoryId": name, "productId": "p"}).json()
            if claimed["job"] is None or claimed["job"]["kind"] == "composite":
                if claimed["job"]:
                    done.append(claimed["job"]["id"])
                break
            _ship(client, claimed)
            done.append(claimed["job"]["id"])
        client.close()

    threads = [threading.Thread(target=worker, args=(f"f{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    dag = fleet.get(f"/fleet/jobs/{parent['id']}/dag").json()
    assert {c["stage"] for c in dag["children"]} == {"shipped"}
    assert dag["stage"] in ("queued", "assigned")


def test_preemption_budget_and_review_together(fleet):
    fleet.put = lambda path, body: fleet.call("PUT", path, body)
    assert fleet.put("/fleet/budgets/p", {"ceilingUsd": 3, "window": "monthly"}).status_code == 200
    fleet.post("/fleet/factories/f1/heartbeat", {"products": ["p"], "seatLimit": 1})
    fleet.post("/fleet/jobs", {"productId": "p", "idempotencyKey": "routine", "priority": "low"})
    routine = fleet.post("/fleet/claim", {"factoryId": "f1", "productId": "p"}).json()

    fleet.post("/fleet/jobs", {"productId": "p", "idempotencyKey": "hotfix", "priority": "critical"})
    hot = fleet.post("/fleet/claim", {"factoryId": "f1", "productId": "p"}).json()
    assert hot["job"]["idempotencyKey"] == "hotfix" and hot["preempted"] == [routine["job"]["id"]]
    beat = fleet.post("/fleet/factories/f1/heartbeat", {"seatLimit": 1, "running": [
        {"jobId": routine["job"]["id"], "leaseId": routine["lease"]["leaseId"]},
        {"jobId": hot["job"]["id"], "leaseId": hot["lease"]["leaseId"]},
    ]}).json()
    assert [entry["status"] for entry in beat["leases"]] == ["revoked", "renewed"]

    # The hotfix parks at testing for review, costing 2 USD; two reviewers ship it.
    fleet.post(f"/fleet/jobs/{hot['job']['id']}/lease/release",
               {"leaseId": hot["lease"]["leaseId"], "stage": "testing", "insights": {"costUsd": 2}})
    fleet.post(f"/fleet/jobs/{hot['job']['id']}/review/request", {"required": 2})
    for reviewer in ("ann", "bob"):  # a review is its principal's: each reviewer has a token
        token = fleet.post("/fleet/tokens", {"role": "reviewer", "name": reviewer}).json()["token"]
        with Http(fleet.url, token=token) as theirs:
            reviewed = theirs.post(f"/fleet/jobs/{hot['job']['id']}/review", {"decision": "approve"}).json()
    assert reviewed["stage"] == "shipped" and reviewed["review"]["approvals"] == ["ann", "bob"]
    assert fleet.get("/fleet/budgets/p").json()["spentUsd"] == 2

    again = fleet.post("/fleet/claim", {"factoryId": "f1", "productId": "p"}).json()
    assert again["job"]["idempotencyKey"] == "routine" and again["job"]["checkpoint"] is True
    _ship(fleet, again, cost=1.5)
    budget = fleet.get("/fleet/budgets/p").json()
    assert budget["spentUsd"] == 3.5 and budget["paused"] and budget["pausedBy"] == "ceiling"
    fleet.post("/fleet/jobs", {"productId": "p", "idempotencyKey": "later"})
    assert fleet.post("/fleet/claim", {"factoryId": "f1", "productId": "p"}).json() == {"job": None, "reason": "budget_paused"}


def test_a_full_factory_racing_for_a_critical_job_is_told_of_every_eviction(fleet):
    # Regression: a full factory's claim evicted its victim for a critical job, lost that job to
    # a factory with free seats, fell through, and answered with the victim itself under a new
    # lease and `preempted: []`, so a runner ran the victim twice until a heartbeat said the
    # old lease was revoked.
    # Given, each round, a factory full with two jobs and a critical job, claimed at the same
    # moment by it and by a factory with free seats
    told, held_twice = Counter(), []
    for n in range(12):
        product = f"pre{n}"
        for key in ("n-0", "n-1"):
            fleet.post("/fleet/jobs", {"productId": product, "idempotencyKey": key})
        before = [fleet.post("/fleet/claim", {"factoryId": f"full{n}", "productId": product, "seatLimit": 2}).json()
                  for _ in range(2)]
        assert all(c["job"] for c in before), before
        fleet.post("/fleet/jobs", {"productId": product, "idempotencyKey": "crit", "priority": "critical"})
        barrier, answers = threading.Barrier(2), {}

        def claim(factory: str) -> None:
            with Http(fleet.url) as client:
                barrier.wait()
                answers[factory] = answered(lambda: client.post(
                    "/fleet/claim", {"factoryId": factory, "productId": product, "seatLimit": 2})).json()

        threads = [threading.Thread(target=claim, args=(f"{f}{n}",)) for f in ("full", "free")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        # Then the full factory's answer names every job of its own whose lease was taken for
        # the critical job, whichever factory got it; and no job is held twice
        full = answers[f"full{n}"]
        jobs = {j["idempotencyKey"]: j for j in fleet.get(f"/fleet/jobs?productId={product}").json()["items"]}
        evicted = [c["job"]["id"] for c in before
                   if any(r["result"] == "preempted" and r["leaseId"] == c["lease"]["leaseId"]
                          for r in jobs[c["job"]["idempotencyKey"]]["runs"])]
        assert sorted(full.get("preempted", [])) == sorted(evicted), (full, evicted)
        told["crit to full" if (full.get("job") or {}).get("idempotencyKey") == "crit" else "crit to free"] += 1
        leased = [j["lease"]["leaseId"] for j in jobs.values() if j.get("lease")]
        if len(leased) != len(set(leased)):
            held_twice.append(product)
        assert jobs["crit"]["lease"]["factoryId"] in (f"full{n}", f"free{n}")
    assert held_twice == []
    assert told["crit to full"] + told["crit to free"] == 12


def test_racing_factories_never_overcommit_a_budget_by_its_default_estimate(fleet):
    """Given 30 jobs that name no cost, under a 10-dollar ceiling whose default estimate is 2.5,
    when 8 factories race to claim them over HTTP, hold each a moment and ship it (for 0 to 0.1),
    then no job is ever held twice, spend and reservations never pass the ceiling, at most 4
    are held at once (what 10 reserves at 2.5 each),
    the factories beyond those are told `budget_exceeded` and come back, every job ships, and
    what is spent is exactly what the runs reported, with nothing left reserved."""
    product, jobs, cap = "race-budget", 30, 4
    put = fleet.call("PUT", f"/fleet/budgets/{product}", {"ceilingUsd": 10, "defaultEstimateUsd": 2.5})
    assert put.status_code == 200 and put.json()["defaultEstimateUsd"] == 2.5
    for n in range(jobs):
        assert fleet.post("/fleet/jobs", {"productId": product, "idempotencyKey": f"b{n}"}).status_code == 201
    holds, refused, spent = Holds(), Counter(), []

    def factory(name: str) -> None:
        client, deadline = Http(fleet.url), time.monotonic() + 90
        try:
            while True:
                if time.monotonic() > deadline:
                    holds.problems.append(f"{name}: still claiming at the deadline")
                    return
                body = answered(lambda: client.post("/fleet/claim", {"factoryId": name, "productId": product})).json()
                if body.get("reason") == "budget_exceeded":
                    refused[name] += 1
                    time.sleep(0.02)  # as a factory backs off; the queue-state moves when a run ends
                    continue
                if body.get("job") is None:
                    if body.get("reason") != "no_job":
                        holds.problems.append(f"{name}: claim answered {body}")
                    return
                job_id, lease = body["job"]["id"], body["lease"]
                holds.take(job_id, name)
                budget = answered(lambda: client.get(f"/fleet/budgets/{product}")).json()
                if budget["spentUsd"] + budget["reservedUsd"] > 10:
                    holds.problems.append(f"{name}: over the ceiling with {budget}")
                time.sleep(0.05)  # the work: long enough that the factories' holds overlap
                cost = int(body["job"]["idempotencyKey"][1:]) % 3 * 0.05
                holds.free(job_id)
                release = {"leaseId": lease["leaseId"], "stage": "shipped", "insights": {"costUsd": cost}}
                response = answered(lambda: client.post(f"/fleet/jobs/{job_id}/lease/release", release))
                if response.status_code != 200:
                    holds.problems.append(f"{name} {job_id} release: {response.text}")
                spent.append(cost)
        finally:
            client.close()

    threads = [threading.Thread(target=factory, args=(f"b{n}",)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)

    assert holds.problems == []
    assert set(holds.claims_of.values()) == {1} and len(holds.claims_of) == jobs
    assert 1 < holds.most <= cap  # the holds overlapped, never past what the ceiling reserves
    assert sum(refused.values()) > 0  # the default estimate really held factories back
    listed = fleet.get(f"/fleet/jobs?productId={product}&limit=500").json()["items"]
    assert {j["stage"] for j in listed} == {"shipped"}
    budget = fleet.get(f"/fleet/budgets/{product}").json()
    assert (budget["spentUsd"], budget["reservedUsd"], budget["reservations"]) == (round(sum(spent), 6), 0, {})


def test_one_factorys_racing_claims_never_take_more_than_its_seats(fleet):
    """Given a factory with 2 seats, when 10 of its claims race (a client retrying, two processes
    under one id), then it holds at most 2 jobs in every round, and every job it was refused is
    queued again, never lost or held twice."""
    product, seats = "race-seats", 2
    for n in range(30):
        assert fleet.post("/fleet/jobs", {"productId": product, "idempotencyKey": f"s{n}"}).status_code == 201
    claim = {"factoryId": "one", "productId": product, "seatLimit": seats}
    for round_ in range(3):
        start, answers, lock = threading.Barrier(10), [], threading.Lock()

        def claimer() -> None:
            client = Http(fleet.url)
            try:
                start.wait()
                body = answered(lambda: client.post("/fleet/claim", claim)).json()
                with lock:
                    answers.append(body)
            finally:
                client.close()

        threads = [threading.Thread(target=claimer) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        taken = [a for a in answers if a.get("job")]
        assert len(answers) == 10 and len(taken) <= seats, (round_, answers)
        assert {a["reason"] for a in answers if not a.get("job")} <= {"seat_limit"}
        listed = fleet.get(f"/fleet/jobs?productId={product}&limit=500").json()["items"]
        held = [j for j in listed if j["lease"]]
        assert sorted(j["id"] for j in held) == sorted(a["job"]["id"] for a in taken)
        assert {j["stage"] for j in listed if not j["lease"]} <= {"queued", "shipped"}
        for a in taken:  # the round's jobs done, the seats free again
            assert _ship(fleet, a)["stage"] == "shipped"


def test_with_the_flags_off_seats_are_advisory_and_budgets_not_enforced(serve):
    with serve({"FLEET_PREEMPTION": "", "FLEET_BUDGETS": "0"}) as server:
        http = Http(server.url)
        assert http.get("/fleet/budgets/p").json()["code"] == "feature_disabled"
        http.post("/fleet/factories/f1/heartbeat", {"seatLimit": 1})
        http.post("/fleet/jobs", {"productId": "p", "idempotencyKey": "a", "priority": "low"})
        http.post("/fleet/jobs", {"productId": "p", "idempotencyKey": "b", "priority": "critical"})
        first = http.post("/fleet/claim", {"factoryId": "f1", "productId": "p"}).json()
        second = http.post("/fleet/claim", {"factoryId": "f1", "productId": "p"}).json()
        assert first["job"]["idempotencyKey"] == "b" and second["job"]["idempotencyKey"] == "a"
        assert "preempted" not in second
        _ship(http, first, cost=100)
        assert http.post("/fleet/jobs", {"productId": "p", "idempotencyKey": "c"}).status_code == 201
        assert http.post("/fleet/claim", {"factoryId": "f2", "productId": "p"}).json()["job"] is not None
        http.close()
