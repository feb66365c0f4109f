"""Factories: a heartbeat registers the factory and renews the leases it runs, answering
`renewed` or `revoked` for each, by writing its own document only (`leaseUntil`, `leases`: see
`fleet.liveness`); listings show health from heartbeat age and seats in use."""
from __future__ import annotations

from datetime import timedelta

import pytest

from fleet import actions, clock as clock_mod, errors, factories, liveness, outage, sweep, testing
from fleet.context import Context
from fleet.store import CountingStore
from fleet.jobs import job_id
from fleet.stages import RunResult, Stage

from fleet.testing import LEASE_SECONDS, PRODUCT


def heartbeat(ctx, factory="factory-1", running=(), **fields):
    return factories.heartbeat(
        ctx,
        factory,
        fields.get("products", [PRODUCT]),
        fields.get("capabilities", []),
        fields.get("seat_limit"),
        [(job.id if hasattr(job, "id") else job, lease) for job, lease in running],
    ).to_doc()["leases"]


# Renewal


def test_a_heartbeat_renews_a_live_lease_by_a_lease_term(world, ctx, running_job, clock):
    # Given a job whose lease has 100 s left
    job = running_job(stage="building")
    clock.advance(LEASE_SECONDS - 100)
    # When its factory heartbeats
    [answer] = heartbeat(ctx, running=[(job, job.lease.lease_id)])
    # Then the lease runs a full term from now
    expected = clock.now() + timedelta(seconds=LEASE_SECONDS)
    assert answer == {
        "jobId": job.id,
        "leaseId": job.lease.lease_id,
        "status": "renewed",
        "expiresAt": clock_mod.format(expected),
    }
    # by its factory's document, the job's own lease untouched
    assert effective_expiry(world, job) == expected
    assert world.job(job).lease == job.lease
    # and the factory may write past the old expiry
    clock.advance(200)
    assert world.patch(job, "review").stage == Stage.REVIEW


def test_a_factory_that_keeps_heartbeating_keeps_its_lease(world, ctx, running_job, clock):
    job = running_job(stage="building")
    for _ in range(10):  # 10 × 100 s, far past one lease term
        clock.advance(100)
        assert heartbeat(ctx, running=[(job, job.lease.lease_id)])[0]["status"] == "renewed"
    assert world.patch(job, "testing").stage == Stage.TESTING


def test_an_expired_lease_is_revoked_not_revived(world, ctx, running_job, clock):
    job = running_job(stage="building")
    clock.advance(LEASE_SECONDS + 1)
    [answer] = heartbeat(ctx, running=[(job, job.lease.lease_id)])
    assert (answer["status"], answer["expiresAt"]) == ("revoked", None)
    assert effective_expiry(world, job) == job.lease.expires_at
    assert factories.find(ctx, "factory-1")["leases"] == []


def test_a_superseded_lease_is_revoked(world, ctx, running_job, claim):
    old = running_job(stage="building", factory="factory-1")
    actions.apply(ctx, old.id, actions.Action.REQUEUE)
    new = claim("factory-2").job
    answers = heartbeat(ctx, "factory-1", running=[(old, old.lease.lease_id)])
    assert answers[0]["status"] == "revoked"
    # the new owner's lease is untouched
    assert world.job(new).lease == new.lease


@pytest.mark.parametrize(
    "job, lease",
    [
        (job_id(PRODUCT, "never-submitted"), "some-lease"),  # unknown job
        ("not-a-job-id", "some-lease"),  # malformed ids
        ("acme:", "some-lease"),
        ("acme:UPPERCASEISNOTBASE32", "some-lease"),
        ("bad product:abcdefghijklmnopqrst", "some-lease"),
    ],
)
def test_unknown_or_malformed_jobs_are_revoked(ctx, job, lease):
    assert heartbeat(ctx, running=[(job, lease)]) == [
        {"jobId": job, "leaseId": lease, "status": "revoked", "expiresAt": None}
    ]


def test_a_wrong_lease_on_a_real_job_is_revoked(ctx, running_job):
    job = running_job()
    assert heartbeat(ctx, running=[(job, "someone-elses")])[0]["status"] == "revoked"


def test_a_released_or_finished_job_is_revoked(world, ctx, running_job):
    parked = running_job("parked", stage="testing")
    world.release(parked, stage="testing")
    shipped = running_job("shipped", stage="testing")
    world.patch(shipped, "shipped")
    answers = heartbeat(ctx, running=[(parked, parked.lease.lease_id), (shipped, shipped.lease.lease_id)])
    assert [a["status"] for a in answers] == ["revoked", "revoked"]


