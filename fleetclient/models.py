"""The coordinator's answers as pydantic models, for the answers `fleet.jobs` has no model for.

Jobs, leases and runs are `fleet.jobs.Job`, `Lease` and `Run` themselves. Everything here is
camelCase on the wire and snake_case in Python, ignores fields it does not know (a newer
coordinator may add some), and is frozen.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from fleet.jobs import Job, Lease, Time


class Answer(BaseModel):
    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_doc(self) -> dict[str, Any]:
        """The answer as the coordinator sent it (camelCase)."""
        return self.model_dump(mode="json", by_alias=True)


class Claim(Answer):
    """`POST /fleet/claim`: a job with its new lease and run, or no job and why."""

    job: Job | None = None
    lease: Lease | None = None
    run_id: str | None = None
    #: Jobs of this factory evicted to make room for this (critical) one.
    preempted: list[str] = Field(default_factory=list)
    #: Why there is no job: `no_job`, `seat_limit`, `budget_paused`, `budget_exceeded`, ...
    reason: str | None = None


class LeaseRenewal(Answer):
    job_id: str
    lease_id: str | None = None
    #: `renewed` (keep working until `expires_at`) or `revoked` (stop that work now).
    status: str
    expires_at: Time | None = None

    @property
    def revoked(self) -> bool:
        return self.status == "revoked"


class Heartbeat(Answer):
    """`POST /fleet/factories/{id}/heartbeat`."""

    factory_id: str | None = None
    leases: list[LeaseRenewal] = Field(default_factory=list)


class QueueState(Answer):
    """`GET /fleet/queue-state`: bumped whenever a job of the product may have become claimable."""

    product_id: str
    version: int = 0
    updated_at: Time | None = None


class Factory(Answer):
    id: str
    products: list[str] = Field(default_factory=list)
    capabilities: list[str] = Field(default_factory=list)
    seat_limit: int | None = None
    seats_used: int = 0
    last_heartbeat_at: Time | None = None
    #: `online` (heartbeat ≤ 60 s ago), `stale` (≤ 300 s) or `offline`.
    health: str = "offline"


class JobPage(Answer):
    """`GET /fleet/jobs`: newest first; `next_offset`/`continuation` are both None at the end."""

    items: list[Job] = Field(default_factory=list)
    next_offset: int | None = None
    continuation: str | None = None


class ProductWeights(Answer):
    """`GET/PUT /fleet/weights/{productId}`."""

    product_id: str
    #: What the product sets; the rest come from the defaults.
    weights: dict[str, float] = Field(default_factory=dict)
    #: The weights claims use: the product's merged over the defaults.
    resolved: dict[str, float] = Field(default_factory=dict)
    #: True while queued jobs are being re-keyed after a change.
    rekeying: bool = False


class Budget(Answer):
    """`GET/PUT /fleet/budgets/{productId}` (and `pause`/`resume`)."""

    model_config = ConfigDict(extra="allow")

    product_id: str
    ceiling_usd: float | None = None
    #: `daily`, `weekly` or `monthly` (UTC calendar windows; weeks start Monday).
    window: str | None = None
    window_start: Time | None = None
    spent_usd: float = 0.0
    reserved_usd: float | None = None
    remaining_usd: float | None = None
    paused: bool = False
    #: `manual` (only resume lifts it) or `ceiling` (a new window or a higher ceiling lifts it).
    paused_by: str | None = None
    updated_at: Time | None = None


class DagNode(Answer):
    """`GET /fleet/jobs/{id}/dag`: a job and its children, recursively."""

    model_config = ConfigDict(extra="allow")

    id: str
    stage: str | None = None
    title: str | None = None
    kind: str | None = None
    children: list["DagNode"] = Field(default_factory=list)


class Children(Answer):
    """`POST /fleet/jobs/{id}/children`."""

    parent: Job
    children: list[Job] = Field(default_factory=list)


class Health(Answer):
    """`GET /fleet/health`."""

    model_config = ConfigDict(extra="allow")

    status: str
    store: dict[str, Any] = Field(default_factory=dict)
    flags: dict[str, bool] = Field(default_factory=dict)
    version: str | None = None


class Submitted(Answer):
    """A submit's outcome: the job, and whether this call created it (False: the idempotency
    key was seen before and the existing job is returned)."""

    job: Job
    created: bool
