"""Composite jobs over HTTP: a parent waits blocked on its children, children added later, refused
cycles, and cancels that reach what is unfinished below."""
from __future__ import annotations


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


def test_a_job_with_children_is_a_composite_unless_its_submit_said_otherwise(api):
    children = [{"idempotencyKey": "c1"}]
    unsaid = api.post("/fleet/jobs", {"productId": "p", "idempotencyKey": "unsaid", "children": children})
    assert unsaid.status_code == 201 and unsaid.json["kind"] == "composite"
    assert api.job(unsaid.json["children"][0])["kind"] == "task"
    # the same submit again is the same job, whether it says the kind it got or not
    for kind in ({}, {"kind": "composite"}):
        again = api.post("/fleet/jobs", {"productId": "p", "idempotencyKey": "unsaid", "children": children, **kind})
        assert again.status_code == 200 and again.json["id"] == unsaid.json["id"]
    other = api.post("/fleet/jobs", {"productId": "p", "idempotencyKey": "unsaid", "children": children, "kind": "task"})
    assert other.status_code == 409 and other.json["code"] == "idempotency_conflict"
    said = api.post("/fleet/jobs", {"productId": "p", "idempotencyKey": "said", "kind": "task",
                                    "children": [{"idempotencyKey": "c2"}]})
    assert said.status_code == 201 and said.json["kind"] == "task"
    # as a job submitted with children and no kind was before it became composite: a repeat of
    # that submit is still that job
    before = api.post("/fleet/jobs", {"productId": "p", "idempotencyKey": "said", "children": [{"idempotencyKey": "c2"}]})
    assert before.status_code == 200 and before.json["id"] == said.json["id"] and before.json["kind"] == "task"
    # a task given children later becomes their composite
    task = api.submit("later")
    assert task["kind"] == "task"
    api.post(f"/fleet/jobs/{task['id']}/children", {"children": [{"idempotencyKey": "c3"}]})
    assert api.job(task["id"])["kind"] == "composite"


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


def test_a_cancelled_blocked_job_no_longer_says_what_it_waits_for(api):
    parent = api.post("/fleet/jobs", {"productId": "p", "idempotencyKey": "epic", "kind": "composite",
                                      "children": [{"idempotencyKey": "c1"}]}).json
    assert parent["blockedOn"]
    cancelled = api.post(f"/fleet/jobs/{parent['id']}/actions/cancel").json
    assert cancelled["stage"] == "cancelled" and cancelled["blockedOn"] == []
