"""The review gate over HTTP: a quorum of distinct (named) reviewers ships a job parked at
`testing`; a rejection sends it back for rework."""
from __future__ import annotations

import pytest

from fleet.principals import Role


def _parked(api, key="k1"):
    job = api.submit(key)
    claimed = api.claim()
    api.post(f"/fleet/jobs/{job['id']}/lease/release", {"leaseId": claimed["lease"]["leaseId"], "stage": "testing"})
    return job


def test_quorum_of_distinct_reviewers_ships(api):
    ann, bob, eve = (api.mint(Role.REVIEWER, name=name) for name in ("ann", "bob", "eve"))
    job = _parked(api)
    api.post(f"/fleet/jobs/{job['id']}/review/request", {"required": 2, "reviewers": ["ann", "bob", "cy"]})
    assert api.post(f"/fleet/jobs/{job['id']}/review", {"decision": "approve"}, token=eve).status_code == 403
    api.post(f"/fleet/jobs/{job['id']}/review", {"reviewer": "ann", "decision": "approve"}, token=ann)
    again = api.post(f"/fleet/jobs/{job['id']}/review", {"decision": "approve"}, token=ann).json
    assert again["stage"] == "testing" and again["review"]["approvals"] == ["ann"]
    shipped = api.post(f"/fleet/jobs/{job['id']}/review", {"decision": "approve"}, token=bob).json
    assert shipped["stage"] == "shipped" and shipped["runs"][-1]["result"] == "shipped"


def _park_again(api, job):
    claimed = api.post(f"/fleet/jobs/{job['id']}/claim", {"factoryId": "f1", "capabilities": []}).json
    api.post(f"/fleet/jobs/{job['id']}/lease/release", {"leaseId": claimed["lease"]["leaseId"], "stage": "testing"})


@pytest.mark.parametrize("shipped_first", [False, True], ids=["approved-once", "shipped-by-quorum"])
def test_a_requeued_job_needs_the_quorum_afresh_for_its_rework(api, shipped_first):
    # Regression: approvals outlived an operator's requeue, so the rework shipped on fewer
    # fresh approvals than the quorum (after a ship by quorum, on one).
    s1, s2, s3 = (api.mint(Role.REVIEWER, name=name) for name in ("s1", "s2", "s3"))
    job = _parked(api)
    api.post(f"/fleet/jobs/{job['id']}/review/request", {"required": 2})
    api.post(f"/fleet/jobs/{job['id']}/review", {"decision": "approve"}, token=s1)
    if shipped_first:
        assert api.post(f"/fleet/jobs/{job['id']}/review", {"decision": "approve"}, token=s2).json["stage"] == "shipped"
    # When an operator requeues it for rework, Then the gate keeps its quorum and loses its approvals
    requeued = api.post(f"/fleet/jobs/{job['id']}/actions/requeue", {"reason": "rework"}).json
    assert requeued["review"]["required"] == 2 and requeued["review"]["approvals"] == []
    # and the reworked job, parked again, ships only on two fresh approvals
    _park_again(api, job)
    assert api.post(f"/fleet/jobs/{job['id']}/review", {"decision": "approve"}, token=s3).json["stage"] == "testing"
    assert api.post(f"/fleet/jobs/{job['id']}/review", {"decision": "approve"}, token=s1).json["stage"] == "shipped"


def test_a_factory_cannot_ship_a_rejected_job_past_the_gate(api):
    # Regression: a factory's release `stage: shipped` (as autoship does) shipped a job that a
    # reviewer had rejected, on no approvals
    ann = api.mint(Role.REVIEWER, name="ann")
    factory = api.mint(Role.FACTORY, factory_id="f1")
    job = _parked(api)
    api.post(f"/fleet/jobs/{job['id']}/review/request", {"required": 1, "reviewers": ["ann"]})
    api.post(f"/fleet/jobs/{job['id']}/review", {"decision": "reject", "comment": "redo"}, token=ann)
    claimed = api.post("/fleet/claim", {"factoryId": "f1", "productId": "p"}, token=factory).json
    released = api.post(f"/fleet/jobs/{job['id']}/lease/release",
                        {"leaseId": claimed["lease"]["leaseId"], "stage": "shipped"}, token=factory)
    assert released.status_code == 200
    assert (released.json["stage"], released.json["lease"]) == ("testing", None)
    assert released.json["events"][-1]["detail"] == {"stage": "testing", "asked": "shipped", "reason": "review gate open"}
    assert api.post(f"/fleet/jobs/{job['id']}/review", {"decision": "approve"}, token=ann).json["stage"] == "shipped"


