"""Composite jobs: a parent fans out into children, waits blocked until they all ship (or are
done), and is queued when the last one does. Children may be added while the parent waits.
Deps never form a cycle; a refused cycle is named. Cancelling a parent cancels what is still
unfinished below it."""
from __future__ import annotations

import pytest
from hypothesis import settings as hsettings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from fleet import claims, dag, errors, store as store_port
from fleet.jobs import Job, job_id
from fleet.schemas import ChildSpec
from fleet.stages import Priority, Stage

from fleet.testing import PRODUCT, World, flags_on, open_world

#: Budgets and preemption on for every world here.
pytestmark = pytest.mark.settings(flags_on())


def child(key: str, **fields) -> ChildSpec:
    return ChildSpec(idempotency_key=key, **fields)


def composite(world: World, key: str, *children: ChildSpec, **fields):
    """Submit a composite with `children`, as `POST /fleet/jobs` does."""
    return dag.submit_composite(world.ctx, world.spec(key, kind="composite", children=list(children), **fields))


def by_key(world: World, key: str) -> Job:
    return world.job(job_id(PRODUCT, key))


def finish(world: World, key: str, how: str = "shipped") -> Job:
    """A factory claims the job and ends it `shipped`/`done`/`failed`."""
    job = by_key(world, key)
    claimed = world.claim_job(job, "factory-1").job
    return world.release(claimed, result=how)


def stored_keys(world: World) -> list[str]:
    query = store_port.Query("jobs", PRODUCT, (store_port.Filter("idempotencyKey", "!=", None),), limit=500)
    return sorted(doc["idempotencyKey"] for doc in store_port.query_all(world.store.inner, query))


# Submitting a composite


def test_children_are_created_and_the_parent_waits_blocked_on_them(world):
    # When a composite with two children is submitted
    submitted = composite(world, "parent", child("a", title="first"), child("b"))
    parent = world.job(submitted.job)
    # Then the children exist, in the parent's product, pointing at their parent
    a, b = by_key(world, "a"), by_key(world, "b")
    assert (a.product_id, a.parent_id, a.kind, a.title) == (PRODUCT, parent.id, "task", "first")
    assert (a.stage, b.stage) == (Stage.QUEUED, Stage.QUEUED)
    # and the parent lists them, depends on their keys, and is blocked on both
    assert submitted.created and parent.kind == "composite"
    assert parent.children == [a.id, b.id]
    assert parent.deps == ["a", "b"]
    assert parent.stage == Stage.BLOCKED
    assert [(w.idempotency_key, w.stage) for w in parent.blocked_on] == [("a", Stage.QUEUED), ("b", Stage.QUEUED)]


@pytest.mark.parametrize(
    "child_fields, inherited",
    [
        ({}, {"priority": Priority.HIGH, "repo": "acme/app", "base_branch": "develop"}),  # all from the parent
        ({"priority": "low"}, {"priority": Priority.LOW, "repo": "acme/app", "base_branch": "develop"}),
        (
            {"repo": "acme/lib", "base_branch": "main"},
            {"priority": Priority.HIGH, "repo": "acme/lib", "base_branch": "main"},
        ),
    ],
)
def test_children_inherit_priority_repo_and_branch_unless_they_name_their_own(world, child_fields, inherited):
    composite(world, "parent", child("c", **child_fields), priority="high", repo="acme/app", base_branch="develop")
    c = by_key(world, "c")
    assert {"priority": c.priority, "repo": c.repo, "base_branch": c.base_branch} == inherited


def test_the_parent_is_queued_when_its_last_child_finishes(world):
    # Given a parent waiting on three children
    submitted = composite(world, "parent", child("a"), child("b"), child("c"))
    # When one ships and one is done, Then it still waits on the third
    finish(world, "a", "shipped")
    finish(world, "b", "done")
    parent = world.job(submitted.job)
    assert parent.stage == Stage.BLOCKED
    assert [w.idempotency_key for w in parent.blocked_on] == ["c"]
    # When the last one ships, Then the parent is queued, and idle factories hear of it
    version = world.version()
    finish(world, "c", "shipped")
    parent = world.job(submitted.job)
    assert (parent.stage, parent.blocked_on) == (Stage.QUEUED, [])
    assert parent.events[-1].type == "unblocked"
    assert world.version() > version


