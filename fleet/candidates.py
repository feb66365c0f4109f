"""Claim candidates in exact score order, reading only as much of the queue as it takes.

A *stream* reads queued jobs page by page in an order that bounds the score of every job it
has not read yet. `ranked` merges streams: it yields the best job read so far as soon as no
unread job of any stream could beat it, and otherwise reads another page from the stream whose
bound is highest. So the first candidate is exactly what a full scan would pick, every later one
is the true next best (what a claim falls through to after losing a race), and the cost depends
on the page size and the capability mix, not on the depth of the queue.

Candidates compare by key `(-score, createdAtMs, id)`: higher score first, then older, then id.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterator

from fleet import clock, scoring, store
from fleet.jobs import Job
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


def rank_stream(
    product_id: str, now: datetime, weights: scoring.Weights, offered: frozenset[str], page: int
) -> Stream:
    """Queued jobs by stored rank key: the fast path, valid while the rank keys were computed
    with weights that order like `weights`."""
    slack = max(0.0, weights.capabilities) * len(offered)
    now_term = weights.age * clock.minutes(now)

    def bound_after(last: Job) -> tuple:
        # An unread job scores at most this; on a tie it might be older, so page on (-inf).
        noise = EPSILON + RELATIVE_EPSILON * (abs(now_term) + abs(last.rank_key))
        return (-(now_term + last.rank_key + slack + noise), -math.inf)

    query = store.Query(
        "jobs",
        product_id,
        (store.Filter("stage", "=", Stage.QUEUED.value),),
        (("rankKey", True), ("createdAt", False)),
        page,
    )
    return Stream(query, bound_after)


def bucket_streams(
    product_id: str,
    now: datetime,
    weights: scoring.Weights,
    offered: frozenset[str],
    page: int,
    max_attempts: int,
    priorities: tuple[Priority, ...] = tuple(Priority),
) -> list[Stream]:
    """One stream per (priority, attempts) bucket, oldest first (newest first when the age
    weight is negative): within a bucket only age and the capability bonus differ, so the
    head of each bucket bounds the rest without any rank key."""
    best_bonus = len(offered) if weights.capabilities > 0 else 0
    oldest_first = weights.age >= 0
    streams = []
    for priority in priorities:
        for attempts in range(max_attempts):

            def bound_after(last: Job, p: Priority = priority, a: int = attempts) -> tuple:
                ceiling = scoring.score(p.order, a, last.created_at, best_bonus, now, weights)
                # Oldest first: unread jobs are younger, so they lose a tie to `last`'s key.
                return (-ceiling, _ms(last.created_at), last.id) if oldest_first else (-ceiling, -math.inf)

            query = store.Query(
                "jobs",
                product_id,
                (
                    store.Filter("stage", "=", Stage.QUEUED.value),
                    store.Filter("priority", "=", priority.value),
                    store.Filter("attempts", "=", attempts),
                ),
                (("createdAt", not oldest_first),),
                page,
            )
            streams.append(Stream(query, bound_after))
    return streams


def full_scan(jobs: list[Job], score: Callable[[Job], Candidate | None]) -> list[Candidate]:
    """Reference order: every eligible job, sorted. What `ranked` must agree with."""
    return sorted(c for c in map(score, jobs) if c is not None)


def _ms(at: datetime) -> float:
    return at.timestamp() * 1000.0


