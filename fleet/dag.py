"""Composite jobs: a parent fans out into children and waits, blocked, until they all ship.

The children's idempotency keys become the parent's deps, so unblocking is the ordinary
dependency rule (`deps.release_dependents` is the spec's `maybeUnblockParent`). Writes go
children first, then the parent, so a retried submit converges. Deps may never form a cycle.
"""
from __future__ import annotations

from typing import Any

from pydantic import Field, model_serializer

from fleet import deps, errors, listing, submit, writes
from fleet.context import Context
from fleet.jobs import BlockedOn, Job, Kind, Model, job_id
from fleet.schemas import ChildSpec, JobSpec
from fleet.stages import Priority, Stage

#: A subtree view stops at this many jobs.
MAX_NODES = 1000


class DagNode(Model):
    """`GET /fleet/jobs/{id}/dag`: a job and its children, nested. A child that names no job
    (its submit never happened) is `{id, stage: null, children: []}`."""

    id: str
    idempotency_key: str | None = None
    title: str | None = None
    kind: Kind | None = None
    priority: Priority | None = None
    #: None: there is no such job.
    stage: Stage | None = None
    blocked_on: list[BlockedOn] = Field(default_factory=list)
    children: list["DagNode"] = Field(default_factory=list)

    @classmethod
    def of(cls, job: Job, children: list["DagNode"]) -> "DagNode":
        fields = ("id", "idempotency_key", "title", "kind", "priority", "stage", "blocked_on")
        return cls(**{name: getattr(job, name) for name in fields}, children=children)

    @model_serializer(mode="wrap")
    def _missing_is_short(self, handler):
        doc = handler(self)
        if self.stage is None:  # only what the parent knows of it
            return {"id": doc["id"], "stage": None, "children": doc["children"]}
        return doc


class ChildrenAdded(Model):
    """`POST /fleet/jobs/{id}/children`: the parent after the change, and the children added."""

    parent: Job
    children: list[Job] = Field(default_factory=list)


def submit_composite(ctx: Context, spec: JobSpec) -> submit.Submitted:
    """Create the children (in dependency order), then the parent blocked on them."""
    parent_id = job_id(spec.product_id, spec.idempotency_key)
    children = _in_dependency_order(spec.idempotency_key, spec.children)
    submit.check_existing(ctx, spec, parent_id)
    _check_before_writing(ctx, spec, children, parent_id, spec.deps)
    for child in children:
        submit.submit(ctx, child_spec(spec, child), parent_id=parent_id)
    return submit.submit(ctx, spec, children=[job_id(spec.product_id, c.idempotency_key) for c in spec.children])


def add_children(ctx: Context, parent_id: str, children: list[ChildSpec]) -> ChildrenAdded:
    """Add children to a queued or blocked parent; a queued parent goes back to blocked.
    Everything that could refuse the request is checked before the first write."""
    parent = _read(ctx, parent_id)
    if parent.stage not in (Stage.QUEUED, Stage.BLOCKED):
        raise errors.IllegalTransition(f"job {parent.id} is {parent.stage.value}; children can only be added while it waits")
    ordered = _in_dependency_order(parent.idempotency_key, children)
    _refuse_cycles(ctx, parent, ordered)
    template = JobSpec(
        product_id=parent.product_id,
        idempotency_key=parent.idempotency_key,
        priority=parent.priority,
        repo=parent.repo,
        base_branch=parent.base_branch,
    )
    _check_before_writing(ctx, template, ordered, parent.id, [])
    keys = [c.idempotency_key for c in children]
    ids = [job_id(parent.product_id, k) for k in keys]

    def attach(job: Job, now) -> Job:
        if job.stage not in (Stage.QUEUED, Stage.BLOCKED):
            raise errors.IllegalTransition(f"job {job.id} is {job.stage.value}; children can only be added while it waits")
        all_deps = list(dict.fromkeys([*job.deps, *keys]))
        waiting = deps.waiting_on(ctx, job.product_id, all_deps)
        update: dict[str, Any] = {"deps": all_deps, "children": list(dict.fromkeys([*job.children, *ids]))}
        if waiting:
            update.update(stage=Stage.BLOCKED, blocked_on=waiting, lease=None)
        return job.model_copy(update=update).with_event(now, "children_added", children=keys)

    # The parent first: once it waits on the new keys no factory can claim it, so the children
    # written next can never be stranded under a parent that runs without them. A crash in
    # between leaves the parent blocked on children not yet submitted; a retry converges.
    parent = writes.change(ctx, parent.id, attach)
    created = [submit.submit(ctx, child_spec(template, child), parent_id=parent.id).job for child in ordered]
    if parent.stage == Stage.BLOCKED:
        parent = deps.recheck(ctx, parent.product_id, parent.id)
    return ChildrenAdded(parent=parent, children=created)