def test_children_added_to_a_job_waiting_to_retry_end_its_wait_for_theirs(world):
    # Given a job released for a retry, waiting out its backoff
    job = world.release(world.running_job("parent"), result="retry")
    assert job.waiting
    # When children are added to it, Then it waits on them instead, blocked, with no retry wait left
    dag.add_children(world.ctx, job.id, [ChildSpec(idempotency_key="kid")])
    doc = world.store.read("jobs", PRODUCT, job.id)
    assert (doc["stage"], doc["retryAt"], doc["capKey"]) == ("blocked", None, "")
    assert not world.job(job).waiting


def test_a_child_that_fails_keeps_the_parent_waiting(world):
    submitted = composite(world, "parent", child("a"), child("b"))
    finish(world, "a", "shipped")
    finish(world, "b", "failed")
    parent = world.job(submitted.job)
    assert parent.stage == Stage.BLOCKED
    assert [(w.idempotency_key, w.stage) for w in parent.blocked_on] == [("b", Stage.FAILED)]


def test_siblings_are_created_in_dependency_order(world):
    # Given children listed before the siblings they depend on: c -> b -> a
    composite(world, "parent", child("c", deps=["b"]), child("b", deps=["a"]), child("a"))
    # Then each waits on its sibling, and the chain releases in order
    assert [by_key(world, k).stage for k in "abc"] == [Stage.QUEUED, Stage.BLOCKED, Stage.BLOCKED]
    finish(world, "a")
    assert [by_key(world, k).stage for k in "bc"] == [Stage.QUEUED, Stage.BLOCKED]
    finish(world, "b")
    assert by_key(world, "c").stage == Stage.QUEUED


def test_resubmitting_the_same_composite_returns_it(world):
    first = composite(world, "parent", child("a"), child("b", deps=["a"]))
    again = composite(world, "parent", child("a"), child("b", deps=["a"]))
    assert (again.job.id, again.created) == (first.job.id, False)
    assert stored_keys(world) == ["a", "b", "parent"]


def test_resubmitting_a_composite_with_other_children_is_a_conflict(world):
    composite(world, "parent", child("a"))
    with pytest.raises(errors.IdempotencyConflict):
        composite(world, "parent", child("a"), child("b"))
    assert stored_keys(world) == ["a", "parent"]


@pytest.mark.parametrize("nth", [2, 3])
def test_a_composite_submit_cut_off_leaves_no_child_to_claim_and_a_retry_converges(world, faulty, nth):
    # Regression: the children were written first, so a submit cut off before its parent left
    # children queued (and claimed) under a parent that did not exist
    faulty.crash("create", "jobs", nth=nth)  # #1 the parent, #2 and #3 its children
    with pytest.raises(errors.StoreBusy):
        composite(world, "parent", child("a"), child("b"))
    # Then the parent stands, blocked on both, over whatever children were written
    parent = by_key(world, "parent")
    assert parent.stage == Stage.BLOCKED and {d.idempotency_key for d in parent.blocked_on} == {"a", "b"}
    assert stored_keys(world) == (["a", "parent"] if nth == 3 else ["parent"])
    assert all(by_key(world, key).parent_id == parent.id for key in stored_keys(world) if key != "parent")
    # A retry of the same submit creates what is missing; the parent waits on its children
    world.store.disarm()
    again = composite(world, "parent", child("a"), child("b"))
    assert (again.job.id, again.created, again.job.stage) == (parent.id, False, Stage.BLOCKED)
    assert stored_keys(world) == ["a", "b", "parent"]
    for key in ("a", "b"):
        finish(world, key)
    assert by_key(world, "parent").stage == Stage.QUEUED


def test_a_refused_composite_writes_nothing(world):
    # Given a composite whose second child depends on a job never submitted
    with pytest.raises(errors.ValidationFailed):
        composite(world, "parent", child("a"), child("b", deps=["never-submitted"]))
    # Then nothing was written: no parent, and no orphan child
    assert stored_keys(world) == []


# Cycles


@pytest.mark.parametrize(
    "children, cycle",
    [
        ([child("a", deps=["b"]), child("b", deps=["a"])], "a → b → a"),
        ([child("a", deps=["c"]), child("b", deps=["a"]), child("c", deps=["b"])], "a → c → b → a"),
        ([child("a", deps=["parent"])], "parent → a → parent"),  # a child waiting on its own parent
        ([child("parent")], "parent → parent"),
    ],
)
def test_a_composite_whose_deps_would_cycle_is_refused_naming_the_cycle(world, children, cycle):
    with pytest.raises(errors.ValidationFailed) as refused:
        composite(world, "parent", *children)
    assert cycle in refused.value.detail
    assert refused.value.errors[0]["field"] == "deps"
    assert stored_keys(world) == []


