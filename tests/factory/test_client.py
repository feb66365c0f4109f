"""`FleetClient` against a real `fleet serve`: every answer a model, every error a typed exception."""
from __future__ import annotations

import pytest
import requests

from fleet.stages import Stage
from fleetclient import FleetClient, errors
from shared.devhost import serving
from shared.devhost.process import running_server
from tests.factory.conftest import FAST, closed_port, known_to


def submit(client: FleetClient, product: str, key: str, **fields):
    return client.submit_job(product_id=product, idempotency_key=key, title=fields.pop("title", key), **fields).job


class TestJobs:
    def test_a_submit_creates_once_and_a_repeat_returns_the_same_job(self, client, product):
        first = client.submit_job({"productId": product, "idempotencyKey": "k1", "title": "Fix it"})
        again = client.submit_job({"productId": product, "idempotencyKey": "k1", "title": "Fix it"})

        assert first.created and not again.created
        assert again.job.id == first.job.id and first.job.stage == Stage.QUEUED

    def test_the_same_key_with_other_fields_is_an_idempotency_conflict(self, client, product):
        submit(client, product, "k1", title="one")

        with pytest.raises(errors.IdempotencyConflict) as raised:
            submit(client, product, "k1", title="two")

        assert raised.value.status == 409 and raised.value.code == "idempotency_conflict"
        assert "k1" in raised.value.detail

    def test_an_invalid_body_is_a_validation_error_naming_the_fields(self, client):
        with pytest.raises(errors.ValidationFailed) as raised:
            client.submit_job({"productId": "not a product", "idempotencyKey": "k"})

        assert raised.value.status == 400
        assert [e["field"] for e in raised.value.errors] == ["productId"]

    def test_a_body_of_the_most_characters_allowed_fits_a_request_however_written(self, client, product):
        # Sent as UTF-8, not as \\u escapes: 65,536 "é" were 393 KB and refused (413) by the
        # 256 KiB a request may be, though the schema allows them
        for key, text in (("accents", "é" * 65_536), ("emoji", "\U0001f600" * 60_000), ("mixed", "ü€a" * 21_845)):
            job = client.submit_job(product_id=product, idempotency_key=key, body_md=text).job
            assert client.get_job(job.id).body_md == text

    def test_text_that_is_not_unicode_is_refused_by_name(self, client, product):
        with pytest.raises(errors.ValidationFailed) as raised:
            client.submit_job(product_id=product, idempotency_key="k", title="lone \ud800 surrogate")
        assert [e["field"] for e in raised.value.errors] == ["title"]

    def test_an_unknown_job_is_not_found(self, client, product):
        with pytest.raises(errors.NotFound) as raised:
            client.get_job(f"{product}:aaaaaaaaaaaaaaaaaaaa")
        assert raised.value.code == "not_found" and raised.value.problem["status"] == 404

    def test_pages_are_followed_to_the_end(self, client, product):
        ids = {submit(client, product, f"k{i}").id for i in range(5)}

        page = client.list_jobs(product, limit=2)
        every = list(client.iter_jobs(product, page_size=2))

        assert len(page.items) == 2 and (page.next_offset is not None or page.continuation)
        assert [job.id for job in every] == [job.id for job in client.list_jobs(product, limit=10).items]
        assert {job.id for job in every} == ids

    def test_an_unknown_action_is_refused(self, client, product):
        job = submit(client, product, "k1")
        with pytest.raises(errors.ValidationFailed, match="unknown action"):
            client.action(job.id, "explode")

    def test_actions_move_the_job(self, client, product):
        job = submit(client, product, "k1")

        cancelled = client.action(job.id, "cancel", reason="not needed", actor="ops")
        requeued = client.action(job.id, "requeue")

        assert cancelled.stage == Stage.CANCELLED and requeued.stage == Stage.QUEUED
        assert cancelled.events[-1].actor == "ops"


class TestTheFactoryProtocol:
    def test_claim_patch_heartbeat_and_release(self, client, product):
        job = submit(client, product, "k1", capabilities=["python"])

        claim = client.claim("f1", product, capabilities=["python"], seat_limit=2)
        building = client.patch_job(job.id, claim.lease.lease_id, "building", note="started")
        beat = client.heartbeat("f1", [product], ["python"], 2, [(job.id, claim.lease.lease_id), (job.id, "stale")])
        released = client.release_lease(job.id, claim.lease.lease_id, stage="testing",
                                        insights={"costUsd": 0.5}, branch="aq/job/x", artifacts=["log.txt"])

        assert claim.job.id == job.id and claim.run_id == f"{job.id}#1" and claim.reason is None
        assert building.stage == Stage.BUILDING
        assert [(lease.status, lease.revoked) for lease in beat.leases] == [("renewed", False), ("revoked", True)]
        assert beat.leases[0].expires_at >= claim.lease.expires_at
        assert released.stage == Stage.TESTING and released.lease is None
        assert released.runs[-1].insights["costUsd"] == 0.5 and released.runs[-1].branch == "aq/job/x"

    def test_a_job_leased_to_another_reads_without_its_lease_id(self, client, server, product, suite_token):
        job = client.submit_job(product_id=product, idempotency_key="k1").job
        client.claim("factory-a", product)
        answer = requests.post(f"{server.url}/fleet/tokens", json={"role": "viewer", "name": "watcher"},
                               headers={"Authorization": f"Bearer {suite_token}"}, timeout=10)
        with FleetClient(server.url, token=answer.json()["token"]) as viewer:
            seen = viewer.get_job(job.id)
            listed = [j for j in viewer.iter_jobs(product)]

        assert (seen.lease.factory_id, seen.lease.lease_id) == ("factory-a", None)
        assert [(j.id, j.lease.lease_id) for j in listed] == [(job.id, None)]

    def test_no_job_says_why(self, client, product):
        claim = client.claim("f1", product)
        assert claim.job is None and claim.lease is None and claim.reason == "no_job"

    def test_a_stale_lease_is_lease_lost(self, client, product):
        job = submit(client, product, "k1")
        claim = client.claim("f1", product)

        with pytest.raises(errors.LeaseLost) as raised:
            client.patch_job(job.id, "not-my-lease", "building")

        assert raised.value.status == 409 and claim.lease.lease_id != "not-my-lease"

    def test_a_move_backwards_is_an_illegal_transition(self, client, product):
        job = submit(client, product, "k1")
        lease = client.claim("f1", product).lease.lease_id
        client.patch_job(job.id, lease, "testing")

        with pytest.raises(errors.IllegalTransition):
            client.patch_job(job.id, lease, "building")

    def test_claiming_a_named_job_that_is_not_queued_is_not_claimable(self, client, product):
        job = submit(client, product, "k1")
        client.claim_job(job.id, "f1")

        with pytest.raises(errors.NotClaimable):
            client.claim_job(job.id, "f2")

    def test_the_queue_state_version_moves_when_work_is_queued(self, client, product):
        before = client.queue_state(product)
        submit(client, product, "k1")
        after = client.queue_state(product)

        assert before.version == 0 and after.version > before.version and after.product_id == product

    def test_factories_report_health_and_seats(self, client, product):
        factory = f"f-{product}"
        submit(client, product, "k1")
        client.heartbeat(factory, [product], ["go"], 3)
        client.claim(factory, product)

        mine = next(f for f in client.list_factories() if f.id == factory)

        assert (mine.health, mine.seats_used, mine.seat_limit, mine.capabilities) == ("online", 1, 3, ["go"])


