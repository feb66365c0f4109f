"""Composite jobs: a parent fans out into children and waits, blocked, until they all ship.

The children's idempotency keys become the parent's deps, so unblocking is the ordinary
dependency rule (`deps.release_dependents` is the spec's `maybeUnblockParent`). Writes go
parent first, blocked on its children, then the children, so no child runs under a parent
that never came, and a retried submit converges. Deps may never form a cycle.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import Field, model_serializer

from fleet import actions, deps, effects, errors, submit, weight_registry, writes
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
    def of(cls, job: Job, children: list["DagNode"], blocked_on: list[BlockedOn]) -> "DagNode":
        fields = ("id", "idempotency_key", "title", "kind", "priority", "stage")
        return cls(**{name: getattr(job, name) for name in fields}, blocked_on=blocked_on, children=children)

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
    """Create the parent blocked on its children, then the children (in dependency order).
    Every job and dep is read once, before the first write. `Forbidden` for a principal
    limited to other products.

    The parent first, as `add_children` does: a child created before its parent could be
    claimed and run under a parent that never came (a submit cut off in between, its client
    gone). Cut off after the parent, the submit leaves it blocked on children not yet
    submitted, which nothing runs; a retry converges."""
    ctx.principal.enter(spec.product_id)
    parent_id = job_id(spec.product_id, spec.idempotency_key)
    children = _in_dependency_order(spec.idempotency_key, spec.children)
    existing = submit.check_existing(ctx, spec, parent_id)
    checked = _check_before_writing(ctx, spec, children, parent_id, spec.deps)
    to_create = existing is None or None in checked.children.values()
    weights = weight_registry.cached(ctx, spec.product_id) if to_create else None
    submitted = submit.Submitted(job=existing, created=False) if existing is not None else None
    if submitted is None:
        kids = [job_id(spec.product_id, c.idempotency_key) for c in spec.children]
        as_created = _as_created(spec.product_id, children, checked, checked.stages)
        # Not checked again after its create while a child is still to be made: it would read as
        # never submitted, and cannot have finished before it exists.
        missing = None in checked.children.values()
        submitted = submit.create(ctx, spec, submit.Facts(as_created, weights), children=kids, recheck=not missing)
    stages = dict(checked.stages)
    fresh = False
    for child in children:
        made = checked.children[child.idempotency_key]
        if made is None:
            created = submit.create(ctx, child_spec(spec, child), submit.Facts(stages, weights), parent_id=parent_id)
            fresh = fresh or created.created
            made = created.job
        stages[child.idempotency_key] = made.stage
    if fresh:
        # A cancel of the parent landing before a child's create cascaded without it.
        parent = actions.follow_cancel(ctx, parent_id)
        submitted = submit.Submitted(job=parent, created=submitted.created)
    return submitted


def add_children(ctx: Context, parent_id: str, children: list[ChildSpec]) -> ChildrenAdded:
    """Add children to a queued or blocked parent; a queued parent goes back to blocked.
    Everything that could refuse the request is checked before the first write, and every
    job and dep is read once, before it."""
    parent = writes.read(ctx, parent_id)
    if parent.stage not in (Stage.QUEUED, Stage.BLOCKED):
        raise errors.IllegalTransition(f"job {parent.id} is {parent.stage.value}; children can only be added while it waits")
    ordered = _in_dependency_order(parent.idempotency_key, children)
    followed = _refuse_cycles(ctx, parent, ordered)
    template = JobSpec(
        product_id=parent.product_id,
        idempotency_key=parent.idempotency_key,
        priority=parent.priority,
        repo=parent.repo,
        base_branch=parent.base_branch,
    )
    checked = _check_before_writing(ctx, template, ordered, parent.id, [], followed)
    keys = [c.idempotency_key for c in children]
    ids = [job_id(parent.product_id, k) for k in keys]
    known = {**deps.stages(ctx, parent.product_id, [k for k in parent.deps if k not in checked.stages]), **checked.stages}
    attaching = _Attaching(
        tuple(keys), tuple(ids), _as_created(parent.product_id, ordered, checked, known), ctx.principal.actor()
    )

    # The parent first: once it waits on the new keys no factory can claim it, so the children
    # written next can never be stranded under a parent that runs without them. A crash in
    # between leaves the parent blocked on children not yet submitted; a retry converges.
    parent = effects.change(ctx, parent.id, _attached, attaching, current=parent).job
    weights = weight_registry.cached(ctx, parent.product_id) if None in checked.children.values() else None
    stages = dict(known)
    created: list[Job] = []
    fresh = False
    for child in ordered:
        made = checked.children[child.idempotency_key]
        if made is None:
            submitted = submit.create(ctx, child_spec(template, child), submit.Facts(stages, weights), parent_id=parent.id)
            fresh = fresh or submitted.created
            made = submitted.job
        stages[child.idempotency_key] = made.stage
        created.append(made)
    if parent.stage == Stage.BLOCKED and not fresh:
        # Every child existed (a retry): one may have finished before the parent's write.
        # A child this call created cannot have: it was created after the parent waited on it.
        parent = effects.recheck(ctx, parent.id, parent).job
    if fresh:
        # A cancel of the parent after its write above cascaded only to the children that
        # existed then: the ones created since are cancelled here (one read if it was not).
        parent = actions.follow_cancel(ctx, parent.id)
        created = [writes.read(ctx, c.id) for c in created] if parent.stage == Stage.CANCELLED else created
    return ChildrenAdded(parent=parent, children=created)


@dataclass(frozen=True)
class _Attaching:
    """What attaching children to a parent decides with: their keys and ids, and the stages
    of every dep the parent will wait on (the new children's as they are about to be created)."""

    keys: tuple[str, ...]
    ids: tuple[str, ...]
    stages: deps.Stages
    #: Who adds them (the event's actor).
    actor: str | None = None


def _attached(job: Job, attaching: _Attaching, now: datetime) -> Job:
    if job.stage not in (Stage.QUEUED, Stage.BLOCKED):
        raise errors.IllegalTransition(f"job {job.id} is {job.stage.value}; children can only be added while it waits")
    all_deps = list(dict.fromkeys([*job.deps, *attaching.keys]))
    # A dep another request added since the stages were read counts as unfinished.
    waiting = deps.waiting(job.product_id, all_deps, attaching.stages)
    update: dict[str, Any] = {"deps": all_deps, "children": list(dict.fromkeys([*job.children, *attaching.ids])),
                              "kind": Kind.COMPOSITE}  # a job with children is their composite parent
    if waiting:
        update.update(stage=Stage.BLOCKED, blocked_on=waiting, lease=None, retry_at=None)  # its children's wait now
    return job.model_copy(update=update).with_event(
        now, "children_added", attaching.actor, children=list(attaching.keys)
    )


def _as_created(product_id: str, ordered: list[ChildSpec], checked: _Checked, known: deps.Stages) -> dict[str, Stage | None]:
    """`known`, with each child not yet submitted at the stage `submit` will create it in
    (blocked while a dep of it is unfinished), in dependency order."""
    stages = dict(known)
    for child in ordered:
        if checked.children[child.idempotency_key] is None:
            waiting = deps.waiting(product_id, child.deps, stages)
            stages[child.idempotency_key] = Stage.BLOCKED if waiting else Stage.QUEUED
    return stages


def view(ctx: Context, id: str) -> DagNode:
    """The nested subtree under a job (at most `MAX_NODES` jobs), each job read once (a
    blocked node's `blockedOn` from the same reads)."""
    jobs: dict[str, Job | None] = {}

    def fetch(job_id_: str) -> Job | None:
        if job_id_ not in jobs:
            try:
                jobs[job_id_] = writes.read(ctx, job_id_)
            except errors.NotFound:
                jobs[job_id_] = None
        return jobs[job_id_]

    seen: set[str] = set()

    def node(job: Job) -> DagNode:
        seen.add(job.id)
        blocked_on = job.blocked_on
        if job.stage == Stage.BLOCKED:
            dep_jobs = {key: fetch(job_id(job.product_id, key)) for key in job.deps}
            stages = {key: dep.stage if dep else None for key, dep in dep_jobs.items()}
            blocked_on = deps.waiting(job.product_id, job.deps, stages)
        kids = []
        for child_id in job.children:
            if child_id in seen or len(seen) >= MAX_NODES:
                continue
            child = fetch(child_id)
            kids.append(node(child) if child is not None else DagNode(id=child_id))
        return DagNode.of(job, kids, blocked_on)

    root = fetch(id)
    if root is None:
        raise errors.NotFound(f"no job {id!r}")
    return node(root)


def child_spec(parent: JobSpec, child: ChildSpec) -> JobSpec:
    """A child inherits its parent's product, and its priority, repo and base branch unless it
    names its own."""
    fields = child.model_dump(exclude_none=True)
    fields.setdefault("priority", parent.priority)
    fields.setdefault("repo", parent.repo)
    fields.setdefault("base_branch", parent.base_branch)
    return JobSpec(product_id=parent.product_id, kind=Kind.TASK, **fields)


@dataclass(frozen=True)
class _Checked:
    """What checking a fan-out read: each child's job as already submitted (None: not yet),
    and the stage of each of those and of every dep from outside the fan-out."""

    children: dict[str, Job | None]
    stages: dict[str, Stage | None]


def _check_before_writing(
    ctx: Context,
    parent: JobSpec,
    children: list[ChildSpec],
    parent_id: str,
    parent_deps: list[str],
    known: dict[str, Job | None] | None = None,
) -> _Checked:
    """Refuse, before anything is written, what `submit` would refuse part-way through: a child
    whose key was submitted with other fields, or any dep (the parent's own, or a child's that
    is not a sibling) naming a job that was never submitted. `known`: jobs (by key) the
    caller read already."""
    known = known or {}
    siblings = {c.idempotency_key for c in children}
    existing = {
        child.idempotency_key: submit.check_existing(
            ctx, child_spec(parent, child), job_id(parent.product_id, child.idempotency_key), parent_id
        )
        for child in children
    }
    stages = {key: job.stage if job else None for key, job in {**known, **existing}.items()}
    outside = list(dict.fromkeys([*parent_deps, *(d for c in children for d in c.deps if d not in siblings)]))
    stages.update(deps.stages(ctx, parent.product_id, [k for k in outside if k not in stages]))
    deps.refuse_unknown(deps.waiting(parent.product_id, outside, stages))
    return _Checked(existing, stages)


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


def _refuse_cycles(ctx: Context, parent: Job, children: list[ChildSpec]) -> dict[str, Job | None]:
    """A new child may not (transitively) depend on its parent: the parent would wait forever.
    Returns the jobs it read on the way, by key (None: never submitted)."""
    sibling_keys = {c.idempotency_key for c in children}
    read: dict[str, Job | None] = {}
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
            if key not in read:
                try:
                    read[key] = Job.from_doc(ctx.store.read("jobs", parent.product_id, job_id(parent.product_id, key)))
                except errors.NotFound:
                    read[key] = None
            if read[key] is not None:
                stack.extend((dep, [*path, dep]) for dep in read[key].deps)
    return read


def _cycle(path: list[str]) -> errors.ValidationFailed:
    shown = " → ".join(path)
    return errors.ValidationFailed(f"deps would form a cycle: {shown}", [{"field": "deps", "message": f"cycle: {shown}"}])
