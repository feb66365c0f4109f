"""Outage gaps: a lease that expired while the coordinator or its store could not be reached
is still its holder's until one lease term after the gap ended, whatever the lease length —
and nobody else's: the sweep spares it, another factory cannot renew or claim it, and if its
holder never comes back the sweep requeues it once that term is over."""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, settings as hypothesis_settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from fleet import actions, clock as clock_mod, errors, factories, liveness, outage, store as store_port, sweep
from fleet.clock import FixedClock
from fleet.context import Context, Settings
from fleet.jobs import Job, Lease, job_id
from fleet.stages import ACTIVE, RunResult, Stage
from shared.stores.sqlite_store import SqliteStore

from fleet.testing import PRODUCT, T0, World

NOW = clock_mod.parse(T0)
TERM = 300


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def gap(began: float, recovered: float) -> outage.Gap:
    return outage.Gap(began_at=at(began), recovered_at=at(recovered))


def lease_expiring(seconds: float, **fields) -> Lease:
    return Lease(lease_id="lease-1", factory_id="f1", epoch=1, expires_at=at(seconds), **fields)


class Flaky(store_port.CountingStore):
    """A real store that can be taken away: while `down`, every call fails as an unreachable
    store does. Counts reads of the outage record apart from other reads."""

    down = False

    def _check(self) -> None:
        if self.down:
            raise errors.StoreBusy("unreachable")

    def read(self, container, partition_key, id):
        self._check()
        if partition_key == outage.STATE_PARTITION:
            self.calls["read:outage-record"] += 1
        return super().read(container, partition_key, id)

    def create(self, container, doc):
        self._check()
        return super().create(container, doc)

    def replace(self, container, doc, etag):
        self._check()
        return super().replace(container, doc, etag)

    def patch(self, container, partition_key, id, ops, etag, answer=False):
        self._check()
        return super().patch(container, partition_key, id, ops, etag, answer)

    def upsert(self, container, doc):
        self._check()
        return super().upsert(container, doc)

    def query(self, query, continuation=None):
        self._check()
        return super().query(query, continuation)

    def increment(self, container, partition_key, id, field, by, initial, stamp=None, also=None):
        self._check()
        return super().increment(container, partition_key, id, field, by, initial, stamp, also)


class Coordinator:
    """A fleet whose processes can stop and start and whose store can go away, over one real
    SQLite store and a fixed clock. `world` is the running process's (its store `Watched`)."""

    def __init__(self, lease_seconds: int = TERM) -> None:
        self.sqlite = SqliteStore(":memory:")
        self.flaky = Flaky(self.sqlite)
        self.clock = FixedClock(T0)
        self.settings = Settings(lease_seconds=lease_seconds)
        self.start()

    def start(self) -> None:
        """A new process: its first store answer records the gap since the last sign of life."""
        self.world = World(outage.Watched(self.flaky, self.clock, self.settings), self.clock, self.settings)

    @property
    def ctx(self) -> Context:
        return self.world.ctx

    def restart(self, down_seconds: float) -> None:
        self.clock.advance(down_seconds)
        self.start()

    def store_outage(self, seconds: float, tried: bool = True) -> None:
        """The store goes away for `seconds`; the process finds out if something `tried` it."""
        self.flaky.down = True
        if tried:
            with pytest.raises(errors.StoreBusy):
                self.heartbeat("probe")
        self.clock.advance(seconds)
        self.flaky.down = False

    def heartbeat(self, factory: str, *jobs: Job) -> list[str]:
        running = [(job.id, job.lease.lease_id) for job in jobs]
        return [a.status.value for a in factories.heartbeat(self.ctx, factory, [PRODUCT], [], None, running).leases]

    def raw(self, job: Job) -> Job:
        """The job as stored, read past the process (no outage bookkeeping)."""
        return Job.from_doc(self.sqlite.read("jobs", job.product_id, job.id))

    def lease(self, job: Job) -> liveness.Held:
        """The job's lease as its factory's document leaves it (`liveness.effective`)."""
        lease = self.raw(job).lease
        return liveness.effective(lease, self.sqlite_factory(lease.factory_id))

    def sqlite_factory(self, factory_id: str) -> dict | None:
        try:
            return self.sqlite.read("factories", factory_id, factory_id)
        except errors.NotFound:
            return None

    def record(self) -> outage.Record:
        return outage.Record.from_doc(self.sqlite.read("jobs", outage.STATE_PARTITION, outage.STATE_ID))

    def close(self) -> None:
        self.sqlite.close()


