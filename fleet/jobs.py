"""The job document and its parts: lease, run, event.

Values are immutable pydantic models changed by copying (`job.model_copy(update=...)`);
they are converted to and from store documents only at the edge (`Job.from_doc`, `job.to_doc`).
Field names are snake_case in Python and camelCase in documents and on the wire.
"""
from __future__ import annotations

import base64
import hashlib
import re
from datetime import datetime
from enum import Enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, SerializationInfo, WithJsonSchema, field_serializer
from pydantic.alias_generators import to_camel

from fleet import clock
from fleet.stages import Priority, RunResult, Stage

#: A product id, anchored for JSON Schema and pydantic (whose `$` is the end of the text). In
#: Python, where `$` also matches before a final newline, test it with `is_product_id`.
PRODUCT_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_PRODUCT_RE = re.compile(PRODUCT_ID)
_HASH_RE = re.compile(r"[a-z2-7]{20}")
#: How many events a job keeps; older ones are only counted (`eventsDropped`).
EVENT_RING = 50
#: How many runs a job keeps in full; older ones are only counted (`runsDropped`).
RUN_RING = 20

#: A time: `2026-01-05T09:00:00.123Z` in documents and on the wire (see `clock.format`).
Time = Annotated[
    datetime, PlainSerializer(clock.format, return_type=str), WithJsonSchema({"type": "string", "format": "date-time"})
]


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True, extra="ignore")

    @classmethod
    def from_doc(cls, doc: dict[str, Any]):
        """From a store document (store-owned `_` fields are ignored)."""
        return cls.model_validate(doc)

    def to_doc(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class Kind(str, Enum):
    """What a job is."""

    TASK = "task"  # work a factory claims and does
    COMPOSITE = "composite"  # a parent that waits, blocked, until all its children ship


#: The serialization context key under which an answer names who reads it (`Lease.lease_id`).
READER = "reader"


class Lease(Model):
    #: A write capability: answered only to whoever `READER` says may see it
    #: (`Principal.sees_lease_of`), null to anyone else. Documents always keep it; a client
    #: reading an answer may find it null.
    lease_id: str | None
    factory_id: str
    #: Fencing token: grows with every new lease on the job, never reused.
    epoch: int
    #: The lease's own expiry: a term after its claim or its holder's last write that kept it.
    #: Its holder's heartbeats extend it on the factory's document instead (`fleet.liveness`).
    expires_at: Time
    #: The sweep extended it for an outage and its holder has not renewed it since (a heartbeat
    #: that did shows on the factory's document: `liveness.spared`): a later outage does not
    #: hold it again (see `fleet.outage`), so a dead holder's work is requeued.
    spared: bool = False

    @field_serializer("lease_id")
    def _shown_to_reader(self, lease_id: str | None, info: SerializationInfo) -> str | None:
        return _shown(lease_id, self.factory_id, info)


def _shown(lease_id: str | None, factory_id: str, info: SerializationInfo) -> str | None:
    """A lease id as the answer's reader may see it (no reader: a store document, all of it)."""
    reader = (info.context or {}).get(READER)
    return lease_id if reader is None or reader.sees_lease_of(factory_id) else None


class LeaseEnd(Model):
    """The write with which a lease holder ended its own lease (a release, or the autoship
    PATCH): enough to recognise that write when it is repeated because its answer was lost."""

    #: Answered only as `Lease.lease_id` is, null to anyone else (`Run.ended_by`); documents
    #: always keep it.
    lease_id: str | None
    #: `release` or `patch`.
    write: str
    #: Digest of the write's body (`leases.request_digest`): the same body has the same digest.
    digest: str


class LateReport(Model):
    """What a run's factory reported after its lease was taken from it (preempted, expired and
    requeued, or given back by an operator): once, by that lease (`leases.report`). Kept apart
    from what the holder reported while it held the lease, which it does not change."""

    at: Time
    insights: dict[str, Any] = Field(default_factory=dict)
    pr_url: str | None = None
    branch: str | None = None
    artifacts: list[Any] = Field(default_factory=list)
    #: Digest of the report's body (`leases.request_digest`): a repeat is answered, not refused.
    digest: str
    #: Whether its cost beyond the run's own (`Run.late_usd`) has been added to the budget.
    accrued: bool = False


class Run(Model):
    """One claim of a job by a factory."""

    run_id: str
    factory_id: str
    started_at: Time
    ended_at: Time | None = None
    result: RunResult | None = None
    insights: dict[str, Any] = Field(default_factory=dict)
    pr_url: str | None = None
    branch: str | None = None
    artifacts: list[Any] = Field(default_factory=list)
    #: Whether the run's cost has been added to its product's budget.
    accrued: bool = False
    #: The budget reservation its claim made for the job's estimated cost, if any: named by
    #: the lease id, so answered only as `Lease.lease_id` is.
    reservation: str | None = None
    #: The holder's own write that ended the run's lease, if one did (not an expiry, a
    #: preemption or an operator): a repeat of exactly that write is answered, not refused.
    ended_by: LeaseEnd | None = None
    #: The lease the run was held under, recorded as the run ends: what a report of the run
    #: after its lease was taken names (`late_report`). Answered only as `Lease.lease_id` is.
    lease_id: str | None = None
    #: What its factory reported once it had lost the lease, if it did.
    late_report: LateReport | None = None

    @field_serializer("reservation", "lease_id")
    def _reserved_for_reader(self, lease_id: str | None, info: SerializationInfo) -> str | None:
        return _shown(lease_id, self.factory_id, info)

    @field_serializer("ended_by")
    def _ended_by_for_reader(self, ended_by: LeaseEnd | None, info: SerializationInfo) -> LeaseEnd | None:
        if ended_by is None or _shown(ended_by.lease_id, self.factory_id, info) is not None:
            return ended_by
        return ended_by.model_copy(update={"lease_id": None})

    @property
    def cost_usd(self) -> float | None:
        """What the run cost: the larger of what its holder reported and what its lost lease
        reported later (each is a command's figure for the whole run), as accrued; None if
        neither said."""
        late = self.late_report.insights.get("costUsd") if self.late_report else None
        said = [float(usd) for usd in (self.insights.get("costUsd"), late) if usd is not None]
        return max(said) if said else None

    @property
    def pr_link(self) -> str | None:
        """The run's pull request: as its holder reported it, else as its late report did."""
        return self.pr_url or (self.late_report.pr_url if self.late_report else None)

    @property
    def late_usd(self) -> float:
        """What the late report adds to the cost its holder had reported: the budget's and
        the day's share of it, never negative."""
        if self.late_report is None:
            return 0.0
        late = float(self.late_report.insights.get("costUsd") or 0.0)
        return max(0.0, late - float(self.insights.get("costUsd") or 0.0))


class Event(Model):
    at: Time
    type: str
    actor: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class BlockedOn(Model):
    idempotency_key: str
    job_id: str
    stage: Stage | None  # None: no such job


class Job(Model):
    id: str
    product_id: str
    idempotency_key: str
    kind: Kind = Kind.TASK
    title: str = ""
    body_md: str = ""
    priority: Priority = Priority.NORMAL
    capabilities: list[str] = Field(default_factory=list)
    deps: list[str] = Field(default_factory=list)
    parent_id: str | None = None
    children: list[str] = Field(default_factory=list)
    stage: Stage = Stage.QUEUED
    blocked_on: list[BlockedOn] = Field(default_factory=list)
    attempts: int = 0
    max_attempts: int = 3
    #: A retried job waits, queued, until this time has passed and the sweep has moved it back
    #: to the claimable queue (`lifecycle.retried`, `sweep.due_retries`); None: it does not.
    retry_at: Time | None = None
    repo: str | None = None
    base_branch: str | None = None
    estimated_cost_usd: float | None = None
    lease: Lease | None = None
    #: The highest lease epoch ever issued for this job.
    lease_epoch: int = 0
    checkpoint: Any = None
    #: A run ended with a cost (or a reservation) not yet applied to the product's budget.
    accrual_pending: bool = False
    review: dict[str, Any] | None = None
    runs: list[Run] = Field(default_factory=list)
    runs_dropped: int = 0
    events: list[Event] = Field(default_factory=list)
    events_dropped: int = 0
    rank_key: float = 0.0
    #: Digest of the normalised submit fields, to tell a retry from a different job.
    submit_hash: str = ""
    created_at: Time
    updated_at: Time
    etag: str | None = Field(default=None, exclude=True)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> "Job":
        return cls.model_validate({**doc, "etag": doc.get("_etag")})

    def to_doc(self) -> dict[str, Any]:
        """The store document: the job's fields plus `capKey`, its capability set's key, which
        every job write stores so that claims can read one capability set's jobs at a time
        (`WAITING` while it waits to retry: no claim reads a set that holds it)."""
        return {**super().to_doc(), CAP_KEY: WAITING if self.waiting else cap_key(self.capabilities)}

    @property
    def waiting(self) -> bool:
        """Whether the job waits out a retry backoff: queued, but no claim may take it."""
        return self.retry_at is not None and self.stage == Stage.QUEUED

    @property
    def latest_run(self) -> Run | None:
        return self.runs[-1] if self.runs else None

    def with_event(self, at: datetime, type: str, actor: str | None = None, **detail: Any) -> "Job":
        events = [*self.events, Event(at=at, type=type, actor=actor, detail=detail)]
        dropped = max(0, len(events) - EVENT_RING)
        return self.model_copy(update={"events": events[dropped:], "events_dropped": self.events_dropped + dropped})

    def with_run(self, run: Run) -> "Job":
        runs = [*self.runs, run]
        dropped = max(0, len(runs) - RUN_RING)
        return self.model_copy(update={"runs": runs[dropped:], "runs_dropped": self.runs_dropped + dropped})

    def ringed(self) -> "Job":
        """The job with its rings at most full, what is cut from them counted: a claim taken by
        its head appends its run and event unread (`writes.unread`), so a ring may stand one
        over until the job's next write, which passes through here (`writes.change`)."""
        events, runs = self.events, self.runs
        if len(events) <= EVENT_RING and len(runs) <= RUN_RING:
            return self
        cut_events, cut_runs = max(0, len(events) - EVENT_RING), max(0, len(runs) - RUN_RING)
        return self.model_copy(
            update={
                "events": events[cut_events:],
                "events_dropped": self.events_dropped + cut_events,
                "runs": runs[cut_runs:],
                "runs_dropped": self.runs_dropped + cut_runs,
            }
        )

    def with_latest_run(self, **update: Any) -> "Job":
        """The job with its latest run changed; unchanged if it has none."""
        if not self.runs:
            return self
        return self.model_copy(update={"runs": [*self.runs[:-1], self.runs[-1].model_copy(update=update)]})

    def holds(self, lease_id: str, now: datetime) -> bool:
        """Whether `lease_id` is the job's current lease and its own expiry has not passed (it
        may live on by its factory's heartbeats: `liveness.holds` decides that)."""
        return self.lease is not None and self.lease.lease_id == lease_id and self.lease.expires_at > now


#: The job document field holding `cap_key(capabilities)` (documents only, never answered).
CAP_KEY = "capKey"
#: The `capKey` of a job waiting to retry: no capability set's key (a capability never holds
#: `~`), so the claims that read one set at a time never read it.
WAITING = "~waiting"


def cap_key(capabilities: list[str] | tuple[str, ...]) -> str:
    """A set of required capabilities as one canonical string: sorted, without repeats,
    comma-joined (a capability never holds a comma); `""` for none."""
    return ",".join(sorted(set(capabilities)))


def cap_set(key: str) -> frozenset[str]:
    """The capabilities a `cap_key` names."""
    return frozenset(key.split(",")) if key else frozenset()


def job_id(product_id: str, idempotency_key: str) -> str:
    """`{productId}:{h}`: h is the first 20 characters of the lowercase base32 SHA-256 of
    `productId + "\\n" + idempotencyKey`. The id names its partition, so every job call is a
    point read, and a retried submit converges on the same id."""
    digest = hashlib.sha256(f"{product_id}\n{idempotency_key}".encode()).digest()
    return f"{product_id}:{base64.b32encode(digest).decode().lower()[:20]}"


def is_product_id(value: str) -> bool:
    """Whether the whole of `value` is a product id (`"hp\n"` is not)."""
    return _PRODUCT_RE.fullmatch(value) is not None


def product_of(id: str) -> str | None:
    """The product a job id belongs to, or None if `id` is not a well-formed job id."""
    product, sep, h = id.partition(":")
    if sep and is_product_id(product) and _HASH_RE.fullmatch(h):
        return product
    return None
