"""Writing a job document: the only code that does.

A write decides purely and writes once: `decide(job, facts, now) -> Job | None` gets the job
and the facts its caller read beforehand (weights, a budget, the outage record, the stages of
deps: whatever the decision needs beyond the job), and returns the changed job or None for
"nothing to change"; the result is written with `If-Match` on the ETag the job was read with.
On a lost race the job is read again and decided again on the same facts, so a retry reads
nothing but the job. Domain errors raised by `decide` propagate with nothing written.

The write sends the difference, not the document: the top-level fields the decision changed,
as one `store.patch` (`store.diff`: a grown `events` or `runs` is an append, not the whole
array), or the whole document when the difference does not fit one patch. The answer is the
decided document with the new ETag.

Each process remembers the job documents it last wrote or read (`Recent`, bounded, one per
store), and a write may decide on its memory of the job instead of reading it first (`recall`,
then `change(..., recalled=True)`). A memory is never an answer to a read, and never trusted
for a decision: the write is conditional on the remembered ETag, so a stale memory loses the
race and writes nothing; and a refusal, or a decision that nothing is to change, made on a
memory is not answered but raised as `Stale`, and the caller reads the job and decides again.
A lost race or a missing job forgets the memory.

What follows a write on other documents (queue-state, spend, dependents, re-keying) is
`effects`'s: a use case changes a job with `effects.change`, which writes here and then
settles. The writes that are themselves follow-ups (an accrual mark, a re-key) write here
directly: nothing follows them.

Job documents are the `jobs` container's documents whose id is a job id (`{productId}:{h}`);
the container's reserved documents (`queue-state`, `weights`, the `_fleet` sweep record) are
written by their own modules.
"""
from __future__ import annotations

import json
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Optional

from fleet import errors, store
from fleet.context import Context
from fleet.jobs import Job, product_of
from fleet.stages import Stage

#: The largest a job document may grow (Cosmos DB refuses items over 2 MB; keep well clear).
MAX_JOB_BYTES = 1_500_000

#: How many job documents a process remembers per store (`Recent`), and how many bytes of
#: their JSON at most (a few times that in memory).
RECENT_JOBS = 4096
RECENT_JOB_BYTES = 16 * 1024 * 1024

#: `decide(job, facts, now)`: the changed job, or None for "nothing to change". Pure.
Decide = Callable[[Job, Any, datetime], Optional[Job]]


@dataclass(frozen=True)
class Written:
    """What one job write did, and what followed it."""

    #: The job as it stands afterwards (after its follow-ups, when they ran).
    job: Job
    #: The job the winning decision was made on; None for a create.
    before: Job | None
    #: Whether anything was written (False: the decision found nothing to change).
    wrote: bool
    #: The follow-ups that ran after the write, in order (`effects.FollowUp` members).
    followed: tuple[Any, ...] = ()

    def entered(self, stage: Stage) -> bool:
        """Whether this write moved the job into `stage` (from another stage). A job waiting to
        retry enters `queued` when it may be claimed: when its wait ends, not when it starts."""

        def there(job: Job | None) -> bool:
            return job is not None and job.stage == stage and not job.waiting  # waiting: queued only

        return self.wrote and there(self.job) and not there(self.before)


class Stale(Exception):
    """A write decided on a remembered job (`recall`) that cannot be trusted: the decision
    refused, found nothing to change, or lost the race. Nothing was written; read the job and
    decide again. (No `FleetError`: it is never an answer, and no handler of those may take it
    for one.)"""


class _Decided(errors.NotFound):
    """A `NotFound` the decision raised (no such run, review, ...): its message says what is
    missing, and is answered as it is, not as the job's own absence."""


