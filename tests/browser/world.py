"""The fleet the dashboard pages show, made over HTTP as factories and operators make it.

`serving(env)` starts a `fleet serve` with auth on (tokens, the default) over a fresh SQLite
file that already holds an admin token, minted into the store as `fleet tokens create` does;
`Fleet` is that admin, who mints the other roles' tokens (`POST /fleet/tokens`) and puts jobs
into the stages a test needs. `demo(fleet)` is a small, lifelike fleet for screenshots.
"""
from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import requests

from fleet import tokens
from fleet.clock import SystemClock
from fleet.context import Context
from fleet.jobs import Job
from fleet.principals import Role
from fleetclient import FleetClient
from shared.devhost.process import ServerHandle, running_server
from shared.stores.sqlite_store import SqliteStore

#: Budgets and preemption on: the budget pages have something to show.
BUDGETS_ON = {"FLEET_BUDGETS": "1", "FLEET_PREEMPTION": "1"}
#: Budgets and preemption off: the pages' empty states.
BUDGETS_OFF = {"FLEET_BUDGETS": None, "FLEET_PREEMPTION": None}
#: Auth on whatever the calling environment says; timers off, so nothing changes a page that
#: no test changed (the sweep would otherwise run at second 0 of every minute).
_SERVE_ENV = {"FLEET_AUTH": None, "FLEET_STORE": "sqlite", "FLEET_TOKEN": None, "FLEET_KEY": None}
_SERVE_ARGS = ("--no-timers",)


def mint_admin(db: Path, name: str = "ops") -> str:
    """An admin token in the fresh SQLite store `db` (created here), before a server opens it."""
    store = SqliteStore(str(db))
    try:
        return tokens.create(Context(store, SystemClock()), Role.ADMIN, name=name).token
    finally:
        store.close()


@contextlib.contextmanager
def serving(env: Mapping[str, str | None], workdir: Path | None = None) -> Iterator["Fleet"]:
    """A `fleet serve` on a free port with auth on and `env`, and its admin."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fleet-browser-")))
        db = workdir / "fleet.db"
        admin = mint_admin(db)
        server = stack.enter_context(running_server(env={**_SERVE_ENV, **env}, db=str(db), args=_SERVE_ARGS))
        fleet = stack.enter_context(Fleet(server, admin))
        yield fleet


def new_product() -> str:
    """A product id of its own, so tests sharing a server do not see each other's jobs."""
    return f"p{uuid.uuid4().hex[:10]}"


class Fleet:
    """The admin of one running server: tokens, and jobs put into the stages tests need."""

    def __init__(self, server: ServerHandle, admin_token: str) -> None:
        self.server = server
        self.url = server.url
        self.admin_token = admin_token
        self.client = FleetClient(server.url, token=admin_token)

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    # Tokens

    def token(self, role: str, name: str, **fields: object) -> str:
        """A new token for `role` (`products=[...]`, `factoryId=...` as the API takes them)."""
        answer = requests.post(
            f"{self.url}/fleet/tokens",
            json={"role": role, "name": name, **fields},
            headers={"authorization": f"Bearer {self.admin_token}"},
            timeout=30,
        )
        assert answer.status_code == 201, answer.text
        return answer.json()["token"]

    # Jobs

    def submit(self, product: str, key: str, **fields: object) -> Job:
        return self.client.submit_job(product_id=product, idempotency_key=key, **fields).job

    def running(self, product: str, key: str, factory: str = "factory-1", **fields: object):
        """A job claimed by `factory` and building: `(job, lease id)`."""
        job = self.submit(product, key, **fields)
        claimed = self.client.claim_job(job.id, factory)
        assert claimed.job is not None, claimed
        lease = claimed.lease.lease_id
        self.client.patch_job(job.id, lease, "building")
        return claimed.job, lease

    def failed(self, product: str, key: str, **fields: object) -> Job:
        """A job its factory gave up on."""
        job, lease = self.running(product, key, **fields)
        return self.client.release_lease(job.id, lease, stage="failed", insights={"costUsd": 0.05})

    def parked(self, product: str, key: str, pr_url: str, branch: str, **fields: object) -> Job:
        """A job released at `testing` without a lease: parked at the review gate, its PR reported."""
        job, lease = self.running(product, key, **fields)
        self.client.patch_job(job.id, lease, "testing", insights={"costUsd": 0.42, "tokensIn": 1200, "tokensOut": 300})
        return self.client.release_lease(job.id, lease, stage="testing", pr_url=pr_url, branch=branch)

    def composite(self, product: str, key: str, children: list[str], **fields: object) -> Job:
        """A composite waiting on a child per key in `children`."""
        specs = [{"idempotencyKey": child, "title": f"Child {child}"} for child in children]
        return self.client.submit_job(
            product_id=product, idempotency_key=key, kind="composite", children=specs, **fields
        ).job

    def stage(self, job_id: str) -> str:
        return self.client.get_job(job_id).stage.value


def demo(fleet: Fleet) -> dict[str, str]:
    """A small, lifelike fleet: two factories, jobs in most stages across two products, a
    composite, a parked job with a PR, budgets with spend. Returns the ids the pictures need."""
    web, api = "web", "api"
    for product, ceiling, window, default in ((web, 50.0, "daily", 2.0), (api, 400.0, "monthly", None)):
        fleet.client.put_budget(product, ceiling, window, default_estimate_usd=default)
    fleet.client.heartbeat("factory-1", products=[web, api], capabilities=["python", "node"], seat_limit=4)
    fleet.client.heartbeat("gpu-1", products=[api], capabilities=["python", "cuda"], seat_limit=2)
    parked = fleet.parked(
        web, "fix-login", "https://github.com/acme/web/pull/7", "aq/job/fix-login",
        title="Fix the login redirect loop", priority="high", estimated_cost_usd=1.5,
        body_md="Signing in from `/settings` sends the browser back and forth.\n\n"
                "- reproduce with a stale cookie\n- fix the redirect\n- add a test",
    )
    fleet.parked(api, "rate-limit", "https://github.com/acme/api/pull/31", "aq/job/rate-limit",
                 title="Rate-limit the export endpoint", factory="gpu-1")
    fleet.client.request_review(parked.id, required=1, reviewers=["rita", "ann"])
    fleet.running(web, "dark-mode", title="Dark mode for the settings page", estimated_cost_usd=2.0)
    fleet.running(api, "pagination", title="Cursor pagination for /orders", factory="gpu-1")
    for key, title in (("flaky-ci", "Quarantine the flaky upload test"), ("i18n", "German translations")):
        fleet.failed(web, key, title=title)
    shipped = fleet.parked(web, "typo", "https://github.com/acme/web/pull/5", "aq/job/typo", title="Fix a typo in the footer")
    fleet.client.action(shipped.id, "ship")
    for key, title, priority in (("search", "Search box on the jobs page", "normal"),
                                 ("audit-log", "Audit log export", "low"),
                                 ("hotfix", "Hotfix: checkout 500s", "critical")):
        fleet.submit(api if key == "audit-log" else web, key, title=title, priority=priority)
    composite = fleet.composite(web, "onboarding", ["onboarding-copy", "onboarding-tour"], title="New onboarding flow")
    fleet.client.heartbeat("factory-1", products=[web, api], capabilities=["python", "node"], seat_limit=4)
    return {"job": parked.id, "composite": composite.id}
