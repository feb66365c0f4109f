"""Requests: what each endpoint accepts in its body and query string. Unknown body fields are
rejected; sizes are bounded.

These models, with the answers next to their nouns, are the source of the OpenAPI document
(`shared/openapi.py`).
"""
from __future__ import annotations

import json
from enum import Enum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic.alias_generators import to_camel

from fleet import listing
from fleet.budget_rules import Window
from fleet.jobs import PRODUCT_ID, Kind
from fleet.principals import FACTORY_ID, PRINCIPAL_NAME, Role
from fleet.scoring import WeightsPatch
from fleet.stages import Priority, Stage

# Patterns are anchored ^...$ for the OpenAPI document (JSON Schema's ECMA-262 patterns) and for
# pydantic, whose Rust engine reads `$` as the end of the text: "hp\n" fails here, unlike with
# Python's re.match (tests/e2e/test_strict_input.py holds that). Never hand them to `re.match`.
ProductId = Annotated[str, StringConstraints(pattern=PRODUCT_ID)]
Key = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
#: A lease id (the coordinator hands out 32 hex digits; the pattern is what requests have always been held to).
LeaseId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]*$")]
#: A factory's id is its document's id too, and Cosmos DB takes no `/` in one (nor could a
#: route's `{id}` hold it).
FactoryId = Annotated[str, StringConstraints(pattern=FACTORY_ID)]
#: A principal's name, as tokens and Easy Auth give it ("Ann Smith", "bootstrap admin"): how a
#: reviewer or an actor is named.
PrincipalName = Annotated[str, StringConstraints(pattern=PRINCIPAL_NAME)]
Capability = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:+-]*$")]
#: Free text holds no control characters but tab, newline and carriage return: a NUL or an
#: escape sequence has no place in a title, a body or a comment, and a page showing one breaks.
PLAIN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
Text = Annotated[str, StringConstraints(max_length=500, pattern=PLAIN)]
#: An artifact's URL or path: one line of text.
Link = Annotated[str, StringConstraints(max_length=2000, pattern=r"^[^\x00-\x1f\x7f]*$")]
#: `owner/name`, or an https/ssh/git clone URL.
Repo = Annotated[
    str,
    StringConstraints(
        max_length=300,
        pattern=r"^([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+|https://[^\s@]+|git@[A-Za-z0-9_.-]+:[^\s]+|ssh://[^\s]+|file://[^\s]+)$",
    ),
]


def _git_ref(name: str) -> str:
    if ".." in name or name.endswith(("/", ".lock", ".")) or "//" in name:
        raise ValueError("not a valid git branch name")
    return name


Branch = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$"),
    AfterValidator(_git_ref),
]
#: USD. A negative zero (`-0.0`, which `ge=0` lets through) is kept as 0, as it means 0.
Money = Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False), AfterValidator(lambda usd: usd + 0.0)]


class Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


def _bounded(limit: int):
    """A validator refusing a free-form value whose JSON is longer than `limit` bytes."""

    def check(value: Any) -> Any:
        if len(json.dumps(value, default=str)) > limit:
            raise ValueError(f"larger than {limit} bytes of JSON")
        return value

    return check