def view(ctx: Context, id: str) -> DagNode:
    """The nested subtree under a job (at most `MAX_NODES` jobs, each once)."""
    seen: set[str] = set()

    def node(job: Job) -> DagNode:
        seen.add(job.id)
        kids = []
        for child_id in job.children:
            if child_id in seen or len(seen) >= MAX_NODES:
                continue
            try:
                kids.append(node(_read(ctx, child_id)))
            except errors.NotFound:
                kids.append(DagNode(id=child_id))
        return DagNode.of(job, kids)

    return node(_read(ctx, id))


def child_spec(parent: JobSpec, child: ChildSpec) -> JobSpec:
    """A child inherits its parent's product, and its priority, repo and base branch unless it
    names its own."""
    fields = child.model_dump(exclude_none=True)
    fields.setdefault("priority", parent.priority)
    fields.setdefault("repo", parent.repo)
    fields.setdefault("base_branch", parent.base_branch)
    return JobSpec(product_id=parent.product_id, kind=Kind.TASK, **fields)


def _check_before_writing(
    ctx: Context, parent: JobSpec, children: list[ChildSpec], parent_id: str, parent_deps: list[str]
) -> None:
    """Refuse, before anything is written, what `submit` would refuse part-way through: a child
    whose key was submitted with other fields, or any dep (the parent's own, or a child's that
    is not a sibling) naming a job that was never submitted."""
    siblings = {c.idempotency_key for c in children}
    for child in children:
        submit.check_existing(ctx, child_spec(parent, child), job_id(parent.product_id, child.idempotency_key), parent_id)
    outside = list(dict.fromkeys([*parent_deps, *(d for c in children for d in c.deps if d not in siblings)]))
    deps.refuse_unknown(deps.waiting_on(ctx, parent.product_id, outside))


def _in_dependency_order(parent_key: str, children: list[ChildSpec]) -> list[ChildSpec]:
    """Children sorted so that a child comes after the siblings it depends on; refuses a
    child that names its parent or a duplicate, and cycles among siblings."""
    by_key: dict[str, ChildSpec] = {}
    for child in children:
        if child.idempotency_key == parent_key:
            raise _cycle([parent_key, parent_key])
        if child.idempotency_key in by_key:
            raise errors.ValidationFailed(
                f"child {child.idempotency_key!r} is listed twice", [{"field": "children", "message": "duplicate key"}]
            )
        if parent_key in child.deps:
            raise _cycle([parent_key, child.idempotency_key, parent_key])
        by_key[child.idempotency_key] = child
    ordered: list[ChildSpec] = []
    state: dict[str, str] = {}

    def visit(key: str, path: list[str]) -> None:
        if state.get(key) == "done":
            return
        if state.get(key) == "visiting":
            raise _cycle([*path[path.index(key):], key])
        state[key] = "visiting"
        for dep in by_key[key].deps:
            if dep in by_key:
                visit(dep, [*path, key])
        state[key] = "done"
        ordered.append(by_key[key])

    for key in by_key:
        visit(key, [])
    return ordered


def _refuse_cycles(ctx: Context, parent: Job, children: list[ChildSpec]) -> None:
    """A new child may not (transitively) depend on its parent: the parent would wait forever."""
    sibling_keys = {c.idempotency_key for c in children}
    for child in children:
        stack = [(dep, [parent.idempotency_key, child.idempotency_key, dep]) for dep in child.deps if dep not in sibling_keys]
        seen: set[str] = set()
        while stack:
            key, path = stack.pop()
            if key == parent.idempotency_key:
                raise _cycle(path)
            if key in seen or len(seen) >= MAX_NODES:
                continue
            seen.add(key)
            try:
                job = Job.from_doc(ctx.store.read("jobs", parent.product_id, job_id(parent.product_id, key)))
            except errors.NotFound:
                continue
            stack.extend((dep, [*path, dep]) for dep in job.deps)


def _cycle(path: list[str]) -> errors.ValidationFailed:
    shown = " → ".join(path)
    return errors.ValidationFailed(f"deps would form a cycle: {shown}", [{"field": "deps", "message": f"cycle: {shown}"}])


def _read(ctx: Context, id: str) -> Job:
    return listing.get(ctx, id)