def test_each_lease_is_answered_on_its_own(ctx, running_job, clock):
    live = running_job("live")
    clock.advance(10)
    answers = heartbeat(ctx, running=[(live, live.lease.lease_id), (live, "stale"), ("junk", "x")])
    assert [a["status"] for a in answers] == ["renewed", "revoked", "revoked"]


# Registration


def test_a_heartbeat_registers_the_factory_and_updates_it(ctx, clock):
    heartbeat(ctx, "factory-1", capabilities=["py"], seat_limit=2)
    first_seen = clock_mod.format(clock.now())
    clock.advance(30)
    heartbeat(ctx, "factory-1", capabilities=["py", "gpu"], seat_limit=4, products=["acme", "other"])
    doc = factories.find(ctx, "factory-1")
    assert doc["capabilities"] == ["py", "gpu"]
    assert doc["seatLimit"] == 4
    assert doc["products"] == ["acme", "other"]
    assert doc["firstSeenAt"] == first_seen
    assert doc["lastHeartbeatAt"] == clock_mod.format(clock.now())


def test_an_unknown_factory_is_not_found(ctx):
    assert factories.find(ctx, "ghost") is None


# Health and seats


@pytest.mark.parametrize(
    "seconds_since_heartbeat, health",
    [
        (0, "online"),
        (60, "online"),  # ≤ 60 s
        (61, "stale"),
        (300, "stale"),  # ≤ 300 s
        (301, "offline"),
        (86_400, "offline"),
    ],
)
def test_health_follows_heartbeat_age(ctx, clock, seconds_since_heartbeat, health):
    heartbeat(ctx, "factory-1")
    clock.advance(seconds_since_heartbeat)
    [listed] = factories.list_all(ctx).to_doc()["items"]
    assert listed["health"] == health


@pytest.mark.parametrize(
    "age, health",
    [(timedelta(seconds=60), "online"), (timedelta(seconds=60, milliseconds=1), "stale"),
     (timedelta(seconds=300), "stale"), (timedelta(seconds=300, milliseconds=1), "offline")],
)
def test_health_boundaries_to_the_millisecond(age, health):
    now = clock_mod.parse("2026-01-05T09:00:00.000Z")
    assert factories.health(clock_mod.format(now - age), now) == health


def test_a_factory_never_heard_from_is_offline():
    assert factories.health(None, clock_mod.parse("2026-01-05T09:00:00.000Z")) == "offline"


def test_seats_used_counts_live_leases_per_factory(world, ctx, running_job, clock):
    heartbeat(ctx, "factory-1", seat_limit=3)
    heartbeat(ctx, "factory-2")
    # Given factory-1 runs two jobs and factory-2 one
    running_job("a", factory="factory-1")
    running_job("b", factory="factory-1", stage="building")
    running_job("c", factory="factory-2")
    # and factory-1 finished a third
    done = running_job("d", factory="factory-1", stage="testing")
    world.release(done, stage="shipped")
    listed = {f["id"]: f for f in factories.list_all(ctx).to_doc()["items"]}
    assert (listed["factory-1"]["seatsUsed"], listed["factory-1"]["seatLimit"]) == (2, 3)
    assert (listed["factory-2"]["seatsUsed"], listed["factory-2"]["seatLimit"]) == (1, None)


def test_an_expired_lease_frees_its_seat_even_before_the_sweep(ctx, running_job, clock):
    heartbeat(ctx, "factory-1")
    running_job("a", factory="factory-1")
    clock.advance(LEASE_SECONDS + 1)
    assert factories.list_all(ctx).to_doc()["items"][0]["seatsUsed"] == 0


def test_factories_are_listed_by_id(ctx):
    for name in ("zeta", "alpha", "mid"):
        heartbeat(ctx, name)
    assert [f["id"] for f in factories.list_all(ctx).to_doc()["items"]] == ["alpha", "mid", "zeta"]


def test_a_heartbeat_naming_a_job_gone_missing_revokes_it(ctx, running_job, store):
    job = running_job()
    store.delete("jobs", PRODUCT, job.id)
    assert heartbeat(ctx, running=[(job, job.lease.lease_id)])[0]["status"] == "revoked"
    with pytest.raises(errors.NotFound):
        store.read("jobs", PRODUCT, job.id)


# Renewal after an outage (see `fleet.outage` and tests/domain/test_outage.py)


