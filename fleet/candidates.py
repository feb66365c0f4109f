"""Claim candidates in exact score order, reading only as much of the queue as it takes.

A *stream* reads queued jobs page by page in an order that bounds the score of every job it
has not read yet. `ranked` merges streams: it yields the best job read so far as soon as no
unread job of any stream could beat it, and otherwise reads another page from the stream whose
bound is highest. So the first candidate is exactly what a full scan would pick, every later one
is the true next best (what a claim falls through to after losing a race), and the cost depends
on the page size, not on the depth of the queue.

Eligibility is filtered after a read, so a stream over the whole queue would page through every
job the factory cannot do. A stream that names its *narrowed* streams is read for one page only:
if that does not settle the claim, it is replaced by one stream per capability set the factory
can do (`capKey = key`, read in the same order), which together hold every job it could still
yield, and whose bound is exact (every job of a set gets the same capability bonus).

Candidates compare by key `(-score, createdAtMs, id)`: higher score first, then older, then id.

Streams read *heads*, not jobs: projected rows of the few fields the score and the bounds need
(`HEAD_FIELDS`, about 0.2 KB a row where the whole document is 5 KB or more), decoded without
validating whole jobs. What a claim takes it then reads whole, by id (see `claims`).
"""
from __future__ import annotations

import dataclasses
import heapq
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterator

from fleet import clock, scoring, store
from fleet.jobs import CAP_KEY, Job, cap_set
from fleet.stages import Priority, Stage

#: What a stream reads of each queued job (with `id`, always sent): the score's terms, the
#: rank key its bound is made of, and the ETag the pick is taken on only if it still holds.
HEAD_FIELDS = (
    "productId", "_etag", "priority", "attempts", "createdAt", "rankKey", "capabilities", "leaseEpoch", "estimatedCostUsd",
    "retryAt",
)

#: Slack for float rounding between `rankKey + w.age*now` and the score computed from fields:
#: absolute, plus relative to the magnitudes that cancel (a few ulps, generously).
EPSILON = 1e-6
RELATIVE_EPSILON = 1e-14
#: The key of "nothing unread can be better": the stream is exhausted.
EXHAUSTED = (math.inf,)
#: The key of "an unread job could be anything": the stream has not been read yet.
UNREAD = (-math.inf,)


@dataclass(frozen=True)
class Head:
    """A queued job as a stream read it: what ranks it, and the ETag it was read with (a
    claim that finds the job changed since treats it as a race lost)."""

    id: str
    product_id: str
    etag: str | None
    priority: Priority
    attempts: int
    created_at: datetime
    rank_key: float
    capabilities: tuple[str, ...]
    #: What a claim takes the job by without reading it whole: its lease's epoch, its estimate.
    lease_epoch: int = 0
    estimated_cost_usd: float | None = None
    #: Set while the job waits to retry: no claim may take it (`Job.waiting`).
    retry_at: datetime | None = None

    @classmethod
    def from_row(cls, row: dict) -> "Head":
        """A projected row, absent fields as a job's defaults (a projection leaves out what is
        absent or null)."""
        return cls(
            row["id"],
            row["productId"],
            row.get("_etag"),
            Priority(row.get("priority") or Priority.NORMAL.value),
            row.get("attempts") or 0,
            clock.parse(row["createdAt"]),
            row.get("rankKey") or 0.0,
            tuple(row.get("capabilities") or ()),
            row.get("leaseEpoch") or 0,
            row.get("estimatedCostUsd"),
            clock.parse(row["retryAt"]) if row.get("retryAt") else None,
        )

    @classmethod
    def of(cls, job: Job) -> "Head":
        return cls(
            job.id, job.product_id, job.etag, job.priority, job.attempts, job.created_at, job.rank_key,
            tuple(job.capabilities), job.lease_epoch, job.estimated_cost_usd, job.retry_at,
        )


@dataclass(order=True)
class Candidate:
    key: tuple
    head: Head = field(compare=False)
    score: float = field(compare=False)


