"""Submitting: a job id names its product and idempotency key, a repeat of the same submit is
the same job, a different one under the same key is a conflict; bodies are validated."""
from __future__ import annotations

import base64
import hashlib

import pydantic
import pytest
from hypothesis import given, settings, strategies as st

from fleet import errors, scoring, store as store_port, submit
from fleet.clock import SystemClock
from fleet.context import Context
from fleet.jobs import job_id, product_of
from fleet.schemas import JobSpec
from fleet.stages import Priority, Stage
from shared.stores.sqlite_store import SqliteStore

from fleet.testing import PRODUCT, flags_on


def spec(**fields) -> JobSpec:
    return JobSpec(**{"productId": PRODUCT, "idempotencyKey": "key-1", **fields})


# Job ids


def test_a_job_id_is_the_product_and_a_digest_of_the_key():
    # first 20 characters of the lowercase base32 SHA-256 of "acme\nkey-1"
    digest = base64.b32encode(hashlib.sha256(b"acme\nkey-1").digest()).decode().lower()[:20]
    assert job_id("acme", "key-1") == f"acme:{digest}"


@settings(max_examples=50, deadline=None)
@given(
    product=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z"),
    key=st.text(min_size=1, max_size=200),
)
def test_a_job_id_names_its_product(product, key):
    assert product_of(job_id(product, key)) == product


@pytest.mark.parametrize(
    "id", ["", "acme", "acme:", "acme:abc", "acme:ABCDEFGHIJKLMNOPQRST", "-acme:abcdefghijklmnopqrst", "acme:abcdefghijklmnopqrs1"]
)
def test_a_malformed_id_names_no_product(id):
    assert product_of(id) is None


# Creating


def test_a_new_submit_creates_a_queued_job(world, clock):
    submitted = world.submit("key-1", title="Fix the flaky test", capabilities=["py", "gpu", "py"], repo="acme/app")
    job = submitted.job
    assert submitted.created is True
    assert job.id == job_id(PRODUCT, "key-1")
    assert (job.stage, job.priority, job.attempts, job.max_attempts) == (Stage.QUEUED, Priority.NORMAL, 0, 3)
    assert job.capabilities == ["gpu", "py"]  # a set, sorted
    assert (job.created_at, job.updated_at) == (clock.now(), clock.now())
    assert job.rank_key == scoring.rank_key(1, 0, clock.now(), scoring.DEFAULTS)
    assert [e.type for e in job.events] == ["submitted"]
    assert world.job(job.id) == job


def test_the_same_submit_again_is_the_same_job(world, clock):
    first = world.submit("key-1", title="t", priority="high", deps=[])
    clock.advance(60)
    again = world.submit("key-1", title="t", priority="high", deps=[])
    assert again.created is False
    assert again.job == first.job


def test_an_omitted_priority_is_the_same_as_normal(world):
    first = world.submit("key-1")
    again = world.submit("key-1", priority="normal")
    assert (again.created, again.job.id) == (False, first.job.id)


def test_the_same_submit_after_the_job_moved_on_is_still_the_same_job(world, claim):
    world.submit("key-1")
    claim()
    again = world.submit("key-1")
    assert (again.created, again.job.stage) == (False, Stage.ASSIGNED)


@pytest.mark.parametrize(
    "changed",
    [{"title": "another title"}, {"priority": "critical"}, {"bodyMd": "more"}, {"maxAttempts": 5}, {"capabilities": ["gpu"]}],
)
def test_the_same_key_with_different_fields_is_an_idempotency_conflict(world, changed):
    first = world.submit("key-1", title="t").job
    with pytest.raises(errors.IdempotencyConflict) as raised:
        world.submit("key-1", **{"title": "t", **changed})
    assert raised.value.extra == {"jobId": first.id}
    assert world.job(first.id) == first


def test_capabilities_in_another_order_are_the_same_submit(world):
    first = world.submit("key-1", capabilities=["py", "gpu"])
    again = world.submit("key-1", capabilities=["gpu", "py"])
    assert (again.created, again.job.id) == (False, first.job.id)


def test_the_same_key_in_another_product_is_another_job(world):
    a = world.submit("key-1", product_id="alpha").job
    b = world.submit("key-1", product_id="beta").job
    assert a.id != b.id
    assert (product_of(a.id), product_of(b.id)) == ("alpha", "beta")


def test_a_submit_with_the_system_clock_writes_its_job_once():
    # Regression: with a real clock a submit used to write its job twice.
    real = SqliteStore(":memory:")
    try:
        counted = store_port.CountingStore(real)
        ctx = Context(counted, SystemClock(), flags_on())
        for n in range(20):  # the system clock is hardly ever on a whole millisecond
            counted.reset()
            submit.submit(ctx, JobSpec(product_id=PRODUCT, idempotency_key=f"job-{n}"))
            assert (counted.calls["create:jobs"], counted.calls["replace:jobs"]) == (1, 0)
    finally:
        real.close()


# Validating


@pytest.mark.parametrize(
    "fields",
    [
        {"productId": ""},
        {"productId": "-leading-dash"},
        {"productId": "has space"},
        {"productId": "a" * 65},  # 1 + 63 at most
        {"productId": "acme:x"},
        {"idempotencyKey": ""},
        {"idempotencyKey": "k" * 201},
        {"idempotencyKey": "line\nbreak"},
        {"bodyMd": "x" * 65537},  # 64 KiB at most
        {"title": "t" * 501},
        {"surprise": "unknown fields are refused"},
        {"priority": "urgent"},
        {"priority": 3},
        {"maxAttempts": 0},
        {"maxAttempts": 11},
        {"capabilities": ["has space"]},
        {"capabilities": ["c"] * 33},
        {"repo": "not a repo"},
        {"repo": "owner/name/extra"},
        {"repo": "http://github.com/acme/app"},  # https only
        {"baseBranch": "feature..x"},
        {"baseBranch": "ends/"},
        {"baseBranch": "x.lock"},
        {"baseBranch": "-starts-with-dash"},
        {"baseBranch": "has space"},
        {"estimatedCostUsd": -1},
        {"kind": "epic"},
    ],
)
def test_an_invalid_job_spec_is_refused(fields):
    with pytest.raises(pydantic.ValidationError):
        spec(**fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"productId": "a" * 64},
        {"productId": "acme.app_2-x"},
        {"bodyMd": "x" * 65536},
        {"repo": "acme/app"},
        {"repo": "https://github.com/acme/app.git"},
        {"repo": "git@github.com:acme/app.git"},
        {"baseBranch": "feature/x-1"},
        {"baseBranch": "release/2026.01"},
        {"priority": "critical", "maxAttempts": 10, "capabilities": ["py", "node:20"]},
    ],
)
def test_a_valid_job_spec_is_accepted(fields):
    spec(**fields)


def test_duplicate_deps_count_once():
    assert spec(deps=["a", "b", "a"]).deps == ["a", "b"]