@pytest.fixture
def fleet():
    coordinator = Coordinator()
    yield coordinator
    coordinator.close()


@pytest.fixture
def short_leases():
    coordinator = Coordinator(lease_seconds=2)
    yield coordinator
    coordinator.close()


# The rule


SETTINGS = Settings(lease_seconds=TERM)
#: One gap, from 100 s to 200 s; the stamp fresh, so no gap is open.
RECORD = outage.Record(last_alive_at=at(200), gaps=[gap(100, 200)])


@pytest.mark.parametrize(
    "expired_at, now, held_until",
    [
        (99, 201, None),  # expired before the gap began: the coordinator was up, the holder gone
        (100, 201, 200 + TERM),  # expired as the gap began
        (150, 201, 200 + TERM),  # in the gap
        (199, 200 + TERM - 1, 200 + TERM),  # held up to one term after the recovery...
        (199, 200 + TERM, None),  # ...and no longer
        (210, 220, 200 + TERM),  # expired just after the recovery, before its holder could renew
        (150, 140, None),  # not expired yet: live, no grace needed
    ],
)
def test_a_lease_that_expired_in_a_gap_is_held_until_a_term_after_the_recovery(expired_at, now, held_until):
    until = outage.grace_until(RECORD, lease_expiring(expired_at), at(now), SETTINGS)
    assert until == (None if held_until is None else at(held_until))


def test_a_lease_spared_once_is_not_held_by_a_later_gap():
    later = RECORD.model_copy(update={"gaps": [gap(100, 200), gap(400, 450)], "last_alive_at": at(450)})
    assert outage.grace_until(later, lease_expiring(420), at(460), SETTINGS) == at(450 + TERM)
    assert outage.grace_until(later, lease_expiring(420, spared=True), at(460), SETTINGS) is None


@pytest.mark.parametrize(
    "stamp_age, open_gap",
    [
        (180, False),  # the sweep stamps every minute; three minutes late is still on time
        (181, True),  # older: the coordinator, or its timer, stopped
    ],
)
def test_a_stale_stamp_is_a_gap_still_open(stamp_age, open_gap):
    record = outage.Record(last_alive_at=at(0))
    found = outage.open_gap(record, at(stamp_age), SETTINGS.outage_grace_seconds)
    assert found == (gap(0, stamp_age) if open_gap else None)
    held = outage.grace_until(record, lease_expiring(10), at(stamp_age), SETTINGS)
    assert held == (at(stamp_age + TERM) if open_gap else None)


def test_gaps_that_touch_merge_and_gaps_whose_grace_ended_are_dropped():
    record = outage.Record(gaps=[gap(0, 10), gap(50, 60)])
    merged = outage.with_gap(record, gap(60, 70), at(70), SETTINGS)
    assert merged.gaps == [gap(0, 10), gap(50, 70)]
    assert merged.last_alive_at == at(70)
    # once a term has passed since a gap's recovery, no lease can be held by it
    assert outage.with_gap(merged, gap(400, 401), at(401), SETTINGS).gaps == [gap(400, 401)]


def test_the_record_keeps_the_newest_gaps():
    record = outage.Record()
    for n in range(outage.MAX_GAPS + 5):
        record = outage.with_gap(record, gap(2 * n, 2 * n + 1), at(2 * n + 1), SETTINGS)
    assert len(record.gaps) == outage.MAX_GAPS
    assert record.gaps[-1] == gap(2 * (outage.MAX_GAPS + 4), 2 * (outage.MAX_GAPS + 4) + 1)


@pytest.mark.parametrize(
    "record, since, now, gaps",
    [
        (outage.Record(), None, 10, []),  # a first start ever: nothing was running before
        (outage.Record(last_alive_at=at(0)), None, 10, [gap(0, 10)]),  # a restart
        (outage.Record(last_alive_at=at(0)), at(5), 10, [gap(5, 10)]),  # the store came back
    ],
)
def test_a_recovery_records_the_gap_since_the_last_sign_of_life(record, since, now, gaps):
    after = outage.recovered(record, since, at(now), SETTINGS)
    assert (after.gaps, after.last_alive_at) == (gaps, at(now))