@dataclass
class Stream:
    """Pages of one query plus the bound on what it has not returned yet."""

    query: store.Query
    #: Given the last job read, the best key any unread job of this stream could have.
    bound_after: Callable[[Head], tuple]
    bound: tuple = UNREAD
    continuation: str | None = None
    #: The streams that hold every eligible job of this one, one per capability set the
    #: factory can do, to read instead of a second page; None (from it too) when unknown.
    narrowed: Callable[[], list["Stream"] | None] | None = None
    #: The size of every page after the first (None: the query's limit).
    page_after: int | None = None
    #: The last head it read (None before its first page).
    last: Head | None = None

    def read(self, source: store.Store) -> list[Head]:
        query = self.query
        if self.continuation is not None and self.page_after is not None:
            query = dataclasses.replace(query, limit=self.page_after)
        page = source.query(query, self.continuation)
        heads = [Head.from_row(row) for row in page.items]
        self.continuation = page.continuation
        self.last = heads[-1] if heads else self.last
        if not page.continuation or not heads:
            self.bound = EXHAUSTED
        else:
            self.bound = self.bound_after(heads[-1])
        return heads


#: Scores a head for a claim; None if the claim may not take it.
Score = Callable[[Head], "Candidate | None"]


def ranked(source: store.Store, streams: list[Stream], score: Score) -> Iterator[Candidate]:
    """Every eligible job of `streams` in candidate order (see the module docstring)."""
    streams = list(streams)
    heap: list[Candidate] = []
    seen: set[str] = set()
    while True:
        top = min((s.bound for s in streams), default=EXHAUSTED)
        if heap and heap[0].key <= top:
            yield heapq.heappop(heap)
            continue
        if top == EXHAUSTED:
            return
        stream = min(streams, key=lambda s: s.bound)
        if stream.continuation is not None and stream.narrowed is not None:
            narrowed, stream.narrowed = stream.narrowed(), None
            if narrowed is not None:
                # What it already yielded or holds in the heap is in `seen`: read once only.
                # Each narrowed stream reads the same order over one set, so what of its set
                # is unread lies past `stream.last`: bounded from there with its set's exact
                # bonus, it need not be read at all if that settles the claim.
                if stream.last is not None:
                    for one in narrowed:
                        one.bound = one.bound_after(stream.last)
                streams = [s for s in streams if s is not stream] + narrowed
                continue
        for head in stream.read(source):
            if head.id in seen:
                continue
            seen.add(head.id)
            candidate = score(head)
            if candidate is not None:
                heapq.heappush(heap, candidate)


def scorer(now: datetime, weights: scoring.Weights, offered: frozenset[str]) -> Score:
    """Scores a queued job's head for a factory offering `offered`; None if it lacks a
    required capability, or waits to retry."""

    def score(head: Head) -> Candidate | None:
        if head.retry_at is not None or not offered.issuperset(head.capabilities):
            return None
        bonus = scoring.capability_bonus(head.capabilities, offered)
        value = scoring.score(head.priority.order, head.attempts, head.created_at, bonus, now, weights)
        return Candidate((-value, _ms(head.created_at), head.id), head, value)

    return score


#: `claimable()`: the capability sets (`jobs.cap_key`s) of the product's queue a factory can
#: do, or None when that is not known; called at most once per stream, when it would page on.
Claimable = Callable[[], "list[str] | None"]


def rank_stream(
    product_id: str,
    now: datetime,
    weights: scoring.Weights,
    offered: frozenset[str],
    page: int,
    claimable: Claimable | None = None,
    page_after: int | None = None,
) -> Stream:
    """Queued jobs by stored rank key: the fast path, valid while the rank keys were computed
    with weights that order like `weights`. With `claimable`, narrowed after one page.
    `page_after`: the size of every later page, of this stream's and of the narrowed ones (a
    short first page settles an ordinary claim, and a narrowed stream's, every job of which
    the factory can do; what they do not settle, a claim that lost races, reads on in longer
    ones)."""
    stream = _rank_stream(product_id, now, weights, page, max(0.0, weights.capabilities) * len(offered))
    stream.page_after = page_after

    def narrowed(key: str) -> Stream:
        one = _rank_stream(product_id, now, weights, page, weights.capabilities * len(cap_set(key)), key)
        one.page_after = page_after
        return one

    if claimable is not None:
        stream.narrowed = _narrowing(claimable, narrowed)
    return stream