class TestSettings:
    def test_weights_merge_over_the_defaults(self, client, product):
        view = client.put_weights(product, age=2.5)

        assert view.weights == {"age": 2.5}
        assert view.resolved["age"] == 2.5 and view.resolved["priority"] == 10
        assert client.get_weights(product).weights == {"age": 2.5}

    def test_budgets_are_a_disabled_feature_when_the_flag_is_off(self, client, product):
        with pytest.raises(errors.FeatureDisabled) as raised:
            client.get_budget(product)
        assert raised.value.status == 404 and raised.value.code == "feature_disabled"

    def test_budgets_when_the_flag_is_on(self, fast_client, product):
        with pytest.raises(errors.NotFound):
            fast_client.get_budget(product)

        submit(fast_client, product, "k1")
        set_ = fast_client.put_budget(product, 10.0, "daily")
        paused = fast_client.pause_budget(product)
        refused = fast_client.claim("f1", product)
        resumed = fast_client.resume_budget(product)

        assert (set_.ceiling_usd, set_.window, set_.paused) == (10.0, "daily", False)
        assert paused.paused and paused.paused_by == "manual"
        assert (refused.job, refused.reason) == (None, "budget_paused")
        assert not resumed.paused and fast_client.claim("f1", product).job is not None

    def test_health_reports_the_flags(self, fast_client):
        health = fast_client.health()
        assert health.status == "ok" and health.flags == {"preemption": True, "budgets": True}


class TestConnection:
    def test_the_url_and_key_come_from_the_environment(self, monkeypatch):
        monkeypatch.setenv("FLEET_URL", "http://fleet.example:8080/")
        monkeypatch.setenv("FLEET_KEY", "sekrit")
        with FleetClient() as fleet:
            assert (fleet.url, fleet.key) == ("http://fleet.example:8080", "sekrit")
        monkeypatch.delenv("FLEET_URL")
        monkeypatch.delenv("FLEET_KEY")
        with FleetClient() as fleet:
            assert (fleet.url, fleet.key) == ("http://127.0.0.1:7071", None)

    def test_the_token_comes_from_the_environment_or_the_caller(self, monkeypatch):
        monkeypatch.setenv("FLEET_TOKEN", "from-env")
        with FleetClient() as fleet:
            assert fleet._http.token == "from-env"
        with FleetClient(token="given") as fleet:
            assert fleet._http.token == "given"
        monkeypatch.delenv("FLEET_TOKEN")
        with FleetClient() as fleet:
            assert fleet._http.token is None

    def test_the_token_is_sent_as_a_bearer_credential(self):
        seen: list[str | None] = []

        def app(environ, start_response):
            seen.append(environ.get("HTTP_AUTHORIZATION"))
            start_response("200 OK", [("Content-Type", "application/json")])
            return [b'{"productId": "p", "version": 3, "updatedAt": null}']

        with serving.BackgroundServer(app) as echo:
            with FleetClient(echo.url, token="fleet_t", backoff=FAST) as fleet:
                assert fleet.queue_state("p").version == 3
        assert seen == ["Bearer fleet_t"]

    def test_the_key_is_sent_as_x_functions_key(self, product, tmp_path):
        with running_server(env={"FLEET_FUNCTION_KEYS": "k-one,k-two"}, db=known_to(tmp_path / "keyed.db")) as keyed:
            with FleetClient(keyed.url, key="k-two", backoff=FAST) as fleet:
                assert fleet.queue_state(product).version == 0
            with FleetClient(keyed.url, key="wrong", backoff=FAST) as fleet:
                with pytest.raises(errors.Unauthorized) as raised:
                    fleet.queue_state(product)
        assert raised.value.status == 401

    def test_an_unreachable_coordinator_raises_fleet_unreachable(self):
        with FleetClient(f"http://127.0.0.1:{closed_port()}", backoff=FAST) as fleet:
            with pytest.raises(errors.FleetUnreachable, match="connection refused"):
                fleet.queue_state("web")
