"""Outage gaps: while the coordinator or its store could not be reached, factories could not
renew their leases, so a lease that expired in such a gap still counts as its holder's until
one lease term after the gap ended — whatever the lease length.

One small record in the reserved `_fleet` partition of `jobs` (id `sweep-state`, the name it
had when it only held the sweep's stamp) keeps:

- `lastAliveAt`: the last time a process knew the coordinator was serving. The sweep stamps it
  every minute; a process stamps it when it starts serving and when its store answers again.
- `lastSweepAt`: when the sweep last ran to the end (its repair step looks back from there).
- `gaps`: recent outages as `[beganAt, recoveredAt]`, merged where they touch.

Whoever notices a gap records it:

- a process, on its first store answer (it was not serving before; Azure Functions has no
  start hook, so first use is the reliable point): `[lastAliveAt, now]`;
- a process whose store answers again after failing: `[its last answer before, now]`;
- the sweep, finding `lastAliveAt` older than `outage_grace_seconds` (the timer, or all of the
  coordinator, stopped): `[lastAliveAt, now]`. Until some sweep records it, a stamp that old
  counts as a gap still open.

The rule (`grace_until`): a lease that expired at `e` is held by its holder while
`now < recoveredAt + leaseSeconds` for some gap with `beganAt <= e`. Its holder's heartbeat
renews it, its writes are accepted, and the sweep extends it to that time instead of expiring
it (marking it `spared`); if the holder does not come back, the sweep requeues it then. A lease
spared once and not renewed since is not held by a later gap, so process starts that are not
outages (a new instance of a scaled-out app) cannot keep a dead holder's work forever. Nobody
else can take the job meanwhile: claims take only queued jobs, and only the sweep queues
expired work.

Expiry here is always the lease's effective expiry (`fleet.liveness`): the later of the job's
own and its factory's, when the factory's last heartbeat renewed it. A lease the sweep spared
is renewed since once its factory's document carries it past the spared expiry.

A lease this coordinator refused as lost (its write refused, or its late report taken) is not
held by a later gap: the refusal stamps `lastAliveAt` when the record did not show the
coordinator alive since the lease's expiry (`lost`). Without it, a restart's gap, which begins
at the last stamp (up to a minute before the stop), would cover a lease that expired and was
refused while the coordinator was serving, and accept its holder's writes again.

Cost: the record is point-read only for a lease past its effective expiry; a live lease costs
nothing. The stamp on a refusal is one write, and only until the next sweep's stamp.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

from pydantic import Field

from fleet import errors, liveness, store as store_port
from fleet.clock import Clock
from fleet.context import Context, Settings
from fleet.jobs import Job, Lease, Model, Time

log = logging.getLogger("fleet.outage")

#: Where the record lives: a reserved partition no product can have.
STATE_PARTITION = "_fleet"
STATE_ID = "sweep-state"
#: The most gaps the record keeps (the newest); gaps whose grace has ended are dropped anyway.
MAX_GAPS = 20
#: Error codes that mean the store could not be reached or used (not an answer about a document).
OUTAGE_CODES = frozenset({"store_busy", "store_unavailable"})


class Gap(Model):
    """A stretch in which factories may not have reached the coordinator or its store."""

    began_at: Time
    recovered_at: Time


class Record(Model):
    """The one outage record: the last signs of life and the recent gaps."""

    last_alive_at: Time | None = None
    last_sweep_at: Time | None = None
    gaps: list[Gap] = Field(default_factory=list)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> "Record":
        record = cls.model_validate(doc)
        # A record written before gaps were kept has only the sweep's stamp.
        if record.last_alive_at is None and record.last_sweep_at is not None:
            record = record.model_copy(update={"last_alive_at": record.last_sweep_at})
        return record

    def to_doc(self) -> dict[str, Any]:
        return {"id": STATE_ID, "productId": STATE_PARTITION, **super().to_doc()}


# Pure rules


def open_gap(record: Record, now: datetime, stale_seconds: float) -> Gap | None:
    """The gap still open if nobody has said the coordinator was alive for `stale_seconds`."""
    last = record.last_alive_at
    if last is None or (now - last).total_seconds() <= stale_seconds:
        return None
    return Gap(began_at=last, recovered_at=now)


def grace_until(record: Record, lease: Lease | liveness.Held, now: datetime, settings: Settings) -> datetime | None:
    """Until when `lease`, expired, still counts as its holder's because it expired in (or
    just after) an outage gap; None if it does not. Given a job's lease, pass it as its
    factory document leaves it (`liveness.effective`): grace runs from the effective expiry."""
    if lease.expires_at > now or lease.spared:
        return None
    term = timedelta(seconds=settings.lease_seconds)
    gaps = [*record.gaps, *filter(None, [open_gap(record, now, settings.outage_grace_seconds)])]
    ends = [gap.recovered_at + term for gap in gaps if gap.began_at <= lease.expires_at]
    until = max(ends, default=None)
    return until if until is not None and now < until else None


def with_gap(record: Record, gap: Gap, now: datetime, settings: Settings) -> Record:
    """`record` with `gap` merged in (gaps that touch become one), the ones whose grace has
    ended dropped, and `lastAliveAt` at least `gap.recoveredAt`."""
    merged: list[Gap] = []
    for each in sorted([*record.gaps, gap], key=lambda g: g.began_at):
        if merged and each.began_at <= merged[-1].recovered_at:
            last = merged[-1]
            merged[-1] = Gap(began_at=last.began_at, recovered_at=max(last.recovered_at, each.recovered_at))
        else:
            merged.append(each)
    term = timedelta(seconds=settings.lease_seconds)
    kept = [g for g in merged if g.recovered_at + term > now][-MAX_GAPS:]
    return record.model_copy(update={"gaps": kept, "last_alive_at": _later(record.last_alive_at, gap.recovered_at)})


def swept(record: Record, now: datetime, settings: Settings) -> Record:
    """The record after a sweep at `now`: the open gap (a stale stamp) recorded, both stamps set."""
    gap = open_gap(record, now, settings.outage_grace_seconds)
    if gap is not None:
        record = with_gap(record, gap, now, settings)
    return record.model_copy(update={"last_alive_at": _later(record.last_alive_at, now), "last_sweep_at": now})


def recovered(record: Record, since: datetime | None, now: datetime, settings: Settings) -> Record:
    """The record after a process found the store answering at `now`, having last known it
    alive at `since` (None: a process starting, which knows only the record's stamp)."""
    began = since if since is not None else record.last_alive_at
    if began is None or began >= now:
        return record.model_copy(update={"last_alive_at": _later(record.last_alive_at, now)})
    return with_gap(record, Gap(began_at=began, recovered_at=now), now, settings)


def _later(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b > a else a


# Use cases


def read(ctx: Context) -> Record:
    """The record, in one point read; an empty one if it was never written."""
    return Record.from_doc(read_doc(ctx) or {})


def read_doc(ctx: Context) -> dict[str, Any] | None:
    """The record's document as stored (with its ETag), None if it was never written: for a
    caller that decides with the record and then writes it (`record_sweep(current=...)`)."""
    try:
        return ctx.store.read("jobs", STATE_PARTITION, STATE_ID)
    except errors.NotFound:
        return None


def last_sweep(ctx: Context) -> datetime | None:
    """When the sweep last ran to the end, None if it never has."""
    return read(ctx).last_sweep_at


def record_sweep(ctx: Context, now: datetime, current: dict[str, Any] | None = None, *, read: bool = False) -> Record:
    """Stamp the sweep's run, recording the gap a stale stamp shows. With `read`, `current`
    is the record's document as the sweep read it (`read_doc`; None: there was none), so that
    writing it needs no second read."""
    change = lambda record: swept(record, now, ctx.settings)  # noqa: E731
    if read and current is None:
        try:
            return Record.from_doc(ctx.store.create("jobs", {**change(Record()).to_doc(), "id": STATE_ID}))
        except errors.Conflict:
            pass  # another process wrote the first record meanwhile: decide on its
    return _change(ctx, change, current)


def record_recovery(ctx: Context, since: datetime | None, now: datetime) -> Record:
    """Record that the store answers again at `now` (see `recovered`)."""
    return _change(ctx, lambda record: recovered(record, since, now, ctx.settings))


def _change(ctx: Context, change: Callable[[Record], Record], current: dict[str, Any] | None = None) -> Record:
    # A conditional write: the sweep's stamp and a process's gap never overwrite each other.
    def decide(doc: dict[str, Any]) -> dict[str, Any]:
        return change(Record.from_doc(doc)).to_doc()

    initial = Record().to_doc()
    written = store_port.update(
        ctx.store, "jobs", STATE_PARTITION, STATE_ID, decide, initial=initial, current=current, sleep=ctx.clock.sleep
    )
    return Record.from_doc(written)


@dataclass(frozen=True)
class Standing:
    """What a fenced write decides with beyond the job, read before it decides: the holder's
    factory document (None: not read, the lease's own expiry had not passed), the outage
    grace (None: none, or not needed), and whether taking the lease for lost must say that
    the coordinator was alive at that moment (`lost`)."""

    factory: dict[str, Any] | None = None
    grace: datetime | None = None
    #: The lease is past its effective expiry, and the record does not show the coordinator
    #: alive since that expiry: a later gap, which may begin at `lastAliveAt`, would hold it.
    unwitnessed: bool = False


def grace_for(ctx: Context, job: Job, lease_id: str, now: datetime) -> Standing:
    """What `held` needs for a write naming `lease_id`: nothing while the job's own lease is
    unexpired; else its factory's document (one point read) and, if the lease is past its
    effective expiry too, the outage record (one more) for its grace."""
    lease = job.lease
    if lease is None or lease.lease_id != lease_id or lease.expires_at > now:
        return Standing()
    factory = liveness.read_factory(ctx, lease.factory_id) or {}
    view = liveness.effective(lease, factory)
    if view.expires_at > now or view.spared:
        return Standing(factory)
    record = read(ctx)
    alive = record.last_alive_at
    return Standing(factory, grace_until(record, view, now, ctx.settings),
                    unwitnessed=alive is None or alive <= view.expires_at)


def lost(ctx: Context, standing: Standing, now: datetime) -> None:
    """The coordinator, serving, has just taken a lease past its effective expiry for lost (its
    write refused, or its late report accepted). If the record does not show it alive since
    that expiry (`Standing.unwitnessed`), stamp `lastAliveAt` now: a gap recorded later (a
    restart's begins at that stamp) then does not cover the expiry, so the lease is never held
    again once refused. One conditional write, made only until the next stamp (the sweep's,
    every minute) passes the expiry; a stamp that fails is logged, the refusal stands."""
    if not standing.unwitnessed:
        return
    try:
        _change(ctx, lambda record: record.model_copy(update={"last_alive_at": _later(record.last_alive_at, now)}))
    except errors.FleetError as exc:
        log.warning("could not stamp the coordinator alive after a lost lease (%s: %s)", exc.code, exc.detail)


def held(job: Job, lease_id: str, now: datetime, standing: Standing) -> bool:
    """Whether `lease_id` is the job's lease and live (`liveness.holds`), or held for an outage
    with the grace `grace_for` found (pure: the decision of a write)."""
    lease = job.lease
    if liveness.holds(lease, lease_id, standing.factory, now):
        return True
    if lease is None or lease.lease_id != lease_id or standing.grace is None:
        return False
    return not liveness.spared(lease, standing.factory) and now < standing.grace


def holds(ctx: Context, job: Job, lease_id: str, now: datetime) -> bool:
    """Whether `lease_id` is the job's live lease, with its factory's liveness and outage grace."""
    return held(job, lease_id, now, grace_for(ctx, job, lease_id, now))


# Noticing outages


class Watched(store_port.Store):
    """A store that notices the coordinator's outages: its first answer in this process (the
    process starting) and its first answer after failing (`OUTAGE_CODES`) record a gap before
    that answer is handed on, so any lease check that follows sees it.

    While the store answers this costs one attribute test per call: the record is written only
    on a start or a recovery. A recording that fails (the store answers reads but cannot yet be
    written) is tried again on an answer at least `RETRY_SECONDS` later, and never by two
    threads at once: no request waits on another's attempt or pays for one per call.
    """

    RETRY_SECONDS = 5.0

    def __init__(self, inner: store_port.Store, clock: Clock, settings: Settings) -> None:
        self.inner = inner
        self._recording = Context(inner, clock, settings)
        self._lock = threading.Lock()
        #: A gap not yet recorded: from process start until the first answer, and after a failure.
        self._pending = True
        #: When the store last answered this process (None: not yet).
        self._last_answer: datetime | None = None
        #: Where a pending gap began: the last answer before it failed (None: process start).
        self._since: datetime | None = None
        #: No attempt to record the pending gap before this (after one failed).
        self._retry_at: datetime | None = None

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def _call(self, call: Callable[[], Any], reads_record: bool = False) -> Any:
        try:
            result = call()
        except errors.FleetError as exc:
            if exc.code in OUTAGE_CODES:
                self._failed()
                raise
            if not (self._answered() and reads_record):
                raise  # an answer all the same (not found, conflict, changed): the store is up
            return self._call(call)
        if self._answered() and reads_record:
            return self._call(call)  # the record as it stands now, with the gap just recorded
        return result

    def _answered(self) -> bool:
        """The store answered: record the pending gap, if any. True if one was pending (so a
        read of the record made just before may not show it yet)."""
        now = self._last_answer = self._recording.clock.now()
        if not self._pending or (self._retry_at is not None and now < self._retry_at):
            return False
        return self._recover(now)

    def _failed(self) -> None:
        with self._lock:
            if not self._pending:
                self._pending, self._since = True, self._last_answer

    def _recover(self, now: datetime) -> bool:
        """Record the pending gap; True if this call recorded it."""
        if not self._lock.acquire(blocking=False):
            return False  # another thread is recording it: do not wait on its store calls
        try:
            if not self._pending:
                return False  # another thread recorded it
            try:
                record_recovery(self._recording, self._since, now)
            except errors.FleetError as exc:  # the store is still in trouble: a line, not a traceback
                self._retry_at = now + timedelta(seconds=self.RETRY_SECONDS)
                log.warning("could not record an outage gap yet (%s: %s); will try again", exc.code, exc.detail)
                return False
            self._pending, self._retry_at = False, None
            return True
        finally:
            self._lock.release()

    # The port, call by call.

    def read(self, container, partition_key, id):
        reads_record = (container, partition_key, id) == ("jobs", STATE_PARTITION, STATE_ID)
        return self._call(lambda: self.inner.read(container, partition_key, id), reads_record)

    def create(self, container, doc):
        return self._call(lambda: self.inner.create(container, doc))

    def replace(self, container, doc, etag):
        return self._call(lambda: self.inner.replace(container, doc, etag))

    def patch(self, container, partition_key, id, ops, etag, answer=False):
        return self._call(lambda: self.inner.patch(container, partition_key, id, ops, etag, answer))

    def upsert(self, container, doc):
        return self._call(lambda: self.inner.upsert(container, doc))

    def delete(self, container, partition_key, id):
        return self._call(lambda: self.inner.delete(container, partition_key, id))

    def increment(self, container, partition_key, id, field, by, initial, stamp=None, also=None):
        return self._call(lambda: self.inner.increment(container, partition_key, id, field, by, initial, stamp, also))

    def query(self, query, continuation=None):
        return self._call(lambda: self.inner.query(query, continuation))

    def count(self, query):
        return self._call(lambda: self.inner.count(query))

    def ping(self):
        return self._call(self.inner.ping)

    def close(self):
        return self.inner.close()