def test_after_an_outage_the_holder_renews_its_expired_lease(world, ctx, running_job, clock):
    job = running_job(stage="building")
    outage.record_sweep(ctx, clock.now())
    clock.advance(LEASE_SECONDS + 60)
    outage.record_recovery(ctx, None, clock.now())
    [answer] = heartbeat(ctx, "factory-1", running=[(job, job.lease.lease_id)])
    assert answer["status"] == "renewed"
    assert effective_expiry(world, job) == clock.now() + timedelta(seconds=LEASE_SECONDS)
    # and the sweep leaves it be: no spare, no expiry
    assert sweep.expired_leases(ctx)["spared"] == 0
    assert world.job(job).lease == job.lease


def test_after_an_outage_another_factory_cannot_renew_the_lease_even_naming_it(world, ctx, running_job, clock, store):
    job = running_job(stage="building", factory="factory-1")
    outage.record_sweep(ctx, clock.now())
    clock.advance(LEASE_SECONDS + 60)
    outage.record_recovery(ctx, None, clock.now())
    counting = Context(CountingStore(store), clock, ctx.settings)
    assert heartbeat(counting, "factory-2", running=[(job, job.lease.lease_id)])[0]["status"] == "revoked"
    # its leases' query finds none of its own: refused before any outage read
    assert counting.store.calls["query:jobs"] == 1
    assert counting.store.calls["read:jobs"] == 0
    assert world.job(job).lease == job.lease
    assert effective_expiry(world, job) == job.lease.expires_at


# Factory-level liveness (`fleet.liveness`): a heartbeat writes no job document


def effective_expiry(world, job):
    lease = world.job(job).lease
    return liveness.effective_expiry(lease, factories.find(world.observer, lease.factory_id))


def job_writes(store) -> int:
    return store.calls["replace:jobs"] + store.calls["upsert:jobs"]


def test_a_lease_its_factory_keeps_heartbeating_outlives_its_own_expiry(world, ctx, running_job, clock, store):
    # Given a job its factory keeps naming in heartbeats every 100 s, far past its own expiry
    job = running_job(stage="building")
    for _ in range(12):
        clock.advance(100)
        store.calls.clear()
        assert heartbeat(ctx, running=[(job, job.lease.lease_id)])[0]["status"] == "renewed"
        assert job_writes(store) == 0  # the heartbeat wrote no job document
        # Then the sweep leaves it
        assert sweep.expired_leases(ctx)["expired"] == 0
    assert world.job(job).lease.expires_at < clock.now()  # its own expiry long gone
    # and nothing wrote the job meanwhile
    assert (world.job(job).lease, world.job(job).etag) == (job.lease, job.etag)
    # and its writes are accepted, the PATCH refreshing the job's own expiry
    patched = world.patch(job, "testing")
    assert (patched.stage, patched.lease.expires_at) == (Stage.TESTING, clock.now() + timedelta(seconds=LEASE_SECONDS))
    assert world.release(job, stage="shipped").stage == Stage.SHIPPED


def test_a_lease_whose_factory_stops_heartbeating_expires_once_both_expiries_pass(world, ctx, running_job, clock):
    job = running_job(stage="building")
    clock.advance(100)
    heartbeat(ctx, running=[(job, job.lease.lease_id)])  # the factory's last word: until 400 s
    # Past the job's own expiry (300 s) its factory's heartbeat still holds it
    clock.advance(LEASE_SECONDS - 100 + 50)
    assert sweep.expired_leases(ctx)["expired"] == 0
    assert world.job(job).lease == job.lease
    # and once the factory's term is over too, the sweep requeues it with an attempt counted
    clock.advance(51)
    assert sweep.expired_leases(ctx)["expired"] == 1
    requeued = world.job(job)
    assert (requeued.stage, requeued.lease, requeued.attempts) == (Stage.QUEUED, None, 1)
    assert ([e.type for e in requeued.events[-2:]], requeued.latest_run.result) == (["lease_expired", "retry"], RunResult.EXPIRED)
    # and a write by it is then lease_lost
    with pytest.raises(errors.LeaseLost):
        world.patch(job, "review")


def test_a_write_by_a_lease_past_both_expiries_is_lease_lost_before_any_sweep(world, ctx, running_job, clock):
    job = running_job(stage="building")
    clock.advance(100)
    heartbeat(ctx, running=[(job, job.lease.lease_id)])
    clock.advance(LEASE_SECONDS + 1)
    with pytest.raises(errors.LeaseLost):
        world.patch(job, "review")
    assert world.job(job).stage == Stage.BUILDING