def test_a_child_added_later_may_not_wait_on_its_parent_through_other_jobs(world):
    # Given a parent, and a job "report" that waits on the parent
    composite(world, "parent", child("a"))
    world.submit_job("report", deps=["parent"])
    # When a child waiting on "report" is added, Then the cycle is refused and named
    parent = by_key(world, "parent")
    with pytest.raises(errors.ValidationFailed) as refused:
        dag.add_children(world.ctx, parent.id, [child("b", deps=["report"])])
    assert "parent → b → report → parent" in refused.value.detail
    # and nothing changed
    assert stored_keys(world) == ["a", "parent", "report"]
    assert by_key(world, "parent").deps == ["a"]


KEYS = [f"k{i}" for i in range(6)]


class DependencyGraph(RuleBasedStateMachine):
    """Tasks, composites and added children, with deps drawn from a small pool of keys so that
    collisions, unknown deps and would-be cycles are frequent. Whatever is accepted or refused,
    the deps graph of the stored jobs stays acyclic."""

    def __init__(self) -> None:
        super().__init__()
        self._world = open_world(flags_on())
        self.world: World = self._world.__enter__()

    def teardown(self) -> None:
        self._world.__exit__(None, None, None)

    def _attempt(self, act) -> None:
        try:
            act()
        except (errors.ValidationFailed, errors.IdempotencyConflict, errors.IllegalTransition, errors.NotFound):
            pass  # refused: fine, as long as what is stored stays acyclic

    @rule(key=st.sampled_from(KEYS), deps=st.lists(st.sampled_from(KEYS), max_size=3, unique=True))
    def submit_a_task(self, key, deps):
        self._attempt(lambda: self.world.submit_job(key, deps=deps))

    @rule(
        key=st.sampled_from(KEYS),
        children=st.lists(
            st.tuples(st.sampled_from(KEYS), st.lists(st.sampled_from(KEYS), max_size=2, unique=True)), min_size=1, max_size=3
        ),
    )
    def submit_a_composite(self, key, children):
        specs = [child(k, deps=d) for k, d in children]
        self._attempt(lambda: composite(self.world, key, *specs))

    @rule(
        parent=st.sampled_from(KEYS),
        children=st.lists(
            st.tuples(st.sampled_from(KEYS), st.lists(st.sampled_from(KEYS), max_size=2, unique=True)), min_size=1, max_size=2
        ),
    )
    def add_children(self, parent, children):
        specs = [child(k, deps=d) for k, d in children]
        self._attempt(lambda: dag.add_children(self.world.ctx, job_id(PRODUCT, parent), specs))

    @rule(key=st.sampled_from(KEYS))
    def finish_one(self, key):
        try:
            job = by_key(self.world, key)
        except errors.NotFound:
            return
        if job.stage == Stage.QUEUED:
            finish(self.world, key)

    @invariant()
    def the_deps_graph_is_acyclic(self):
        query = store_port.Query("jobs", PRODUCT, (store_port.Filter("idempotencyKey", "!=", None),), limit=500)
        graph = {doc["idempotencyKey"]: doc["deps"] for doc in store_port.query_all(self.world.store.inner, query)}
        state: dict[str, str] = {}

        def visit(key: str, path: list[str]) -> None:
            if state.get(key) == "done":
                return
            assert state.get(key) != "visiting", f"cycle: {' → '.join([*path, key])}"
            state[key] = "visiting"
            for dep in graph.get(key, []):
                if dep in graph:
                    visit(dep, [*path, key])
            state[key] = "done"

        for key in graph:
            visit(key, [])

    @invariant()
    def a_composites_children_are_its_deps(self):
        query = store_port.Query("jobs", PRODUCT, (store_port.Filter("idempotencyKey", "!=", None),), limit=500)
        for doc in store_port.query_all(self.world.store.inner, query):
            ids = {job_id(PRODUCT, dep) for dep in doc["deps"]}
            assert set(doc["children"]) <= ids


def test_property_the_dag_stays_acyclic():
    run_state_machine_as_test(
        DependencyGraph, settings=hsettings(max_examples=60, stateful_step_count=20, deadline=None)
    )


# Adding children later


