"""The coordinator core over HTTP, as factories and operators use it."""
from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest

from fleet import errors, liveness
from shared import config
from tests.e2e.conftest import Holds, Http, answered

pytestmark = pytest.mark.e2e


def race(threads: list[threading.Thread], beside: threading.Thread | None, running: threading.Event) -> None:
    """Run `threads` to their end (two minutes at most) with `running` set, and `beside` (a
    thread that works while `running` is set) alongside them; then clear it and wait for
    `beside` too."""
    running.set()
    if beside is not None:
        beside.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    running.clear()
    if beside is not None:
        beside.join(timeout=60)


def test_submit_claim_patch_ship(http):
    job = http.post("/fleet/jobs", {"productId": "web", "idempotencyKey": "fix-login", "title": "Fix login"}).json()
    claimed = http.post("/fleet/claim", {"factoryId": "f1", "productId": "web"}).json()
    lease = claimed["lease"]["leaseId"]
    assert claimed["job"]["id"] == job["id"]

    for stage in ("building", "review", "testing"):
        assert http.call("PATCH", f"/fleet/jobs/{job['id']}", {"leaseId": lease, "stage": stage}).status_code == 200
    shipped = http.post(f"/fleet/jobs/{job['id']}/actions/ship", {"actor": "ops"}).json()
    assert shipped["stage"] == "shipped" and shipped["runs"][0]["result"] == "shipped"


@pytest.mark.parametrize("mixed, reweighed", [(False, False), (True, False), (True, True)], ids=["plain", "capability-mix", "weights-changing"])
def test_racing_factories_never_hold_a_job_twice(http, server, mixed, reweighed):
    """Given 120 queued jobs, when 8 factories race to claim and ship them over HTTP,
    heartbeating what they run as they go, then every job is claimed exactly once, every
    heartbeat renews the lease its factory holds and revokes the one it has shipped; and no
    PATCH naming a superseded lease ever succeeds. `mixed`: a third of the jobs need `python`,
    and half the factories offer `gpu` besides, which no job needs (their claims narrow to
    the capability sets they can do). `reweighed`: an operator changes the product's weights
    over and over meanwhile (claims rank with the queue-state document's copy of them, or read
    them while a change re-keys the queue)."""
    jobs = 120
    product = ("race-weights" if reweighed else "race-mix") if mixed else "race"
    for n in range(jobs):
        needs = ["python"] if mixed and n % 3 == 0 else []
        job = {"productId": product, "idempotencyKey": f"j{n}", "capabilities": needs}
        assert http.post("/fleet/jobs", job).status_code == 201

    claims: list[tuple[str, str, str]] = []
    lock = threading.Lock()
    errors: list[str] = []

    def factory(name: str) -> None:
        client = Http(server.url)
        try:
            while True:
                offered = (["python", "gpu"] if name[-1] in "1357" else ["python"]) if mixed else None
                claim = {"factoryId": name, "productId": product, **({"capabilities": offered} if offered else {})}
                body = answered(lambda: client.post("/fleet/claim", claim)).json()
                assert "job" in body, body
                if body["job"] is None:
                    return
                job_id, lease = body["job"]["id"], body["lease"]["leaseId"]
                with lock:
                    claims.append((job_id, name, lease))
                for stage in ("building", "testing", "shipped"):
                    if stage == "testing" and beat(client, name, job_id, lease) != "renewed":
                        errors.append(f"{name} {job_id}: its live lease was not renewed")
                    patch = {"leaseId": lease, "stage": stage}
                    response = answered(lambda: client.call("PATCH", f"/fleet/jobs/{job_id}", patch))
                    if response.status_code != 200:
                        errors.append(f"{name} {job_id} {stage}: {response.text}")
                if beat(client, name, job_id, lease) != "revoked":
                    errors.append(f"{name} {job_id}: a shipped job's lease was renewed")
        finally:
            client.close()

    def beat(client: Http, name: str, job_id: str, lease: str) -> str:
        running = [{"jobId": job_id, "leaseId": lease}]
        response = answered(lambda: client.post(f"/fleet/factories/{name}/heartbeat", {"running": running}))
        assert response.status_code == 200, response.text
        return response.json()["leases"][0]["status"]

    racing, reweighs = threading.Event(), []

    def operator() -> None:
        client = Http(server.url)
        try:
            for n in range(1000):
                if not racing.is_set():
                    return
                response = answered(lambda: client.call("PUT", f"/fleet/weights/{product}", {"priority": 1 + n % 7 * 20, "age": 1 + n % 3}))
                if response.status_code != 200:
                    errors.append(f"weights PUT: {response.text}")
                reweighs.append(n)
        finally:
            client.close()

    threads = [threading.Thread(target=factory, args=(f"f{i}",)) for i in range(8)]
    race(threads, threading.Thread(target=operator) if reweighed else None, racing)

    assert not errors
    assert len(reweighs) > 1 if reweighed else not reweighs
    per_job = Counter(job_id for job_id, _, _ in claims)
    assert len(per_job) == jobs and set(per_job.values()) == {1}
    assert len({f for _, f, _ in claims}) > 1  # they really raced
    listed = http.get(f"/fleet/jobs?productId={product}&stage=shipped&limit=500").json()["items"]
    assert len(listed) == jobs and all(j["leaseEpoch"] == 1 for j in listed)


