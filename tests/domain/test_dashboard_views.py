"""What the dashboard's views read, beyond the use cases they call (`dashboard/views.py`)."""
from __future__ import annotations

from datetime import timedelta

from dashboard import views


def test_a_job_page_shows_when_the_lease_ends_as_its_factorys_heartbeats_carry_it(world, running_job, clock):
    # Given a running job whose factory heartbeats it past its own expiry
    job = running_job("job")
    own = job.lease.expires_at
    clock.advance(200)
    world.heartbeat("factory-1", running=[job])
    # When the job's page is read, Then its lease ends a term after that heartbeat, not at the
    # job's own expiry
    shown = views.detail(world.ctx, job.id)
    assert world.job(job).lease.expires_at == own
    assert shown.lease_until == own + timedelta(seconds=200)


def test_a_job_page_of_a_job_without_a_lease_shows_none(world, submit_job):
    assert views.detail(world.ctx, submit_job("job").id).lease_until is None


def test_a_job_page_shows_no_later_time_than_its_own_once_its_factory_stops_listing_the_lease(world, running_job, clock):
    # Given a running job whose factory heartbeat it on, then heartbeat without it
    job = running_job("job")
    own = job.lease.expires_at
    clock.advance(200)
    world.heartbeat("factory-1", running=[job])
    clock.advance(10)
    world.heartbeat("factory-1", running=[])
    # When the job's page is read, Then the factory's later leaseUntil is not the job's
    assert views.detail(world.ctx, job.id).lease_until == own


def test_a_job_page_takes_no_time_from_another_factorys_document(world, running_job, clock):
    # Given a job held by factory-1, and factory-2 heartbeating later (listing nothing of it)
    job = running_job("job")
    own = job.lease.expires_at
    clock.advance(200)
    world.heartbeat("factory-2", running=[])
    assert views.detail(world.ctx, job.id).lease_until == own


def test_a_job_page_shows_a_runs_cost_reported_late_by_its_lost_lease(world, running_job):
    job = running_job("job")
    lease = job.lease.lease_id
    world.patch(job, "building", insights={"costUsd": 0.5})
    world.act(world.job(job), "requeue")
    world.report(world.job(job), lease, insights={"costUsd": 1.5}, pr_url="https://example.com/pr/9")

    run = views.detail(world.ctx, job.id).runs[0]
    assert (run["cost"], run["late"], run["pr_url"]) == (1.5, True, "https://example.com/pr/9")
