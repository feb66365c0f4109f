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
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterator

from fleet import clock, scoring, store
from fleet.jobs import CAP_KEY, Job, cap_set
from fleet.stages import Priority, Stage

#: Slack for float rounding between `rankKey + w.age*now` and the score computed from fields:
#: absolute, plus relative to the magnitudes that cancel (a few ulps, generously).
EPSILON = 1e-6
RELATIVE_EPSILON = 1e-14
#: The key of "nothing unread can be better": the stream is exhausted.
EXHAUSTED = (math.inf,)
#: The key of "an unread job could be anything": the stream has not been read yet.
UNREAD = (-math.inf,)


@dataclass(order=True)
class Candidate:
    key: tuple
    job: Job = field(compare=False)
    score: float = field(compare=False)


@dataclass
class Stream:
    """Pages of one query plus the bound on what it has not returned yet."""

    query: store.Query
    #: Given the last job read, the best key any unread job of this stream could have.
    bound_after: Callable[[Job], tuple]
    bound: tuple = UNREAD
    continuation: str | None = None
    #: The streams that hold every eligible job of this one, one per capability set the
    #: factory can do, to read instead of a second page; None (from it too) when unknown.
    narrowed: Callable[[], list["Stream"] | None] | None = None

    def read(self, source: store.Store) -> list[Job]:
        page = source.query(self.query, self.continuation)
        jobs = [Job.from_doc(doc) for doc in page.items]
        self.continuation = page.continuation
        if not page.continuation or not jobs:
            self.bound = EXHAUSTED
        else:
            self.bound = self.bound_after(jobs[-1])
        return jobs


def ranked(source: store.Store, streams: list[Stream], score: Callable[[Job], Candidate | None]) -> Iterator[Candidate]:
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
                streams = [s for s in streams if s is not stream] + narrowed
                continue
        for job in stream.read(source):
            if job.id in seen:
                continue
            seen.add(job.id)
            candidate = score(job)
            if candidate is not None:
                heapq.heappush(heap, candidate)


def scorer(now: datetime, weights: scoring.Weights, offered: frozenset[str]) -> Callable[[Job], Candidate | None]:
    """Scores a job for a factory offering `offered`; None if it lacks a required capability."""

    def score(job: Job) -> Candidate | None:
        if job.stage != Stage.QUEUED or not offered.issuperset(job.capabilities):
            return None
        bonus = scoring.capability_bonus(job.capabilities, offered)
        value = scoring.score(job.priority.order, job.attempts, job.created_at, bonus, now, weights)
        return Candidate((-value, _ms(job.created_at), job.id), job, value)

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
) -> Stream:
    """Queued jobs by stored rank key: the fast path, valid while the rank keys were computed
    with weights that order like `weights`. With `claimable`, narrowed after one page."""
    stream = _rank_stream(product_id, now, weights, page, max(0.0, weights.capabilities) * len(offered))
    if claimable is not None:
        stream.narrowed = _narrowing(
            claimable,
            lambda key: _rank_stream(product_id, now, weights, page, weights.capabilities * len(cap_set(key)), key),
        )
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

    def bound_after(last: Job) -> tuple:
        # An unread job scores at most this; on a tie it might be older, so page on (-inf).
        noise = EPSILON + RELATIVE_EPSILON * (abs(now_term) + abs(last.rank_key))
        return (-(now_term + last.rank_key + slack + noise), -math.inf)

    query = store.Query("jobs", product_id, _queued(key), (("rankKey", True), ("createdAt", False)), page)
    return Stream(query, bound_after)


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

    def bound_after(last: Job) -> tuple:
        ceiling = scoring.score(priority.order, attempts, last.created_at, best_bonus, now, weights)
        # Oldest first: unread jobs are younger, so they lose a tie to `last`'s key.
        return (-ceiling, _ms(last.created_at), last.id) if oldest_first else (-ceiling, -math.inf)

    where = (*_queued(key), store.Filter("priority", "=", priority.value), store.Filter("attempts", "=", attempts))
    return Stream(store.Query("jobs", product_id, where, (("createdAt", not oldest_first),), page), bound_after)


def full_scan(jobs: list[Job], score: Callable[[Job], Candidate | None]) -> list[Candidate]:
    """Reference order: every eligible job, sorted. What `ranked` must agree with."""
    return sorted(c for c in map(score, jobs) if c is not None)


def _ms(at: datetime) -> float:
    return at.timestamp() * 1000.0


