"""The soak's workload: factories driving jobs through their whole life over HTTP, each answer
checked as it comes.

Each `Factory` works its own product, so every answer it gets is predictable: its claim gets
the job it just submitted, its listing starts with that job. One cycle is about eleven
requests, the mix a real factory and its operator send: submit (every fifth one repeated, which
must answer 200 with the same job), queue-state poll, claim, heartbeat, PATCH building, PATCH
testing, release (shipped; every third cycle a retry first, then a re-claim and PATCHes to testing
and shipped), GET the job, list the product, poll again.

Half the factories reuse one session (`keep_alive`: one connection for as long as the server
keeps it open), the others open a new connection per request, as curl and many HTTP clients
do. The dev host serves each connection on a thread of its own, so the store is reached from
ever new threads.

With `tolerate_outage`, a factory accepts `503` (with `Retry-After` and a store code) for any
request: it drops that job (its state is unknown to it, as to a real factory) and starts a new
cycle. Everything it was told is recorded (`acknowledged`, `claims`) for the consistency checks
afterwards, and `slowest` says how long its slowest answer took.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import requests

#: What a server running this workload needs: a job released for a retry claimable at once (a
#: cycle re-claims the job it retried; the wait and its move back are tested on their own).
SERVER_ENV = {"FLEET_RETRY_BACKOFF_SECONDS": "0"}

#: Seconds a client waits for an answer before the test fails (the server must answer first).
CLIENT_TIMEOUT = 30.0
#: The codes a store outage may answer with.
OUTAGE_CODES = frozenset({"store_busy", "store_unavailable"})


class Outage(Exception):
    """The coordinator answered 503: the store could not serve this request."""


@dataclass(frozen=True)
class Claim:
    job_id: str
    lease_id: str
    epoch: int


@dataclass
class Factory:
    url: str
    index: int
    keep_alive: bool = True
    tolerate_outage: bool = False
    #: The API token sent with every request (None: the server runs with auth off).
    token: str | None = None
    name: str = field(init=False)
    product: str = field(init=False)
    requests: int = 0
    slowest: float = 0.0
    outages: Counter = field(default_factory=Counter)
    #: Job ids whose submit answered 201.
    acknowledged: list[str] = field(default_factory=list)
    #: Every claim that answered with a job.
    claims: list[Claim] = field(default_factory=list)
    cycles_done: int = 0
    _version: int = 0
    _session: requests.Session | None = None

    def __post_init__(self) -> None:
        self.name = f"soak-f{self.index}"
        self.product = f"soak-p{self.index}"
        if self.keep_alive:
            self._session = requests.Session()
            self._session.headers.update(credentials(self.token))

    def close(self) -> None:
        if self._session is not None:
            self._session.close()

    # the cycle

    def cycle(self, n: int) -> bool:
        """One job's life. True when it ran to the end; False when an outage cut it short."""
        try:
            self._cycle(n)
        except Outage:
            return False
        self.cycles_done += 1
        return True

    def _cycle(self, n: int) -> None:
        key = f"{self.name}-{n}"
        spec = {"productId": self.product, "idempotencyKey": key, "title": f"soak {n}", "priority": "normal"}
        job = self.call("POST", "/fleet/jobs", spec, expect=201)
        assert (job["productId"], job["idempotencyKey"], job["stage"]) == (self.product, key, "queued"), job
        self.acknowledged.append(job["id"])
        if n % 5 == 0:
            again = self.call("POST", "/fleet/jobs", spec, expect=200)
            assert again["id"] == job["id"], again
        self.poll()

        claim = self.claim()
        if not self.tolerate_outage:  # only this cycle's job is queued in this product
            assert claim.job_id == job["id"], (claim, job["id"])
        beat = self.call("POST", f"/fleet/factories/{self.name}/heartbeat", {
            "products": [self.product], "seatLimit": 2, "running": [{"jobId": claim.job_id, "leaseId": claim.lease_id}],
        })
        assert [(lease["jobId"], lease["status"]) for lease in beat["leases"]] == [(claim.job_id, "renewed")], beat
        self.patch(claim, "building")
        self.patch(claim, "testing", insights={"costUsd": 0.01, "tokensIn": n})

        if n % 3 == 0:
            retried = self.call("POST", f"/fleet/jobs/{claim.job_id}/lease/release",
                                {"leaseId": claim.lease_id, "result": "retry"})
            assert (retried["stage"], retried["lease"]) == ("queued", None), retried
            again = self.claim()
            if not self.tolerate_outage:
                assert again.job_id == claim.job_id and again.epoch == claim.epoch + 1, (again, claim)
            self.patch(again, "testing")
            self.patch(again, "shipped")
            claim = again
        else:
            shipped = self.call("POST", f"/fleet/jobs/{claim.job_id}/lease/release",
                                {"leaseId": claim.lease_id, "stage": "shipped", "prUrl": f"https://example.com/pr/{n}"})
            assert (shipped["stage"], shipped["lease"]) == ("shipped", None), shipped

        final = self.call("GET", f"/fleet/jobs/{claim.job_id}")
        assert (final["stage"], final["runs"][-1]["result"]) == ("shipped", "shipped"), final
        listed = self.call("GET", f"/fleet/jobs?productId={self.product}&limit=5")
        assert listed["items"] and all(item["productId"] == self.product for item in listed["items"]), listed
        if not self.tolerate_outage:
            assert listed["items"][0]["id"] == job["id"], listed["items"][0]
        self.poll()

    def claim(self) -> Claim:
        body = self.call("POST", "/fleet/claim", {"factoryId": self.name, "productId": self.product})
        assert body["job"] is not None and body["job"]["productId"] == self.product, body
        lease = body["lease"]
        assert lease["factoryId"] == self.name and body["job"]["stage"] == "assigned", body
        claim = Claim(body["job"]["id"], lease["leaseId"], lease["epoch"])
        self.claims.append(claim)
        return claim

    def patch(self, claim: Claim, stage: str, **fields: Any) -> None:
        job = self.call("PATCH", f"/fleet/jobs/{claim.job_id}", {"leaseId": claim.lease_id, "stage": stage, **fields})
        assert job["stage"] == stage, job

    def poll(self) -> None:
        state = self.call("GET", f"/fleet/queue-state?productId={self.product}")
        assert state["productId"] == self.product and state["version"] >= max(1, self._version), state
        self._version = state["version"]

    # one request

    def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        started = time.monotonic()
        if self._session is not None:
            response = self._session.request(method, self.url + path, json=body, timeout=CLIENT_TIMEOUT)
        else:
            response = requests.request(method, self.url + path, json=body, timeout=CLIENT_TIMEOUT,
                                        headers={"Connection": "close", **credentials(self.token)})
        elapsed = time.monotonic() - started
        self.requests += 1
        self.slowest = max(self.slowest, elapsed)
        if response.status_code == 503 and self.tolerate_outage:
            problem = response.json()
            assert response.headers["Content-Type"] == "application/problem+json", response.headers
            assert problem["code"] in OUTAGE_CODES and int(response.headers["Retry-After"]) >= 1, problem
            self.outages[problem["code"]] += 1
            raise Outage(problem["code"])
        assert response.status_code == expect, f"{method} {path} -> {response.status_code} {response.text[:500]}"
        return response.json()