def test_a_lease_its_factory_no_longer_names_expires_at_its_own_expiry(world, ctx, running_job, clock):
    # Given a factory that named the lease once, then heartbeats on without it
    job = running_job(stage="building")
    clock.advance(100)
    heartbeat(ctx, running=[(job, job.lease.lease_id)])
    clock.advance(100)
    heartbeat(ctx, running=[])
    assert effective_expiry(world, job) == job.lease.expires_at
    # Then the lease ends at the job's own expiry
    clock.advance(LEASE_SECONDS - 200 + 1)
    heartbeat(ctx, running=[])
    assert sweep.expired_leases(ctx)["expired"] == 1
    assert (world.job(job).stage, world.job(job).attempts) == (Stage.QUEUED, 1)


def test_a_heartbeat_cannot_bring_back_a_lease_it_stopped_naming(ctx, running_job, clock):
    job = running_job(stage="building")
    clock.advance(100)
    heartbeat(ctx, running=[])
    clock.advance(LEASE_SECONDS)
    assert heartbeat(ctx, running=[(job, job.lease.lease_id)])[0]["status"] == "revoked"


@pytest.mark.parametrize("n", [1, 4, 16])
def test_a_heartbeat_costs_at_most_three_store_calls_whatever_it_renews(world, ctx, running_job, clock, store, n):
    # Given a factory running n jobs, heartbeating every 100 s past their own expiries
    jobs = [running_job(f"j{i}", stage="building") for i in range(n)]
    running = [(job, job.lease.lease_id) for job in jobs]
    heartbeat(ctx, running=running, seat_limit=n)  # registering it (its one activity bump)
    for _ in range(4):
        clock.advance(100)
        store.calls.clear()
        answers = heartbeat(ctx, running=running, seat_limit=n)
        # Then each heartbeat renews them all in at most three store calls, writing no job
        assert [a["status"] for a in answers] == ["renewed"] * n
        assert sum(store.calls.values()) <= 3, store.calls
        assert job_writes(store) == 0
    assert set(factories.find(ctx, "factory-1")["leases"]) == {liveness.listed(job.lease.lease_id) for job in jobs}


def test_seats_count_the_leases_their_factory_keeps_alive(ctx, running_job, clock):
    job = running_job("a", factory="factory-1")
    clock.advance(200)
    heartbeat(ctx, "factory-1", running=[(job, job.lease.lease_id)])
    clock.advance(200)  # past the job's own expiry
    assert factories.list_all(ctx).to_doc()["items"][0]["seatsUsed"] == 1
    clock.advance(LEASE_SECONDS)
    assert factories.list_all(ctx).to_doc()["items"][0]["seatsUsed"] == 0


# Heartbeats out of order: a late one never moves the factory's liveness back


def listed_of(*jobs) -> set[str]:
    return {liveness.listed(job.lease.lease_id) for job in jobs}


def test_a_late_heartbeat_keeps_the_later_ones_liveness(world, ctx, running_job, clock, store):
    # Given a factory whose heartbeat at t1 renewed two leases
    a, b = running_job("a", stage="building"), running_job("b", stage="building")
    t0 = clock.advance(100)
    t1 = clock.advance(50)
    heartbeat(ctx, running=[(a, a.lease.lease_id), (b, b.lease.lease_id)])
    # When an older heartbeat of it, taken at t0 and delayed, lands after it
    clock.set(t0)
    store.calls.clear()
    answers = heartbeat(ctx, running=[(a, a.lease.lease_id), (b, b.lease.lease_id)])
    # Then it renews what it names, by its own term, and writes nothing: t1's document stands
    expected = clock_mod.format(t0 + timedelta(seconds=LEASE_SECONDS))
    assert [(x["status"], x["expiresAt"]) for x in answers] == [("renewed", expected)] * 2
    assert sum(store.calls.values()) == 2 and store.calls["replace:factories"] == 0, store.calls
    doc = factories.find(ctx, "factory-1")
    assert doc["leaseUntil"] == clock_mod.format(t1 + timedelta(seconds=LEASE_SECONDS))
    assert doc["lastHeartbeatAt"] == clock_mod.format(t1)
    assert set(doc["leases"]) == listed_of(a, b)
    # So past both jobs' own expiries, but within t1's term, the sweep leaves them and the
    # next heartbeat renews them (an older write landing last would have revoked both)
    clock.set(t1 + timedelta(seconds=LEASE_SECONDS - 1))
    assert sweep.expired_leases(ctx)["expired"] == 0
    answers = heartbeat(ctx, running=[(a, a.lease.lease_id), (b, b.lease.lease_id)])
    assert [x["status"] for x in answers] == ["renewed"] * 2