class Recent:
    """The job documents one process last wrote or read, with their ETags: at most `bound` of
    them and `budget` bytes of their JSON, the least recently used dropped first (a document
    larger than a sixteenth of the budget is not kept at all), so memory stays flat however
    large jobs grow. Thread-safe. Documents are kept as handed over and handed out as kept:
    nobody mutates them."""

    def __init__(self, bound: int, budget: int) -> None:
        self.bound, self.budget = bound, budget
        self._docs: OrderedDict[tuple[str, str], tuple[dict[str, Any], int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, product_id: str, id: str) -> dict[str, Any] | None:
        with self._lock:
            kept = self._docs.get((product_id, id))
            if kept is None:
                return None
            self._docs.move_to_end((product_id, id))
            return kept[0]

    def put(self, doc: dict[str, Any]) -> None:
        key = (doc["productId"], doc["id"])
        size = len(json.dumps(doc, separators=(",", ":"), default=str))
        with self._lock:
            self._drop(key)
            if size > self.budget // 16:
                return
            self._docs[key] = (doc, size)
            self._bytes += size
            while len(self._docs) > self.bound or self._bytes > self.budget:
                self._drop(next(iter(self._docs)))

    def forget(self, product_id: str, id: str) -> None:
        with self._lock:
            self._drop((product_id, id))

    def _drop(self, key: tuple[str, str]) -> None:
        kept = self._docs.pop(key, None)
        if kept is not None:
            self._bytes -= kept[1]

    def __len__(self) -> int:
        return len(self._docs)

    @property
    def bytes(self) -> int:
        """The JSON bytes of the documents kept."""
        return self._bytes


#: store object's id -> its `Recent`, dropped when the store is collected (so a store created
#: later at the same address starts with none).
_RECENT: dict[int, Recent] = {}
_RECENT_LOCK = threading.Lock()


def recent(ctx: Context) -> Recent:
    """The job documents this process remembers of `ctx.store`."""
    key = id(ctx.store)
    memory = _RECENT.get(key)
    if memory is not None:
        return memory
    with _RECENT_LOCK:
        if key not in _RECENT:
            _RECENT[key] = Recent(RECENT_JOBS, RECENT_JOB_BYTES)
            weakref.finalize(ctx.store, _RECENT.pop, key, None)
        return _RECENT[key]


def read(ctx: Context, id: str) -> Job:
    """The job `id` as stored, with its ETag: what a use case reads its facts from before it
    writes (pass it on as `current`, so the write does not read it again)."""
    product_id = _reached(ctx, id)
    memory = recent(ctx)
    try:
        doc = ctx.store.read("jobs", product_id, id)
    except errors.NotFound:
        memory.forget(product_id, id)
        raise errors.NotFound(f"no job {id!r}") from None
    memory.put(doc)
    return Job.from_doc(doc)


def recall(ctx: Context, id: str) -> Job | None:
    """The job `id` as this process last wrote or read it, with that ETag, or None if it is
    not remembered: only to decide a write on first, with `change(..., recalled=True)`, never
    to answer a read (another process may have written it since)."""
    product_id = _reached(ctx, id)
    doc = recent(ctx).get(product_id, id)
    return Job.from_doc(doc) if doc is not None else None


def change(
    ctx: Context,
    id: str,
    decide: Decide,
    facts: Any = None,
    *,
    current: Job | None = None,
    now: datetime | None = None,
    retry: bool = True,
    request: bool = True,
    recalled: bool = False,
) -> Written:
    """Apply `decide(job, facts, now)` to the job `id` with one conditional write.

    `current`: the job as the caller read it (with its ETag), decided on first instead of
    reading it again. `now`: the time the caller gathered its facts at (default: the clock's
    now). `retry=False` makes one attempt only: a lost race raises `PreconditionFailed` (a
    claim moves on to its next candidate instead). `request`: the write records what a request
    brought (a note, insights, a checkpoint, a comment), so it is stamped `updatedAt = now`
    and refused with `TooLarge` past `MAX_JOB_BYTES`; the fleet's own writes (claims, renewals,
    expiry, unblocking, accrual marks, re-keys) pass False: they are written exactly as
    decided (their decisions stamp `updatedAt` where it means something) and are never
    refused for size, which would strand the job. `recalled`: `current` is this process's
    memory of the job (`recall`): one attempt, and a decision on it that refuses (a domain
    error), finds nothing to change, or loses the race raises `Stale` with nothing written.
    """
    product_id = _reached(ctx, id)
    at = now or ctx.clock.now()

    def step(doc: dict[str, Any]) -> dict[str, Any] | None:
        try:
            new = decide(Job.from_doc(doc), facts, at)
        except errors.NotFound as exc:
            raise exc if isinstance(exc, _Decided) else _Decided(exc.detail, **exc.extra) from None
        if new is None:
            return None
        new = new.ringed()
        if not request:
            return new.to_doc()
        return _bounded(id, new.model_copy(update={"updated_at": at}).to_doc())

    memory = recent(ctx)
    first, stored = _doc_of(memory, current)
    if (recalled or not retry) and current is not None and first is None:
        raise errors.PreconditionFailed(f"job {id} was handed over without the ETag it was read with")
    try:
        if recalled:
            swapped = _trial(ctx, id, step, first, stored)
        elif retry:
            swapped = store.swap(
                ctx.store, "jobs", product_id, id, step, current=first, sleep=ctx.clock.sleep, patch=stored
            )
        else:
            swapped = _once(ctx, id, step, first, stored)
    except (errors.NotFound, errors.PreconditionFailed, errors.TooManyRetries) as exc:
        memory.forget(product_id, id)
        if isinstance(exc, errors.NotFound) and not isinstance(exc, _Decided):
            raise errors.NotFound(f"no job {id!r}") from None
        raise
    if swapped.wrote or swapped.doc is not first:  # a document as stored, not as handed over
        memory.put(swapped.doc)
    before = Job.from_doc(swapped.before) if swapped.before is not None else None
    return Written(Job.from_doc(swapped.doc), before, swapped.wrote)


def create(ctx: Context, job: Job) -> Written:
    """Create the job document; raises `Conflict` if its id exists (a repeated submit)."""
    doc = ctx.store.create("jobs", job.to_doc())
    recent(ctx).put(doc)
    return Written(Job.from_doc(doc), None, True)


def unread(
    ctx: Context, id: str, etag: str, seen: Job, decided: Job, fields: tuple[str, ...], appended: tuple[str, ...]
) -> Written:
    """Write the job `id` without reading it: `seen` is the job as a projected read of it
    showed it (with `etag`, that read's ETag), `decided` its change, which touches only
    `fields` (set) and grows each array of `appended` by one element at its end. One patch,
    conditional on `etag`, and the store answers the job as it stands afterwards; `before`
    is that job with the written fields as they were. `PreconditionFailed` if it changed since
    that read, `NotFound` if it is gone.

    For a decision that needs no more of the job than the projection showed (a claim's). The
    rings of `appended` are not trimmed by it: a job's events or runs may stand one over their
    ring until its next write, which is decided on the whole job and trims them (`change`,
    `Job.ringed`)."""
    product_id = _reached(ctx, id)
    doc, was = decided.to_doc(), seen.to_doc()
    ops = [store.Op("set", name, doc[name]) for name in fields]
    ops += [store.Op("append", name, doc[name][-1]) for name in appended]
    memory = recent(ctx)
    try:
        stored = ctx.store.patch("jobs", product_id, id, ops, etag, answer=True)
    except (errors.PreconditionFailed, errors.NotFound):
        memory.forget(product_id, id)
        raise
    memory.put(stored)
    before = {**stored, **{name: was[name] for name in fields}, **{name: stored[name][:-1] for name in appended}}
    return Written(Job.from_doc(stored), Job.from_doc(before), True)


def _once(ctx: Context, id: str, step, first: dict[str, Any] | None, stored: bool) -> store.Swapped:
    """One attempt of `store.swap`, a lost race raised as `PreconditionFailed`."""
    current = first if first is not None else ctx.store.read("jobs", product_of(id), id)
    new = step(current)
    if new is None:
        return store.Swapped(current, current, False)
    return store.Swapped(_write(ctx, current, new, stored or first is None), current, True)


def _trial(ctx: Context, id: str, step, remembered: dict[str, Any], stored: bool) -> store.Swapped:
    """One attempt decided on a remembered document, trusted only if it writes."""
    try:
        new = step(remembered)
    except errors.FleetError as exc:
        raise Stale(f"job {id}: a decision on a remembered copy refused ({exc.code})") from exc
    if new is None:
        raise Stale(f"job {id}: a decision on a remembered copy found nothing to change")
    try:
        return store.Swapped(_write(ctx, remembered, new, stored), remembered, True)
    except (errors.PreconditionFailed, errors.NotFound) as exc:
        recent(ctx).forget(product_of(id), id)
        raise Stale(f"job {id} changed since this process last wrote or read it") from exc


def _reached(ctx: Context, id: str) -> str:
    """The product of job `id`, which the principal may reach (`NotFound` otherwise: another
    product's job is as absent as a job never submitted, to a scoped principal)."""
    product_id = product_of(id)
    if product_id is None:
        raise errors.NotFound(f"no job {id!r}")
    ctx.principal.reach(product_id, f"no job {id!r}")
    return product_id


def _doc_of(memory: Recent, job: Job | None) -> tuple[dict[str, Any] | None, bool]:
    """The store document `job` was read as, for deciding on it first, and whether it is the
    document as stored: the one remembered when it is that version (True), else rebuilt from
    `job` (False); None (read it) when `job` carries no ETag."""
    if job is None or not job.etag:
        return None, True
    remembered = memory.get(job.product_id, job.id)
    if remembered is not None and remembered.get("_etag") == job.etag:
        return remembered, True
    return {**job.to_doc(), "_etag": job.etag}, False


def _write(ctx: Context, current: dict[str, Any], new: dict[str, Any], stored: bool) -> dict[str, Any]:
    """`new` written over `current` if it is still stored as read: as a patch of their
    difference when `current` is the document as stored, else whole. A document rebuilt from
    a `Job` is not always the one stored (one written before a field existed lacks it, where
    the rebuilt one has its default), and a patch applies only what differs from it, so what
    is stored would not be the document decided: a field the decision kept, say `capKey`,
    would stay missing."""
    if stored:
        return store.write(ctx.store, "jobs", current, new)
    return ctx.store.replace("jobs", new, current["_etag"])


def _bounded(id: str, doc: dict[str, Any]) -> dict[str, Any]:
    size = len(json.dumps(doc, separators=(",", ":")))
    if size > MAX_JOB_BYTES:
        raise errors.TooLarge(f"job {id} would grow to {size} bytes; at most {MAX_JOB_BYTES} are kept")
    return doc
