"""The review gate over HTTP: a quorum of distinct (named) reviewers ships a job parked at
`testing`; a rejection sends it back for rework."""
from __future__ import annotations


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