def test_racing_factories_giving_work_back_never_hold_a_job_twice(http, server):
    """Given 48 queued jobs, when 8 factories race to claim them over HTTP and give some back
    (a release with no stage: queued again, for anyone) before they ship them, then no job is
    ever held by two factories at once, every job ships, and its final epoch and runs count
    the claims it had: a claim that lost its pick to a take and a give-back came back for
    more rather than stopping short."""
    product, jobs = "race-give-back", 48
    for n in range(jobs):
        assert http.post("/fleet/jobs", {"productId": product, "idempotencyKey": f"g{n}"}).status_code == 201
    holds = Holds()

    def factory(name: str, seed: int) -> None:
        client, rnd = Http(server.url), random.Random(seed)
        try:
            while True:
                body = answered(lambda: client.post("/fleet/claim", {"factoryId": name, "productId": product})).json()
                if body.get("job") is None:
                    if "job" not in body:
                        holds.problems.append(f"{name}: claim answered {body}")
                    return
                job_id, lease = body["job"]["id"], body["lease"]
                holds.take(job_id, name)
                building = {"leaseId": lease["leaseId"], "stage": "building"}
                response = answered(lambda: client.call("PATCH", f"/fleet/jobs/{job_id}", building))
                if response.status_code != 200:
                    holds.problems.append(f"{name} {job_id} building: {response.text}")
                holds.free(job_id)
                give_back = lease["epoch"] < 3 and rnd.random() < 0.4
                release = {"leaseId": lease["leaseId"], **({} if give_back else {"stage": "shipped"})}
                response = answered(lambda: client.post(f"/fleet/jobs/{job_id}/lease/release", release))
                if response.status_code != 200:
                    holds.problems.append(f"{name} {job_id} release: {response.text}")
        finally:
            client.close()

    threads = [threading.Thread(target=factory, args=(f"g{n}", n)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)

    assert holds.problems == []
    assert sum(holds.claims_of.values()) > jobs  # work was given back and claimed again
    listed = http.get(f"/fleet/jobs?productId={product}&limit=500").json()["items"]
    assert len(listed) == jobs and {j["stage"] for j in listed} == {"shipped"}
    for job in listed:
        assert job["leaseEpoch"] == holds.claims_of[job["id"]] == len(job["runs"])


def test_racing_factories_retrying_work_never_hold_a_job_twice_nor_take_it_before_its_wait(serve):
    """Given 32 queued jobs and a one-second retry backoff, when 8 factories race to claim them
    over HTTP and release some for a retry before they ship them, while the sweep runs over
    and over, then no job is ever held by two factories at once, no claim takes a job before
    its wait has ended, and every job ships with as many runs as it had claims."""
    product, jobs = "race-retry", 32
    with serve({"FLEET_RETRY_BACKOFF_SECONDS": "1"}, args=("--no-timers",)) as server:
        http = Http(server.url)
        for n in range(jobs):
            assert http.post("/fleet/jobs", {"productId": product, "idempotencyKey": f"r{n}"}).status_code == 201
        holds, shipped, racing = Holds(), set(), threading.Event()

        def factory(name: str, seed: int) -> None:
            client, rnd = Http(server.url), random.Random(seed)
            try:
                deadline = time.monotonic() + 90
                while len(shipped) < jobs and time.monotonic() < deadline:
                    body = answered(lambda: client.post("/fleet/claim", {"factoryId": name, "productId": product})).json()
                    if body.get("job") is None:
                        if "job" not in body:
                            holds.problems.append(f"{name}: claim answered {body}")
                        time.sleep(0.05)
                        continue
                    job_id, lease = body["job"]["id"], body["lease"]
                    holds.take(job_id, name)
                    holds.free(job_id)
                    retry = lease["epoch"] < 3 and rnd.random() < 0.5
                    release = {"leaseId": lease["leaseId"], **({"result": "retry"} if retry else {"stage": "shipped"})}
                    response = answered(lambda: client.post(f"/fleet/jobs/{job_id}/lease/release", release))
                    if response.status_code != 200:
                        holds.problems.append(f"{name} {job_id} release: {response.text}")
                    elif not retry:
                        shipped.add(job_id)
            finally:
                client.close()

        def sweeper() -> None:
            client = Http(server.url)
            try:
                while racing.is_set():
                    answered(lambda: client.post("/admin/functions/sweep_expired_leases", {"input": ""}))
                    time.sleep(0.2)
            finally:
                client.close()

        threads = [threading.Thread(target=factory, args=(f"r{n}", n)) for n in range(8)]
        race(threads, threading.Thread(target=sweeper), racing)

        assert holds.problems == []
        assert sum(holds.claims_of.values()) > jobs  # work was retried and claimed again
        listed = http.get(f"/fleet/jobs?productId={product}&limit=500").json()["items"]
        assert len(listed) == jobs and {j["stage"] for j in listed} == {"shipped"}
        for job in listed:
            assert job["leaseEpoch"] == holds.claims_of[job["id"]] == len(job["runs"])
            waits = [e["detail"]["retryAt"] for e in job["events"] if e["type"] == "retry"]
            later = [e["at"] for e in job["events"] if e["type"] == "claimed"][1:]
            assert len(waits) == len(later) and all(at >= until for at, until in zip(later, waits)), job["events"]
        http.close()


def test_superseded_leases_are_fenced_under_contention(http, server):
    """Given jobs whose leases an operator revokes and other factories re-claim, when the old
    holders keep writing with their old leases (concurrently), every such write is 409."""
    keys = [f"s{n}" for n in range(12)]
    for key in keys:
        http.post("/fleet/jobs", {"productId": "fence", "idempotencyKey": key})
    old = [http.post("/fleet/claim", {"factoryId": "old", "productId": "fence"}).json() for _ in keys]
    for claimed in old:
        http.post(f"/fleet/jobs/{claimed['job']['id']}/actions/requeue", {"actor": "ops"})

    outcomes: list[int] = []
    lock = threading.Lock()

    def zombie(claimed: dict) -> None:
        client = Http(server.url)
        for stage in ("building", "review", "testing", "shipped"):
            status = client.call(
                "PATCH", f"/fleet/jobs/{claimed['job']['id']}", {"leaseId": claimed["lease"]["leaseId"], "stage": stage}
            ).status_code
            with lock:
                outcomes.append(status)
        client.close()

    def newcomer() -> None:
        client = Http(server.url)
        while client.post("/fleet/claim", {"factoryId": "new", "productId": "fence"}).json()["job"]:
            pass
        client.close()

    threads = [threading.Thread(target=zombie, args=(c,)) for c in old] + [threading.Thread(target=newcomer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert outcomes and set(outcomes) == {409}
    for claimed in old:
        job = http.get(f"/fleet/jobs/{claimed['job']['id']}").json()
        assert job["lease"]["factoryId"] == "new" and job["lease"]["epoch"] == 2 and job["stage"] == "assigned"


def test_leases_expire_through_the_admin_endpoint(serve):
    with serve({"FLEET_LEASE_SECONDS": "1"}) as server:
        http = Http(server.url)
        job = http.post("/fleet/jobs", {"productId": "p", "idempotencyKey": "k"}).json()
        lease = http.post("/fleet/claim", {"factoryId": "f1", "productId": "p"}).json()["lease"]
        time.sleep(1.2)  # the lease is 1 s long; the server's clock is real
        assert http.post("/admin/functions/sweep_expired_leases", {"input": ""}).status_code == 202
        swept = http.get(f"/fleet/jobs/{job['id']}").json()
        assert swept["stage"] == "queued" and swept["attempts"] == 1
        late = http.call("PATCH", f"/fleet/jobs/{job['id']}", {"leaseId": lease["leaseId"], "stage": "building"})
        assert late.status_code == 409 and late.json()["code"] == "lease_lost"
        http.close()


def test_a_lease_lives_while_its_factory_heartbeats_and_ends_when_it_stops(serve):
    """Over both stores, on the server's real clock: a lease its factory keeps heartbeating
    outlives its own expiry (the sweep leaves it, its writes are accepted); once the
    heartbeats stop, the sweep requeues it and its writes are lease_lost."""
    with serve({"FLEET_LEASE_SECONDS": "2"}) as server:
        http = Http(server.url)
        job = http.post("/fleet/jobs", {"productId": "p", "idempotencyKey": "k"}).json()
        lease = http.post("/fleet/claim", {"factoryId": "f1", "productId": "p"}).json()["lease"]
        running = {"running": [{"jobId": job["id"], "leaseId": lease["leaseId"]}]}
        sweep = lambda: http.post("/admin/functions/sweep_expired_leases", {"input": ""}).status_code  # noqa: E731
        for _ in range(8):  # 4 s: twice the lease term
            beat = http.post("/fleet/factories/f1/heartbeat", running).json()["leases"][0]
            assert beat["status"] == "renewed"
            time.sleep(0.5)
            assert sweep() == 202
        kept = http.get(f"/fleet/jobs/{job['id']}").json()
        assert (kept["stage"], kept["attempts"], kept["lease"]["leaseId"]) == ("assigned", 0, lease["leaseId"])
        assert kept["lease"]["expiresAt"] < beat["expiresAt"]  # its own expiry: the claim's
        patch = {"leaseId": lease["leaseId"], "stage": "building"}
        assert http.call("PATCH", f"/fleet/jobs/{job['id']}", patch).status_code == 200
        time.sleep(2.3)  # no heartbeat for longer than a term
        assert sweep() == 202
        swept = http.get(f"/fleet/jobs/{job['id']}").json()
        assert (swept["stage"], swept["attempts"], swept["events"][-2]["type"]) == ("queued", 1, "lease_expired")
        late = http.call("PATCH", f"/fleet/jobs/{job['id']}", {**patch, "stage": "testing"})
        assert late.status_code == 409 and late.json()["code"] == "lease_lost"
        http.close()


def test_concurrent_heartbeats_of_one_factory_never_move_its_liveness_back(serve, store_env):
    """Over both stores, on the server's real clock: threads of one factory heartbeating at
    once (each naming its own few of the factory's leases) land in whatever order; however
    they land, the factory document's `leaseUntil` never moves back (as read between them) and
    ends as the latest heartbeat's, and it lists every lease a latest heartbeat answered
    `renewed`. A
    heartbeat that kept losing the race to its siblings is a clean 503, worth retrying."""
    threads, rounds = 8, 20
    with serve(args=("--no-timers",)) as server:
        http = Http(server.url)
        store = config.store_from({**store_env, "FLEET_DB": server.db})
        try:
            for i in range(threads):
                http.post("/fleet/jobs", {"productId": "p", "idempotencyKey": f"k{i}"})
            leases = []
            for _ in range(threads):
                claimed = http.post("/fleet/claim", {"factoryId": "f1", "productId": "p"}).json()
                leases.append({"jobId": claimed["job"]["id"], "leaseId": claimed["lease"]["leaseId"]})
            answered: list[tuple[str, frozenset[str]]] = []  # (expiresAt, leases renewed)
            problems: list[str] = []
            lock = threading.Lock()
            barrier = threading.Barrier(threads)

            def beat(t: int) -> None:
                client = Http(server.url)
                named = [leases[(t + k) % threads] for k in range(3)]
                try:
                    barrier.wait()
                    for _ in range(rounds):
                        response = client.post("/fleet/factories/f1/heartbeat", {"products": ["p"], "running": named})
                        if response.status_code == 503:
                            if response.json()["code"] != "store_busy" or not response.headers.get("Retry-After"):
                                problems.append(f"thread {t}: {response.text}")
                            continue
                        if response.status_code != 200:
                            problems.append(f"thread {t}: {response.status_code} {response.text}")
                            continue
                        renewed = [a for a in response.json()["leases"] if a["status"] == "renewed"]
                        if len(renewed) != len(named):
                            problems.append(f"thread {t}: a live lease answered revoked: {response.text}")
                            continue
                        with lock:
                            answered.append(
                                (renewed[0]["expiresAt"], frozenset(liveness.listed(a["leaseId"]) for a in renewed))
                            )
                except Exception as exc:  # noqa: BLE001 - reported below, in the test's thread
                    problems.append(f"thread {t}: {exc!r}")
                finally:
                    client.close()

            def watch() -> None:
                # What the store holds between the heartbeats: `leaseUntil` never moves back.
                seen = ""
                while any(worker.is_alive() for worker in workers):
                    try:
                        until = store.read("factories", "f1", "f1").get("leaseUntil", "")
                    except errors.NotFound:
                        continue
                    if until < seen:
                        problems.append(f"leaseUntil moved back from {seen} to {until}")
                    seen = max(seen, until)

            workers = [threading.Thread(target=beat, args=(t,)) for t in range(threads)]
            watcher = threading.Thread(target=watch)
            for worker in workers:
                worker.start()
            watcher.start()
            for worker in workers:
                worker.join(timeout=120)
            watcher.join(timeout=10)

            assert problems == [], server.log()[-20000:]
            assert len(answered) >= threads * rounds // 2
            doc = store.read("factories", "f1", "f1")
            latest = max(at for at, _ in answered)
            assert doc["leaseUntil"] == latest
            assert any(renewed <= set(doc["leases"]) for at, renewed in answered if at == latest), doc["leases"]
        finally:
            store.close()
            http.close()


def test_a_job_document_without_runs_or_events_is_claimed(serve, store_env):
    """Over both stores: a queued job whose document lacks `runs` and `events` (an older
    release's, a hand-written one) is claimed, and the claim answers its run and event."""
    with serve(args=("--no-timers",)) as server:
        http = Http(server.url)
        store = config.store_from({**store_env, "FLEET_DB": server.db})
        try:
            job = http.post("/fleet/jobs", {"productId": "p", "idempotencyKey": "older"}).json()
            doc = store.read("jobs", "p", job["id"])
            store.replace("jobs", {k: v for k, v in doc.items() if k not in ("runs", "events")}, doc["_etag"])

            response = http.post("/fleet/claim", {"factoryId": "f1", "productId": "p"})

            assert response.status_code == 200, response.text
            claimed = response.json()
            assert claimed["job"]["id"] == job["id"] and claimed["lease"]["factoryId"] == "f1"
            assert [r["runId"] for r in claimed["job"]["runs"]] == [claimed["runId"]] == [f"{job['id']}#1"]
            assert [e["type"] for e in claimed["job"]["events"]] == ["claimed"]
            stored = store.read("jobs", "p", job["id"])
            assert (stored["stage"], stored["lease"]["leaseId"]) == ("assigned", claimed["lease"]["leaseId"])
            assert [r["runId"] for r in stored["runs"]] == [claimed["runId"]]
            assert [e["type"] for e in stored["events"]] == ["claimed"]
        finally:
            store.close()
            http.close()


def test_data_survives_a_restart(http, server):
    job = http.post("/fleet/jobs", {"productId": "p", "idempotencyKey": "durable"}).json()
    http.post("/fleet/claim", {"factoryId": "f1", "productId": "p"})
    server.restart()
    again = Http(server.url)
    body = again.get(f"/fleet/jobs/{job['id']}").json()
    assert body["stage"] == "assigned" and body["lease"]["factoryId"] == "f1"
    assert again.get("/fleet/queue-state?productId=p").json()["version"] == 1
    again.close()


def test_function_keys_guard_everything_but_health(serve):
    with serve({"FLEET_FUNCTION_KEYS": "k1,k2"}) as server:
        anonymous, keyed = Http(server.url), Http(server.url, key="k2")
        assert anonymous.get("/fleet/health").status_code == 200
        denied = anonymous.get("/fleet/jobs")
        assert denied.status_code == 401 and denied.headers["content-type"] == "application/problem+json"
        assert anonymous.get("/fleet/jobs?code=k1").status_code == 200
        assert keyed.get("/fleet/jobs").status_code == 200
        assert anonymous.post("/admin/functions/sweep_expired_leases", {"input": ""}).status_code == 401
        assert keyed.post("/admin/functions/sweep_expired_leases", {"input": ""}).status_code == 202
        anonymous.close()
        keyed.close()


def test_bad_input_over_the_wire(http):
    raw = http.session.post(http.url + "/fleet/jobs", data=b"{nope", headers={"content-type": "application/json"})
    assert raw.status_code == 400 and raw.json()["code"] == "validation_error"
    big = http.session.post(http.url + "/fleet/jobs", data=b"x" * (5 * 1024 * 1024))
    assert big.status_code == 413
    assert http.get("/fleet/jobs/p:zzzzzzzzzzzzzzzzzzzz").status_code == 404
    assert http.get("/fleet/nothing/here").json()["code"] == "not_found"


def test_each_response_reports_its_request_charge(http, store_env):
    response = http.post("/fleet/jobs", {"productId": "p", "idempotencyKey": "charged"})
    charge = float(response.headers["x-fleet-request-charge"])
    assert charge > 0 if store_env["FLEET_STORE"] == "cosmos" else charge == 0
    poll = http.get("/fleet/queue-state?productId=p")
    if store_env["FLEET_STORE"] == "cosmos":
        assert float(poll.headers["x-fleet-request-charge"]) >= 1  # one point read