class Insights(BaseModel):
    """What a factory reports about a run: cost and tokens, plus anything else it measures
    (at most 16 KiB of JSON in all)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    costUsd: Money | None = None
    tokensIn: Annotated[int, Field(ge=0)] | None = None
    tokensOut: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _small(self) -> "Insights":
        _bounded(16 * 1024)(self.model_dump())
        return self


class ChildSpec(Body):
    idempotency_key: Key
    title: Text = ""
    body_md: Annotated[str, StringConstraints(max_length=65536, pattern=PLAIN)] = ""
    priority: Priority | None = None
    capabilities: Annotated[list[Capability], Field(max_length=32)] = []
    deps: Annotated[list[Key], Field(max_length=100)] = []
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    repo: Repo | None = None
    base_branch: Branch | None = None
    estimated_cost_usd: Money | None = None


class JobSpec(ChildSpec):
    """`POST /fleet/jobs`."""

    product_id: ProductId
    kind: Kind = Kind.TASK
    children: Annotated[list[ChildSpec], Field(max_length=200)] = []

    @field_validator("deps")
    @classmethod
    def _unique_deps(cls, deps: list[str]) -> list[str]:
        return list(dict.fromkeys(deps))


class ChildrenSpec(Body):
    """`POST /fleet/jobs/{id}/children`."""

    children: Annotated[list[ChildSpec], Field(min_length=1, max_length=200)]


class ClaimBody(Body):
    """`POST /fleet/claim` and `POST /fleet/jobs/{id}/claim`."""

    factory_id: FactoryId
    product_id: ProductId | None = None
    capabilities: Annotated[list[Capability], Field(max_length=64)] | None = None
    weights: WeightsPatch | None = None
    seat_limit: Annotated[int, Field(ge=0, le=10000)] | None = None


class PatchBody(Body):
    """`PATCH /fleet/jobs/{id}`: a lease holder moves its job."""

    lease_id: LeaseId
    stage: Stage
    note: Annotated[str, StringConstraints(max_length=4000, pattern=PLAIN)] | None = None
    insights: Insights | None = None


class Artifact(BaseModel):
    """Something a run produced: a name and a URL, plus anything else (at most 4 KiB)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: Text | None = None
    url: Link | None = None

    @model_validator(mode="after")
    def _small(self) -> "Artifact":
        _bounded(4 * 1024)(self.model_dump())
        return self


class ReleaseResult(str, Enum):
    """What a lease holder reports as it releases its job (`stage` may name the same end, or
    `testing` to park the job for review)."""

    SHIPPED = "shipped"  # the work shipped: the job is shipped
    DONE = "done"  # finished with nothing to ship: the job is done
    FAILED = "failed"  # the factory gives up on the job: it fails
    RETRY = "retry"  # the run failed: back to the queue with one attempt more (dead-letter past maxAttempts)
    RELEASED = "released"  # given back unfinished: back to the queue with its checkpoint, attempts unchanged


PrUrl = Annotated[str, StringConstraints(max_length=2000, pattern=r"^https?://[^\s\x00-\x1f\x7f]+$")]
Artifacts = Annotated[list[Artifact | Link], Field(max_length=100)]


class ReleaseBody(Body):
    """`POST /fleet/jobs/{id}/lease/release`."""

    lease_id: LeaseId
    stage: Stage | None = None
    result: ReleaseResult | None = None
    insights: Insights | None = None
    pr_url: PrUrl | None = None
    branch: Branch | None = None
    artifacts: Artifacts = []
    #: Where to resume from: free-form JSON, at most 64 KiB.
    checkpoint: Annotated[Any, AfterValidator(_bounded(64 * 1024))] = None


class ReportBody(Body):
    """`POST /fleet/jobs/{id}/lease/report`: what a run did, reported by the lease it ran under
    after that lease was taken from it (preempted, expired, given back by an operator)."""

    lease_id: LeaseId
    insights: Insights | None = None
    pr_url: PrUrl | None = None
    branch: Branch | None = None
    artifacts: Artifacts = []

    @model_validator(mode="after")
    def _says_something(self) -> "ReportBody":
        if not (self.insights and self.insights.model_dump(exclude_none=True)) and not (
            self.pr_url or self.branch or self.artifacts
        ):
            raise ValueError("a report names insights, prUrl, branch or artifacts")
        return self


class PauseBody(Body):
    """`POST /fleet/budgets/{productId}/pause` (optional): why, shown with the pause."""

    reason: Text | None = None


class ActionBody(Body):
    """`POST /fleet/jobs/{id}/actions/{action}`."""

    reason: Text | None = None
    actor: PrincipalName | None = None


class RunningLease(Body):
    job_id: Annotated[str, StringConstraints(max_length=200)]
    lease_id: LeaseId