def test_children_added_to_a_queued_parent_send_it_back_to_blocked(world):
    # Given a composite whose only child shipped, so it is queued
    submitted = composite(world, "parent", child("a"))
    finish(world, "a")
    assert world.job(submitted.job).stage == Stage.QUEUED
    # When a child is added
    added = dag.add_children(world.ctx, submitted.job.id, [child("b", title="more")]).to_doc()
    # Then the parent waits again, on the new child, which inherits its product
    parent = world.job(submitted.job)
    b = by_key(world, "b")
    assert (parent.stage, parent.deps, parent.children) == (Stage.BLOCKED, ["a", "b"], [by_key(world, "a").id, b.id])
    assert [w.idempotency_key for w in parent.blocked_on] == ["b"]
    assert (b.parent_id, b.product_id, b.stage) == (parent.id, PRODUCT, Stage.QUEUED)
    assert [c["id"] for c in added["children"]] == [b.id]
    assert added["parent"]["stage"] == "blocked"
    assert (parent.events[-1].type, parent.events[-1].detail) == ("children_added", {"children": ["b"]})


def test_a_plain_queued_task_can_become_a_parent(world):
    task = world.submit_job("task", priority="high")
    dag.add_children(world.ctx, task.id, [child("sub")])
    assert world.job(task).stage == Stage.BLOCKED
    assert by_key(world, "sub").priority == Priority.HIGH  # inherited from its new parent
    finish(world, "sub")
    assert world.job(task).stage == Stage.QUEUED


def test_children_added_to_a_blocked_parent_add_to_what_it_waits_on(world):
    submitted = composite(world, "parent", child("a"))
    dag.add_children(world.ctx, submitted.job.id, [child("b", deps=["a"]), child("c")])
    parent = world.job(submitted.job)
    assert (parent.stage, parent.deps) == (Stage.BLOCKED, ["a", "b", "c"])
    assert by_key(world, "b").stage == Stage.BLOCKED  # waits on its sibling from the first batch


@pytest.mark.parametrize("stage", ["assigned", "building", "testing"])
def test_children_cannot_be_added_to_a_running_parent(world, stage):
    parent = world.running_job("parent", stage=stage)
    with pytest.raises(errors.IllegalTransition):
        dag.add_children(world.ctx, parent.id, [child("late")])
    assert stored_keys(world) == ["parent"]


@pytest.mark.parametrize("how", ["shipped", "done", "failed"])
def test_children_cannot_be_added_to_a_finished_parent(world, how):
    world.submit_job("parent")
    finish(world, "parent", how)
    with pytest.raises(errors.IllegalTransition):
        dag.add_children(world.ctx, job_id(PRODUCT, "parent"), [child("late")])
    assert stored_keys(world) == ["parent"]


def a_rival_claims(world: World, parent: Job, outcome: dict[str, str]):
    """Another factory claiming `parent`; `outcome["rival"]` says how it went."""

    def claim() -> None:
        request = claims.ClaimRequest("factory-rival", PRODUCT)
        try:
            claims.claim_job(world.observer, parent.id, PRODUCT, request)
            outcome["rival"] = "claimed"
        except errors.FleetError as refused:
            outcome["rival"] = refused.code

    return claim


@pytest.mark.parametrize(
    "op, nth, rival, add_children, children",
    [
        # right after add_children read the parent: the rival wins, nothing is added
        ("read", 1, "claimed", "illegal_transition", 0),
        # while the first child is written: the parent already waits on it, the rival loses
        ("create", 1, "not_claimable", "added", 2),
        # between the first and the second child: likewise
        ("create", 2, "not_claimable", "added", 2),
    ],
)
def test_a_claim_racing_add_children_leaves_no_orphan_children(world, faulty, op, nth, rival, add_children, children):
    # Regression: add_children used to write the children first; a claim in between stranded them.
    # Given a queued parent, and a rival factory that claims it at a chosen point
    parent = world.submit_job("parent")
    outcome: dict[str, str] = {}
    faulty.meanwhile(op, "jobs", a_rival_claims(world, parent, outcome), nth=nth)
    # When two children are added
    try:
        dag.add_children(world.ctx, parent.id, [ChildSpec(idempotency_key="child-1"), ChildSpec(idempotency_key="child-2")])
        outcome["add_children"] = "added"
    except errors.FleetError as refused:
        outcome["add_children"] = refused.code
    # Then one of the two wins
    assert outcome == {"rival": rival, "add_children": add_children}
    # and every child that exists is listed by its parent, which waits on it instead of running
    after = world.job(parent)
    existing = []
    for key in ("child-1", "child-2"):
        try:
            existing.append(world.job(job_id(PRODUCT, key)))
        except errors.NotFound:
            continue
    assert len(existing) == children
    for child in existing:
        assert child.parent_id == parent.id
        assert child.id in after.children and child.idempotency_key in after.deps
        assert (after.stage, after.lease) == (Stage.BLOCKED, None)


