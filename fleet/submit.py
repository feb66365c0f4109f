"""Submitting jobs: idempotent creation, with deps."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from fleet import deps, effects, errors, scoring, weight_registry
from fleet.context import Context
from fleet.jobs import Job, Kind, Model, job_id
from fleet.schemas import JobSpec
from fleet.stages import Priority, Stage


class Submitted(Model):
    """A submit's outcome: `POST /fleet/jobs` answers the job, 201 if this call created it."""

    job: Job
    #: False when the idempotency key had been submitted before with the same fields.
    created: bool


def submit_hash(spec: JobSpec, parent_id: str | None = None, kind: Kind | None = None) -> str:
    """Digest of the normalised submit fields, the job's kind as `kind_of` decides it: equal
    for a retry of the same submit."""
    fields = spec.model_dump(mode="json", by_alias=True, exclude={"children"})
    fields["kind"] = (kind or kind_of(spec)).value
    fields["priority"] = fields["priority"] or Priority.NORMAL.value
    fields["capabilities"] = sorted(set(fields["capabilities"]))  # stored as a set
    fields["deps"] = sorted(fields["deps"])
    fields["children"] = sorted(child.idempotency_key for child in spec.children)
    fields["parentId"] = parent_id
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def submit(
    ctx: Context, spec: JobSpec, parent_id: str | None = None, children: list[str] | None = None
) -> Submitted:
    """Create the job (queued, or blocked while a dep is unfinished). A repeat of the same
    idempotency key returns the existing job; a repeat with different fields is refused.
    A composite's children (`dag.submit_composite` creates them first) become its deps.
    `Forbidden` for a principal limited to other products.

    The job is created without reading first (a repeat learns of the job from the create's
    conflict), keyed with the weights this process last read (`weight_registry.cached`, checked
    after the queue-state bump): a new job without deps costs its create, the bump and the
    activity bump."""
    ctx.principal.enter(spec.product_id)
    keys = all_deps(spec)
    facts = Facts(deps.stages(ctx, spec.product_id, keys), weight_registry.cached(ctx, spec.product_id))
    return create(ctx, spec, facts, parent_id, children)


@dataclass(frozen=True)
class Facts:
    """What a submit decides the new job with, read before it writes: the stages of its deps,
    and its product's weights (for its rank key)."""

    stages: deps.Stages
    weights: weight_registry.Snapshot


def submit_hashes(spec: JobSpec, parent_id: str | None = None) -> tuple[str, ...]:
    """The digests a job submitted as `spec` may carry: `submit_hash`'s, and for a submit with
    children that names no kind, the one it had when such a job was a `task` (a job submitted
    before that changed, repeated since)."""
    digest = submit_hash(spec, parent_id)
    if kind_of(spec) == spec.kind:
        return (digest,)
    return digest, submit_hash(spec, parent_id, Kind.TASK)


def kind_of(spec: JobSpec) -> Kind:
    """The job's kind: as the submit said, else `composite` for a job submitted with children."""
    if "kind" not in spec.model_fields_set and spec.children:
        return Kind.COMPOSITE
    return spec.kind


def all_deps(spec: JobSpec) -> list[str]:
    """The job's deps: its own, then its children's keys (a composite waits on them)."""
    return list(dict.fromkeys([*spec.deps, *(c.idempotency_key for c in spec.children)]))


def create(
    ctx: Context, spec: JobSpec, facts: Facts, parent_id: str | None = None, children: list[str] | None = None,
    recheck: bool = True,
) -> Submitted:
    """`submit` for a key the caller found free, with the facts it read: create the job; a
    create that finds the key taken (a concurrent submit) answers the job that took it.
    `recheck=False`: a blocked job is not checked against its deps again after the create (a
    composite parent created before its children: they cannot have finished, and the last
    to ship reads every dep again anyway)."""
    now = ctx.clock.now()
    id = job_id(spec.product_id, spec.idempotency_key)
    digest = submit_hash(spec, parent_id)
    _refuse_self_dependency(spec)
    keys = all_deps(spec)
    waiting = deps.waiting(spec.product_id, keys, facts.stages)
    deps.refuse_unknown(waiting)
    priority = spec.priority or Priority.NORMAL
    job = Job(
        id=id,
        product_id=spec.product_id,
        idempotency_key=spec.idempotency_key,
        kind=kind_of(spec),
        title=spec.title,
        body_md=spec.body_md,
        priority=priority,
        capabilities=sorted(set(spec.capabilities)),
        deps=keys,
        parent_id=parent_id,
        children=children or [],
        stage=Stage.BLOCKED if waiting else Stage.QUEUED,
        blocked_on=waiting,
        max_attempts=spec.max_attempts,
        repo=spec.repo,
        base_branch=spec.base_branch,
        estimated_cost_usd=spec.estimated_cost_usd,
        rank_key=scoring.rank_key(priority.order, 0, now, facts.weights.weights),
        submit_hash=digest,
        created_at=now,
        updated_at=now,
    ).with_event(now, "submitted", ctx.principal.actor())
    try:
        job = effects.create(ctx, job, keyed_with=facts.weights).job
    except errors.Conflict:
        # Lost a race with an identical (or conflicting) submit of the same key.
        return Submitted(job=_existing(ctx, spec.product_id, id, submit_hashes(spec, parent_id)), created=False)
    if job.stage == Stage.BLOCKED and recheck:
        # A dep may have finished between our read and our write: read the deps again.
        job = effects.recheck(ctx, id, job).job
    return Submitted(job=job, created=True)


def _refuse_self_dependency(spec: JobSpec) -> None:
    if spec.idempotency_key in spec.deps:
        raise errors.ValidationFailed(
            "a job cannot depend on itself", [{"field": "deps", "message": "names the job itself"}]
        )


def check_existing(ctx: Context, spec: JobSpec, id: str, parent_id: str | None = None) -> Job | None:
    """The job already submitted under this key, None if there is none; `IdempotencyConflict`
    if it was submitted with different fields."""
    return _existing(ctx, spec.product_id, id, submit_hashes(spec, parent_id))


def _existing(ctx: Context, product_id: str, id: str, digests: tuple[str, ...]) -> Job | None:
    try:
        job = Job.from_doc(ctx.store.read("jobs", product_id, id))
    except errors.NotFound:
        return None
    if job.submit_hash not in digests:
        raise errors.IdempotencyConflict(
            f"idempotency key {job.idempotency_key!r} was already submitted with different fields", jobId=job.id
        )
    return job