def run(factories: list[Factory], cycles: int | None = None, stop: threading.Event | None = None,
        first_cycle: int = 0) -> None:
    """Each factory on a thread of its own, `cycles` cycles each (or until `stop` is set);
    re-raises the first failure once every thread has ended."""
    failures: list[BaseException] = []

    def work(factory: Factory) -> None:
        n = first_cycle
        try:
            while (cycles is None or n < first_cycle + cycles) and not (stop is not None and stop.is_set()):
                factory.cycle(n)
                n += 1
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            failures.append(exc)
            if stop is not None:
                stop.set()

    threads = [threading.Thread(target=work, args=(f,), name=f.name) for f in factories]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


#: Stages in which a job is held under a lease.
HELD = frozenset({"assigned", "building", "review", "testing"})


def credentials(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def check_documents(url: str, factories: list[Factory], token: str | None = None) -> int:
    """The jobs' documents are whole and agree with what the factories were told: every
    acknowledged submit exists; no two acknowledged claims of a job share a lease epoch (no job
    was ever held by two leases at once); a job's lease, runs and stage agree with each other
    (a lease only on a held job, with the job's newest epoch, its run open; no open run
    without a lease; a run per claim; a shipped job's last run shipped). Returns the number of
    jobs checked."""
    checked = 0
    with requests.Session() as session:
        session.headers.update(credentials(token))
        for factory in factories:
            jobs = _all_jobs(session, url, factory.product)
            for job_id in factory.acknowledged:
                assert job_id in jobs, f"acknowledged submit {job_id} is missing"
            epochs: dict[str, list[int]] = {}
            for claim in factory.claims:
                epochs.setdefault(claim.job_id, []).append(claim.epoch)
            for job_id, claimed in epochs.items():
                assert len(claimed) == len(set(claimed)), f"{job_id} was claimed twice under one epoch: {claimed}"
                assert max(claimed) <= jobs[job_id]["leaseEpoch"], (job_id, claimed, jobs[job_id]["leaseEpoch"])
            for job in jobs.values():
                _check_job(job)
                checked += 1
    return checked


def _check_job(job: dict[str, Any]) -> None:
    lease, runs, stage = job["lease"], job["runs"], job["stage"]
    open_runs = [run for run in runs if run["endedAt"] is None]
    assert len(runs) + job["runsDropped"] == job["leaseEpoch"], f"{job['id']}: a run per claim: {job}"
    if lease is not None:
        assert stage in HELD and lease["epoch"] == job["leaseEpoch"], f"{job['id']}: stray lease: {job}"
        assert open_runs == [runs[-1]] and runs[-1]["factoryId"] == lease["factoryId"], f"{job['id']}: {job}"
    else:
        assert not open_runs, f"{job['id']}: a run open without a lease: {job}"
    if stage == "shipped":
        assert runs[-1]["result"] == "shipped", f"{job['id']}: {job}"


def _all_jobs(session: requests.Session, url: str, product: str) -> dict[str, dict[str, Any]]:
    jobs: dict[str, dict[str, Any]] = {}
    continuation = None
    while True:
        params = {"productId": product, "limit": 500, **({"continuation": continuation} if continuation else {})}
        response = session.get(f"{url}/fleet/jobs", params=params, timeout=CLIENT_TIMEOUT)
        assert response.status_code == 200, response.text
        page = response.json()
        jobs.update((job["id"], job) for job in page["items"])
        continuation = page["continuation"]
        if not continuation:
            return jobs