class HeartbeatBody(Body):
    """`POST /fleet/factories/{id}/heartbeat`."""

    products: Annotated[list[ProductId], Field(max_length=100)] = []
    capabilities: Annotated[list[Capability], Field(max_length=64)] = []
    seat_limit: Annotated[int, Field(ge=0, le=10000)] | None = None
    running: Annotated[list[RunningLease], Field(max_length=1000)] = []


class WeightsBody(WeightsPatch):
    """`PUT /fleet/weights/{productId}`: the fields to set; the rest keep their values; a
    field sent as null goes back to its default."""


def _kept_if_left_out(description: str) -> Any:
    """A body field that may be left out (it is None then: what it sets is kept) but not sent
    as null: its schema shows no null default."""
    return Field(description=description, json_schema_extra=lambda schema: schema.pop("default", None))


class BudgetBody(Body):
    """`PUT /fleet/budgets/{productId}`."""

    #: Left out, the budget keeps its ceiling (a budget without one must name it).
    ceiling_usd: Annotated[
        Money, _kept_if_left_out("USD per window. Left out, the budget keeps its ceiling; a budget without one must name it.")
    ] = None  # type: ignore[assignment]  # left out: None (a default is not validated); null is refused
    #: Left out, the budget keeps its window (a new budget's is monthly).
    window: Annotated[
        Window, _kept_if_left_out("Left out, the budget keeps its window; a new budget's is monthly.")
    ] = None  # type: ignore[assignment]  # left out: None (a default is not validated); null is refused
    #: What a claim reserves for a job with no `estimatedCostUsd` of its own; null: nothing.
    #: Left out, the budget keeps the default estimate it has. At most the ceiling.
    default_estimate_usd: Annotated[
        Money | None,
        Field(
            description="USD a claim reserves for a job with no estimatedCostUsd of its own (at most the "
            "ceiling); null: nothing. Left out, the budget keeps the default estimate it has."
        ),
    ] = None


class ReviewRequestBody(Body):
    """`POST /fleet/jobs/{id}/review/request`."""

    required: Annotated[int, Field(ge=1, le=20)] = 1
    reviewers: Annotated[list[PrincipalName], Field(min_length=1, max_length=50)] | None = None
    actor: PrincipalName | None = None


class Decision(str, Enum):
    """A reviewer's verdict on a job under review."""

    APPROVE = "approve"  # counts toward the quorum; reaching it ships the job
    REJECT = "reject"  # sends the job back to the queue for rework


class ReviewBody(Body):
    """`POST /fleet/jobs/{id}/review`."""

    #: Who decides: the principal's name (omit it); naming anyone else is refused. Required
    #: only when auth is off.
    reviewer: PrincipalName | None = None
    decision: Decision
    comment: Annotated[str, StringConstraints(max_length=4000, pattern=PLAIN)] | None = None


class TokenBody(Body):
    """`POST /fleet/tokens`: the token to mint (shown once, in the answer)."""

    role: Role
    #: The products it is limited to; omitted: every product.
    products: Annotated[list[ProductId], Field(min_length=1, max_length=100)] | None = None
    #: The factory a `factory` token speaks for (required for that role, refused for others).
    factory_id: FactoryId | None = None
    name: PrincipalName | None = None
    #: Seconds until it expires; omitted: never.
    expires_in_seconds: Annotated[int, Field(ge=1, le=10 * 365 * 86400)] | None = None


class Query(BaseModel):
    """A query string: documented from these models; the triggers read each parameter."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class JobsQuery(Query):
    """`GET /fleet/jobs`: page by `offset`, or follow `continuation` (then `offset` is ignored)."""

    stage: Stage | None = None
    product_id: ProductId | None = None
    limit: Annotated[int, Field(ge=1, le=listing.MAX_LIMIT)] = 50
    offset: Annotated[int, Field(ge=0, le=listing.MAX_OFFSET)] = 0
    continuation: str | None = None


class QueueStateQuery(Query):
    """`GET /fleet/queue-state`."""

    product_id: ProductId