def test_a_record_from_before_gaps_were_kept_reads_its_sweep_stamp_as_the_last_sign_of_life():
    record = outage.Record.from_doc({"id": outage.STATE_ID, "productId": "_fleet", "lastSweepAt": clock_mod.format(NOW)})
    assert (record.last_alive_at, record.last_sweep_at, record.gaps) == (NOW, NOW, [])


# Noticing gaps: a process starting, a store answering again, the sweep


def test_a_first_start_writes_the_first_sign_of_life(fleet):
    fleet.heartbeat("f1")
    assert fleet.record() == outage.Record(last_alive_at=NOW)


def test_a_process_start_records_the_gap_since_the_last_sign_of_life(fleet):
    fleet.heartbeat("f1")
    fleet.restart(down_seconds=20)
    fleet.heartbeat("f1")
    assert fleet.record().gaps == [gap(0, 20)]


def test_the_first_answer_records_the_gap_even_if_it_is_not_found(fleet):
    fleet.heartbeat("f1")
    fleet.restart(down_seconds=20)
    with pytest.raises(errors.NotFound):
        fleet.ctx.store.read("jobs", PRODUCT, job_id(PRODUCT, "none"))
    assert fleet.record().gaps == [gap(0, 20)]


def test_a_store_that_answers_again_records_the_gap_since_its_last_answer(fleet):
    fleet.heartbeat("f1")
    fleet.clock.advance(10)
    fleet.heartbeat("f1")  # the last answer before the store goes away, at 10 s
    fleet.store_outage(30)
    fleet.heartbeat("f1")
    assert fleet.record().gaps == [gap(10, 40)]


def test_an_answer_about_a_document_is_not_an_outage(fleet):
    fleet.heartbeat("f1")
    for _ in range(3):
        fleet.clock.advance(10)
        with pytest.raises(errors.NotFound):
            fleet.ctx.store.read("jobs", PRODUCT, job_id(PRODUCT, "none"))
    assert fleet.record().gaps == []


def test_reading_the_record_as_the_first_answer_after_a_recovery_shows_the_gap(fleet):
    fleet.heartbeat("f1")
    fleet.store_outage(30)
    assert outage.read(fleet.ctx).gaps == [gap(0, 30)]


def test_a_gap_that_could_not_be_recorded_is_recorded_with_an_answer_after_the_retry_pause(fleet, monkeypatch):
    fleet.heartbeat("f1")
    fleet.restart(down_seconds=20)
    refuse = lambda *args: (_ for _ in ()).throw(errors.StoreBusy("throttled"))  # noqa: E731
    monkeypatch.setattr(outage, "record_recovery", refuse)
    fleet.heartbeat("f1")  # answered, but the gap could not be written
    monkeypatch.undo()
    fleet.clock.advance(1)
    fleet.heartbeat("f1")  # within the pause: not tried again, so no request pays for it
    assert fleet.record().gaps == []
    fleet.clock.advance(outage.Watched.RETRY_SECONDS)
    fleet.heartbeat("f1")
    assert fleet.record().gaps == [gap(0, 26)]  # recovered when it could be recorded: a longer grace


def test_a_sweep_that_finds_a_stale_stamp_records_the_gap_and_on_cadence_none(fleet):
    sweep.run(fleet.ctx)
    for _ in range(3):
        fleet.clock.advance(60)
        sweep.run(fleet.ctx)
    assert fleet.record().gaps == []
    fleet.clock.advance(Settings().outage_grace_seconds + 1)
    sweep.run(fleet.ctx)
    record = fleet.record()
    assert record.gaps == [gap(180, 180 + 181)]
    assert record.last_sweep_at == record.last_alive_at == fleet.clock.now()


# A restart is not an outage for the fleet