def test_a_late_heartbeat_adds_the_leases_it_renewed_and_drops_none(world, ctx, running_job, clock):
    # Given a factory whose heartbeat at t1 named only lease b, with a seat limit of 4
    a, b = running_job("a", stage="building"), running_job("b", stage="building")
    t0 = clock.advance(100)
    t1 = clock.advance(50)
    heartbeat(ctx, running=[(b, b.lease.lease_id)], seat_limit=4)
    # When an older heartbeat that named a (and an older seat limit) lands after it
    clock.set(t0)
    [answer] = heartbeat(ctx, running=[(a, a.lease.lease_id)], seat_limit=2)
    # Then a, answered renewed, is listed; b stays listed; t1's term and registration stand
    assert answer["status"] == "renewed"
    doc = factories.find(ctx, "factory-1")
    assert set(doc["leases"]) == listed_of(a, b)
    assert (doc["leaseUntil"], doc["seatLimit"]) == (clock_mod.format(t1 + timedelta(seconds=LEASE_SECONDS)), 4)
    assert effective_expiry(world, a) == effective_expiry(world, b) == t1 + timedelta(seconds=LEASE_SECONDS)


@pytest.mark.parametrize("first", [True, False], ids=["first heartbeat", "later heartbeat"])
def test_a_heartbeat_that_loses_the_race_to_a_later_one_decides_again_on_it(ctx, running_job, clock, store, first):
    # Given a factory's heartbeat taken at t0 (its first, or one after an earlier one), and
    # a later one, at t1, landing between its read of the factory document and its write
    a, b = running_job("a", stage="building"), running_job("b", stage="building")
    if not first:
        heartbeat(ctx, running=[(a, a.lease.lease_id)])
    t0 = clock.advance(100)
    t1 = t0 + timedelta(seconds=50)

    def later() -> None:
        clock.set(t1)
        heartbeat(ctx, running=[(b, b.lease.lease_id)])
        clock.set(t0)

    store.meanwhile("query", "jobs", later)  # its query of the leases, after its read
    # When it writes, its write is refused (a replace on a stale ETag, or a create of a
    # document that now exists); it reads again and keeps the later liveness
    [answer] = heartbeat(ctx, running=[(a, a.lease.lease_id)])
    assert answer["status"] == "renewed"
    doc = factories.find(ctx, "factory-1")
    assert (doc["lastHeartbeatAt"], doc["leaseUntil"]) == (
        clock_mod.format(t1),
        clock_mod.format(t1 + timedelta(seconds=LEASE_SECONDS)),
    )
    assert set(doc["leases"]) == listed_of(a, b)
    assert doc["firstSeenAt"] == clock_mod.format(t1 if first else clock_mod.parse(testing.T0))


def test_a_heartbeat_whose_document_keeps_changing_gives_up_with_a_503_to_retry(ctx, running_job, clock, store):
    # Given a factory document something rewrites every time a heartbeat reads it
    from shared import http

    job = running_job(stage="building")
    heartbeat(ctx, running=[(job, job.lease.lease_id)])
    clock.advance(100)
    raw = store.inner

    def rewrite() -> None:
        doc = raw.read("factories", "factory-1", "factory-1")
        raw.replace("factories", {**doc, "rewrites": doc.get("rewrites", 0) + 1}, doc["_etag"])

    for _ in range(factories.HEARTBEAT_ATTEMPTS):
        store.meanwhile("read", "factories", rewrite)
    store.calls.clear()
    # When the factory heartbeats, it tries a bounded number of times, pausing between them
    pauses = clock.pauses
    with pytest.raises(errors.TooManyRetries) as raised:
        heartbeat(ctx, running=[(job, job.lease.lease_id)])
    assert store.calls["read:factories"] == store.calls["replace:factories"] == factories.HEARTBEAT_ATTEMPTS
    assert clock.pauses - pauses == factories.HEARTBEAT_ATTEMPTS - 1
    # and answers a clean 503 with Retry-After, as other bounded retries do
    response = http.from_error(raised.value)
    assert (response.status_code, response.headers["Retry-After"]) == (503, "1")
    # Then once the document is left alone, the heartbeat passes
    [answer] = heartbeat(ctx, running=[(job, job.lease.lease_id)])
    assert answer["status"] == "renewed"