def _narrowing(claimable: Claimable, stream_of: Callable[[str], Stream]) -> Callable[[], list[Stream] | None]:
    def narrowed() -> list[Stream] | None:
        keys = claimable()
        return None if keys is None else [stream_of(key) for key in keys]

    return narrowed


def _rank_stream(
    product_id: str, now: datetime, weights: scoring.Weights, page: int, slack: float, key: str | None = None
) -> Stream:
    """The rank-key stream of every queued job, or (`key`) of one capability set's; `slack`
    bounds the capability bonus of the jobs it has not read."""
    now_term = weights.age * clock.minutes(now)

    def bound_after(last: Head) -> tuple:
        # An unread job scores at most this; on a tie it might be older, so page on (-inf).
        noise = EPSILON + RELATIVE_EPSILON * (abs(now_term) + abs(last.rank_key))
        return (-(now_term + last.rank_key + slack + noise), -math.inf)

    order = (("rankKey", True), ("createdAt", False))
    return Stream(store.Query("jobs", product_id, _queued(key), order, page, HEAD_FIELDS), bound_after)


def _queued(key: str | None) -> tuple[store.Filter, ...]:
    """Queued jobs, or (`key`) those of one capability set."""
    queued = (store.Filter("stage", "=", Stage.QUEUED.value),)
    return queued if key is None else (*queued, store.Filter(CAP_KEY, "=", key))


def bucket_streams(
    product_id: str,
    now: datetime,
    weights: scoring.Weights,
    offered: frozenset[str],
    page: int,
    max_attempts: int,
    priorities: tuple[Priority, ...] = tuple(Priority),
    claimable: Claimable | None = None,
) -> list[Stream]:
    """One stream per (priority, attempts) bucket, oldest first (newest first when the age
    weight is negative): within a bucket only age and the capability bonus differ, so the
    head of each bucket bounds the rest without any rank key. With `claimable`, each bucket is
    narrowed after one page."""
    best_bonus = len(offered) if weights.capabilities > 0 else 0
    streams = []
    for priority in priorities:
        for attempts in range(max_attempts):
            stream = _bucket_stream(product_id, now, weights, page, priority, attempts, best_bonus)
            if claimable is not None:
                stream.narrowed = _narrowing(
                    claimable,
                    lambda key, p=priority, a=attempts: _bucket_stream(
                        product_id, now, weights, page, p, a, len(cap_set(key)), key
                    ),
                )
            streams.append(stream)
    return streams


def _bucket_stream(
    product_id: str,
    now: datetime,
    weights: scoring.Weights,
    page: int,
    priority: Priority,
    attempts: int,
    best_bonus: int,
    key: str | None = None,
) -> Stream:
    """One bucket's queued jobs, or (`key`) those of one capability set; `best_bonus` bounds
    the capability bonus of the jobs it has not read."""
    oldest_first = weights.age >= 0

    def bound_after(last: Head) -> tuple:
        ceiling = scoring.score(priority.order, attempts, last.created_at, best_bonus, now, weights)
        # Oldest first: unread jobs are younger, so they lose a tie to `last`'s key.
        return (-ceiling, _ms(last.created_at), last.id) if oldest_first else (-ceiling, -math.inf)

    where = (*_queued(key), store.Filter("priority", "=", priority.value), store.Filter("attempts", "=", attempts))
    # Newest first ties on `id` descending too: the oldest-first order read backwards, so one
    # index serves both (a tie's order within the stream changes nothing: its bound is -inf).
    order = (("createdAt", False),) if oldest_first else (("createdAt", True), ("id", True))
    return Stream(store.Query("jobs", product_id, where, order, page, HEAD_FIELDS), bound_after)


def full_scan(jobs: list[Job], score: Score) -> list[Candidate]:
    """Reference order: every eligible job, sorted. What `ranked` must agree with."""
    heads = (Head.of(job) for job in jobs if job.stage == Stage.QUEUED)
    return sorted(c for c in map(score, heads) if c is not None)


def _ms(at: datetime) -> float:
    return at.timestamp() * 1000.0