@pytest.mark.parametrize(
    "lease_seconds, down_seconds",
    [
        (2, 5),  # a lease far shorter than the restart
        (10, 20),
        (300, 600),  # the default lease, a ten-minute outage
    ],
)
def test_after_a_restart_longer_than_its_lease_the_holder_carries_on_and_nobody_else_can(lease_seconds, down_seconds):
    fleet = Coordinator(lease_seconds)
    try:
        # Given factory-1 runs a job; the coordinator stops and its lease expires meanwhile
        job = fleet.world.running_job(stage="building", factory="factory-1")
        fleet.restart(down_seconds=down_seconds)
        # When another factory comes first: it can neither claim the job nor renew its lease
        assert fleet.world.claim("factory-2").job is None
        assert fleet.heartbeat("factory-2", job) == ["revoked"]
        # and the sweep does not take it away either
        assert sweep.run(fleet.ctx)["expired"] == 0
        assert fleet.world.claim("factory-2").job is None
        # Then the holder's first heartbeat renews the lease for a full term
        assert fleet.heartbeat("factory-1", job) == ["renewed"]
        renewed = fleet.lease(job)
        assert renewed.expires_at == fleet.clock.now() + timedelta(seconds=lease_seconds)
        assert (renewed.lease_id, renewed.spared) == (job.lease.lease_id, False)
        # and its writes are accepted: the job ships under the lease it kept
        fleet.world.patch(job, "testing")
        shipped = fleet.world.release(job, stage="shipped")
        assert (shipped.stage, shipped.attempts, [r.result for r in shipped.runs]) == (Stage.SHIPPED, 0, [RunResult.SHIPPED])
    finally:
        fleet.close()


def test_its_writes_are_accepted_before_any_heartbeat(short_leases):
    fleet = short_leases
    job = fleet.world.running_job(stage="building")
    fleet.restart(down_seconds=5)
    assert fleet.world.release(job, stage="shipped").stage == Stage.SHIPPED


def test_a_holder_that_never_comes_back_is_requeued_one_term_after_the_restart(short_leases):
    fleet = short_leases
    job = fleet.world.running_job(stage="building", factory="factory-1")
    fleet.restart(down_seconds=5)
    # The first sweep after the restart spares the lease until a term after the recovery
    assert sweep.run(fleet.ctx)["spared"] == 1
    spared = fleet.raw(job)
    assert (spared.lease.expires_at, spared.lease.spared) == (fleet.clock.now() + timedelta(seconds=2), True)
    assert spared.events[-1].type == "lease_spared"
    # and once that term is over, the next one requeues it with an attempt counted
    fleet.clock.advance(3)
    assert sweep.run(fleet.ctx)["expired"] == 1
    assert (fleet.raw(job).stage, fleet.raw(job).attempts) == (Stage.QUEUED, 1)
    assert fleet.world.claim("factory-2").job.id == job.id


def test_after_a_store_outage_the_holder_renews_its_expired_lease(fleet):
    job = fleet.world.running_job(stage="building")
    fleet.store_outage(TERM + 30)
    assert fleet.heartbeat("factory-1", job) == ["renewed"]
    assert fleet.lease(job).expires_at == fleet.clock.now() + timedelta(seconds=TERM)
    # and its writes are accepted, each refreshing the job's own expiry
    assert fleet.world.patch(job, "review").lease.expires_at == fleet.clock.now() + timedelta(seconds=TERM)


def test_a_write_held_only_for_an_outage_says_why_the_lease_lived_on(fleet):
    job = fleet.world.running_job(stage="building")
    fleet.store_outage(TERM + 30)
    written = fleet.world.patch(job, "review")
    assert (written.events[-1].type, written.events[-1].detail) == ("lease_renewed", {"reason": "outage"})
    assert (written.lease.expires_at, written.lease.spared) == (fleet.clock.now() + timedelta(seconds=TERM), False)


def test_a_lease_that_expired_before_the_outage_is_not_held(fleet):
    # Given a factory that died: its lease expired while the store still answered
    job = fleet.world.running_job(stage="building")
    fleet.clock.advance(TERM + 1)
    fleet.heartbeat("factory-2")
    # When the store goes away for a while, and comes back
    fleet.store_outage(60)
    # Then the dead factory's lease is not revived, and the sweep requeues it
    assert fleet.heartbeat("factory-1", job) == ["revoked"]
    assert sweep.run(fleet.ctx)["expired"] == 1