def test_reviewers_are_named_as_their_principals_are_with_spaces_and_all(api):
    # Given reviewers whose principal names hold a space (as Easy Auth's display names do)
    ann, bob = api.mint(Role.REVIEWER, name="Ann Smith"), api.mint(Role.REVIEWER, name="bob@example.com")
    job = _parked(api)
    # When an operator names them in the gate, Then they are the reviewers, and their approvals ship it
    requested = api.post(f"/fleet/jobs/{job['id']}/review/request", {"required": 2, "reviewers": ["Ann Smith", "bob@example.com"]})
    assert requested.status_code == 200 and requested.json["review"]["reviewers"] == ["Ann Smith", "bob@example.com"]
    api.post(f"/fleet/jobs/{job['id']}/review", {"reviewer": "Ann Smith", "decision": "approve"}, token=ann)
    assert api.post(f"/fleet/jobs/{job['id']}/review", {"decision": "approve"}, token=bob).json["stage"] == "shipped"


@pytest.mark.parametrize("name", [" ann", "ann ", "a\u2028b", "a\u202eb", "a\u200bb", "", "x" * 101])
def test_a_reviewer_name_no_principal_could_have_is_a_400(api, name):
    job = _parked(api)
    refused = api.post(f"/fleet/jobs/{job['id']}/review/request", {"required": 1, "reviewers": [name]})
    assert refused.status_code == 400 and refused.json["errors"][0]["field"].startswith("reviewers")


def test_one_reviewer_principal_cannot_make_a_quorum_of_two_under_other_names(api):
    # Given a job whose gate wants two approvals, from anyone
    ann, bob = api.mint(Role.REVIEWER, name="ann"), api.mint(Role.REVIEWER, name="bob")
    job = _parked(api)
    api.post(f"/fleet/jobs/{job['id']}/review/request", {"required": 2})
    # When one reviewer approves in its own name, then claims to be two others
    assert api.post(f"/fleet/jobs/{job['id']}/review", {"decision": "approve"}, token=ann).status_code == 200
    for alias in ("bob", "mallory"):
        refused = api.post(f"/fleet/jobs/{job['id']}/review", {"reviewer": alias, "decision": "approve"}, token=ann)
        assert refused.status_code == 403 and refused.json["code"] == "forbidden"
    # Then its approvals count once, and the second principal's completes the quorum
    assert api.post(f"/fleet/jobs/{job['id']}/review", {"decision": "approve"}, token=ann).json["stage"] == "testing"
    shipped = api.post(f"/fleet/jobs/{job['id']}/review", {"decision": "approve"}, token=bob).json
    assert shipped["stage"] == "shipped" and shipped["review"]["approvals"] == ["ann", "bob"]
    assert [e["actor"] for e in shipped["events"] if e["type"] == "review_approved"] == ["ann", "bob"]


def test_a_reject_sends_the_job_back_for_rework(api):
    ann = api.mint(Role.REVIEWER, name="ann")
    job = _parked(api)
    api.post(f"/fleet/jobs/{job['id']}/review/request", {"required": 1})
    rejected = api.post(f"/fleet/jobs/{job['id']}/review",
                        {"decision": "reject", "comment": "tests missing"}, token=ann).json
    assert rejected["stage"] == "queued"
    assert rejected["events"][-1]["type"] == "review_rejected" and rejected["events"][-1]["detail"]["comment"] == "tests missing"
    assert rejected["events"][-1]["actor"] == "ann"


def test_review_needs_a_testing_job(api):
    job = api.submit("k1")
    response = api.post(f"/fleet/jobs/{job['id']}/review/request", {"required": 1})
    assert response.status_code == 409 and response.json["code"] == "illegal_transition"