@pytest.mark.parametrize("nth", [1, 2])
def test_a_cancel_racing_add_children_cancels_the_children_created_after_it(world, faulty, nth):
    # Regression: the cancel cascaded to the children that existed, and the ones add_children
    # created next stayed queued under a cancelled parent, for any factory to claim.
    # Given a composite, cancelled while two more children are added (before the nth is written)
    composite(world, "parent", child("first"))
    parent = by_key(world, "parent")
    faulty.meanwhile("create", "jobs", lambda: world.with_settings().act(parent, "cancel", reason="scope cut"), nth=nth)
    added = dag.add_children(world.ctx, parent.id, [child("c1"), child("c2")])
    # Then the parent and every job below it are cancelled, and the answer says so
    assert added.parent.stage == Stage.CANCELLED
    assert [c.stage for c in added.children] == [Stage.CANCELLED, Stage.CANCELLED]
    assert {k: by_key(world, k).stage for k in ("parent", "first", "c1", "c2")} == dict.fromkeys(
        ("parent", "first", "c1", "c2"), Stage.CANCELLED
    )
    # in the name of whoever cancelled the parent, for its reason, and nothing is left to claim
    late = by_key(world, "c2").events[-1]
    assert (late.type, late.detail.get("reason")) == ("cancel", "scope cut")
    assert world.claim("factory-1", capabilities=[]).job is None


# Viewing and cancelling the tree


def test_the_dag_view_nests_the_subtree(world):
    # Given root -> mid -> leaf-1, leaf-2; and root -> other
    composite(world, "root", child("mid"), child("other"))
    dag.add_children(world.ctx, job_id(PRODUCT, "mid"), [child("leaf-1"), child("leaf-2")])
    # When the root's DAG is viewed
    view = dag.view(world.ctx, job_id(PRODUCT, "root")).to_doc()

    def shape(node):
        return (node["idempotencyKey"], node["stage"], [shape(c) for c in node["children"]])

    # Then it nests, each node with its stage
    assert shape(view) == (
        "root",
        "blocked",
        [("mid", "blocked", [("leaf-1", "queued", []), ("leaf-2", "queued", [])]), ("other", "queued", [])],
    )
    assert view["id"] == job_id(PRODUCT, "root")
    assert [b["idempotencyKey"] for b in view["blockedOn"]] == ["mid", "other"]


def test_cancel_cascades_to_unfinished_descendants_only(world):
    # Given root -> mid -> (leaf-1 shipped, leaf-2 running); root -> other (queued)
    composite(world, "root", child("mid"), child("other"))
    dag.add_children(world.ctx, job_id(PRODUCT, "mid"), [child("leaf-1"), child("leaf-2")])
    finish(world, "leaf-1", "shipped")
    running = world.claim_job(by_key(world, "leaf-2"), "factory-1").job
    # When the root is cancelled
    world.act(by_key(world, "root"), "cancel", reason="scope cut")
    # Then everything unfinished below it is cancelled, and the shipped leaf stays shipped
    stages = {k: by_key(world, k).stage for k in ("root", "mid", "leaf-1", "leaf-2", "other")}
    assert stages == {
        "root": Stage.CANCELLED,
        "mid": Stage.CANCELLED,
        "leaf-1": Stage.SHIPPED,
        "leaf-2": Stage.CANCELLED,
        "other": Stage.CANCELLED,
    }
    # and the running leaf lost its lease
    leaf = by_key(world, "leaf-2")
    assert leaf.lease is None
    with pytest.raises(errors.LeaseLost):
        world.patch(running, "building")


def test_cancelling_a_child_leaves_its_parent_and_siblings(world):
    composite(world, "root", child("a"), child("b"))
    world.act(by_key(world, "a"), "cancel")
    assert [by_key(world, k).stage for k in ("root", "a", "b")] == [Stage.BLOCKED, Stage.CANCELLED, Stage.QUEUED]


def test_cancel_reaches_unfinished_jobs_below_a_finished_middle_job(world):
    # Given root -> mid -> leaf, where mid was rejected (failed) while its leaf still waits
    composite(world, "root", child("mid"))
    dag.add_children(world.ctx, job_id(PRODUCT, "mid"), [child("leaf")])
    world.act(by_key(world, "mid"), "reject")
    assert by_key(world, "leaf").stage == Stage.QUEUED
    # When the root is cancelled, Then the leaf — an unfinished descendant — is cancelled too
    world.act(by_key(world, "root"), "cancel")
    assert by_key(world, "leaf").stage == Stage.CANCELLED