@pytest.mark.parametrize("taken_for_lost", ["write refused", "late report"])
def test_a_lease_taken_for_lost_while_serving_is_not_held_by_a_later_restart(fleet, taken_for_lost):
    # Given a lease that expired while the coordinator served, after the sweep's last stamp
    job = fleet.world.running_job(stage="building")
    for _ in range(TERM // 60):  # the sweep, every minute
        fleet.clock.advance(59)
        sweep.run(fleet.ctx)
    fleet.clock.advance(TERM - (TERM // 60) * 59 + 1)
    assert fleet.record().gaps == [] and fleet.record().last_alive_at < job.lease.expires_at < fleet.clock.now()
    # and that the coordinator took for lost: its holder's write refused, or its report taken
    if taken_for_lost == "write refused":
        with pytest.raises(errors.LeaseLost):
            fleet.world.patch(job, "review")
    else:
        fleet.world.report(job, job.lease.lease_id, insights={"costUsd": 0.5})
    # When the coordinator restarts (the gap it records begins at its last sign of life)
    fleet.restart(down_seconds=5)
    # Then the lease is lost all the same: the holder's writes and heartbeats are refused,
    # and the sweep requeues the job
    with pytest.raises(errors.LeaseLost):
        fleet.world.patch(job, "review")
    assert fleet.heartbeat("factory-1", job) == ["revoked"]
    assert sweep.run(fleet.ctx)["expired"] == 1


def test_a_heartbeat_of_a_live_lease_reads_no_record_and_an_expired_one_one(fleet):
    job = fleet.world.running_job(stage="building")
    fleet.restart(down_seconds=TERM + 60)
    fleet.heartbeat("factory-1")  # the start is recorded with the first answer
    fleet.flaky.reset()
    # an expired lease: one point read of the record
    assert fleet.heartbeat("factory-1", job) == ["renewed"]
    assert fleet.flaky.calls["read:outage-record"] == 1
    # a live lease: none
    fleet.flaky.reset()
    fleet.clock.advance(10)
    assert fleet.heartbeat("factory-1", job) == ["renewed"]
    assert fleet.flaky.calls["read:outage-record"] == 0
    assert (fleet.flaky.calls["read:jobs"], fleet.flaky.calls["query:jobs"]) == (0, 1)  # the factory's leases


def test_a_lease_spared_by_the_sweep_and_not_renewed_is_not_saved_by_a_later_start(short_leases):
    # Given a holder that died during a restart; the sweep spared its lease once
    fleet = short_leases
    job = fleet.world.running_job(stage="building")
    fleet.restart(down_seconds=5)
    sweep.run(fleet.ctx)
    # When another process starts just after the spared term ends (a scaled-out app, say)
    fleet.restart(down_seconds=3)
    # Then the lease is expired all the same
    assert sweep.run(fleet.ctx)["expired"] == 1
    assert fleet.raw(job).stage == Stage.QUEUED


# The property: no job is ever held by two leases, across retries, restarts and outages

FACTORIES = ("f1", "f2")
KEYS = ("k1", "k2")
SHORT = 10
WRITES = [
    ("patch", "building"),
    ("patch", "testing"),
    ("patch", "shipped"),
    ("release", ()),
    ("release", (("result", "retry"),)),
    ("release", (("stage", "shipped"),)),
    ("release", (("stage", "testing"),)),
]


class Outages(RuleBasedStateMachine):
    """Factories claim, heartbeat, write and repeat their writes; time passes; processes
    restart; the store goes away and comes back; the sweep runs; operators requeue."""

    def __init__(self) -> None:
        super().__init__()
        self.fleet = Coordinator(SHORT)
        #: Every lease issued: (job id, lease id, factory).
        self.leases: list[tuple[str, str, str]] = []
        #: The write with which a lease ended itself.
        self.ended: dict[str, tuple] = {}

    def teardown(self) -> None:
        self.fleet.close()

    def job(self, id: str) -> Job:
        return Job.from_doc(self.fleet.sqlite.read("jobs", PRODUCT, id))

    def jobs(self) -> list[Job]:
        query = store_port.Query("jobs", PRODUCT, (store_port.Filter("stage", "!=", None),), limit=10)
        return [Job.from_doc(d) for d in store_port.query_all(self.fleet.sqlite, query)]

    def held(self, job: Job) -> str | None:
        """The lease that holds the job now (live, or for an outage), if any."""
        if job.lease and outage.holds(self.fleet.ctx, job, job.lease.lease_id, self.fleet.clock.now()):
            return job.lease.lease_id
        return None

    @initialize()
    def jobs_are_submitted(self):
        for key in KEYS:
            self.fleet.world.submit(key, max_attempts=3)

    @rule(factory=st.sampled_from(FACTORIES))
    def claim(self, factory):
        held = {job.id: self.held(job) for job in self.jobs()}
        claimed = self.fleet.world.claim(factory).job
        if claimed is not None:
            assert held[claimed.id] is None  # a held job is never claimed
            self.leases.append((claimed.id, claimed.lease.lease_id, factory))

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), factory=st.sampled_from(FACTORIES))
    def heartbeat(self, data, factory):
        id, lease_id, _ = data.draw(st.sampled_from(self.leases))
        before = self.job(id)
        holder = self.held(before)
        [answer] = factories.heartbeat(self.fleet.ctx, factory, [PRODUCT], [], None, [(id, lease_id)]).to_doc()["leases"]
        after = self.job(id)
        if answer["status"] == "renewed":
            # only the holder renews, and afterwards the job is plainly its, by its factory
            assert holder == lease_id and before.lease.factory_id == factory
            assert liveness.holds(after.lease, lease_id, self.fleet.sqlite_factory(factory), self.fleet.clock.now())
        # a heartbeat never writes the job
        assert after.lease == before.lease

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), write=st.sampled_from(WRITES))
    def write(self, data, write):
        id, lease_id, _ = data.draw(st.sampled_from(self.leases))
        kind, what = write
        before = self.job(id)
        holder = self.held(before)
        repeat = self.ended.get(lease_id) == write
        try:
            if kind == "patch":
                after = self.fleet.world.patch(before, what, lease_id=lease_id)
            else:
                after = self.fleet.world.release(before, lease_id=lease_id, **dict(what))
        except errors.LeaseLost:
            assert holder != lease_id and not repeat
            return
        except errors.IllegalTransition:
            assert holder == lease_id
            return
        if holder != lease_id:
            # not the holder: only a repeat of the write that ended its lease, and it changes nothing
            assert repeat and after.etag == before.etag
            return
        assert after.etag != before.etag
        if after.lease is None:
            self.ended[lease_id] = write

    @precondition(lambda self: self.ended)
    @rule(data=st.data())
    def a_lost_answer_is_retried(self, data):
        lease_id, write = data.draw(st.sampled_from(sorted(self.ended.items())))
        id = next(job for job, lease, _ in self.leases if lease == lease_id)
        before = self.job(id)
        kind, what = write
        if kind == "patch":
            after = self.fleet.world.patch(before, what, lease_id=lease_id)
        else:
            after = self.fleet.world.release(before, lease_id=lease_id, **dict(what))
        assert after.etag == before.etag

    @rule(seconds=st.sampled_from([1, SHORT - 1, SHORT, SHORT + 1, 60, 400]))
    def time_passes(self, seconds):
        self.fleet.clock.advance(seconds)

    @rule(seconds=st.sampled_from([1, SHORT + 5, 200]))
    def restart(self, seconds):
        self.fleet.restart(seconds)

    @rule(seconds=st.sampled_from([1, SHORT + 5, 200]), tried=st.booleans())
    def store_outage(self, seconds, tried):
        self.fleet.store_outage(seconds, tried)

    @rule()
    def sweep_runs(self):
        held = {job.id: self.held(job) for job in self.jobs()}
        sweep.run(self.fleet.ctx)
        for job in self.jobs():
            if held[job.id] is not None:  # the sweep never takes a held lease away
                assert job.lease is not None and job.lease.lease_id == held[job.id]

    @rule(key=st.sampled_from(KEYS))
    def operator_requeues(self, key):
        try:
            actions.apply(self.fleet.ctx, job_id(PRODUCT, key), actions.Action.REQUEUE)
        except errors.NotFound:
            pass

    @invariant()
    def a_lease_is_held_only_in_a_work_stage_by_the_newest_claim(self):
        for job in self.jobs():
            if job.lease is not None:
                assert job.stage in ACTIVE
                assert job.lease.epoch == job.lease_epoch
                assert job.latest_run.ended_at is None

    @invariant()
    def every_ended_run_ended_once(self):
        for job in self.jobs():
            for run in job.runs[:-1]:
                assert run.ended_at is not None


Outages.TestCase.settings = hypothesis_settings(
    max_examples=100, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestOutages = Outages.TestCase
