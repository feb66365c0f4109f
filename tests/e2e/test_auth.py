"""Who may do what, over HTTP against `fleet serve` with auth on, on SQLite and on Cosmos.

The table is every HTTP function of the app (from its bindings: a new endpoint without a row
fails `test_every_endpoint_has_a_row`) against every role: a role holding the endpoint's
permission is let through (whatever the use case then answers, never 401 or 403), any other
is refused with 403 `forbidden` naming the permission. Then the edges: no token, a malformed
header, an unknown, revoked or expired token (401 `unauthorized`, `WWW-Authenticate: Bearer`),
a principal scoped to another product (404, or 403 for putting work into it), a factory
speaking for another factory, and lease ids shown only to those who may write with them.
Tokens are minted in the server's own store, as `fleet tokens create` does.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator

import pytest
import requests

import function_app
from fleet import tokens
from fleet.clock import FixedClock
from fleet.context import Context
from fleet.jobs import job_id
from fleet.principals import GRANTS, Permission, Role
from dashboard import web
from shared import config, http
from shared.devhost import cli, hosting

P, Q = "p", "q"
FACTORY = "f1"
A = job_id(P, "a")
COMPOSITE = job_id(P, "comp")


@dataclass(frozen=True)
class Row:
    """How to call one endpoint: its method, a path, a body (a function of the role's name, so
    repeated writes do not collide)."""

    method: str
    path: str
    body: Callable[[str], Any] | None = None


#: One row per HTTP function of the app, by function name.
ROWS: dict[str, Row] = {
    "submit_job": Row("POST", "/fleet/jobs", lambda r: {"productId": P, "idempotencyKey": f"by-{r}"}),
    "list_jobs": Row("GET", "/fleet/jobs"),
    "get_job": Row("GET", f"/fleet/jobs/{A}"),
    "patch_job": Row("PATCH", f"/fleet/jobs/{A}", lambda r: {"leaseId": "not-the-lease", "stage": "building"}),
    "release_lease": Row("POST", f"/fleet/jobs/{A}/lease/release", lambda r: {"leaseId": "not-the-lease", "result": "retry"}),
    "report_run": Row("POST", f"/fleet/jobs/{A}/lease/report", lambda r: {"leaseId": "not-the-lease", "insights": {"costUsd": 1}}),
    "job_action": Row("POST", f"/fleet/jobs/{job_id(P, 'spare')}/actions/ship", lambda r: {"reason": "table"}),
    "add_children": Row("POST", f"/fleet/jobs/{COMPOSITE}/children", lambda r: {"children": [{"idempotencyKey": f"c-{r}"}]}),
    "get_dag": Row("GET", f"/fleet/jobs/{COMPOSITE}/dag"),
    "request_review": Row("POST", f"/fleet/jobs/{A}/review/request", lambda r: {"required": 1}),
    "submit_review": Row("POST", f"/fleet/jobs/{A}/review", lambda r: {"decision": "approve"}),
    "claim_next": Row("POST", "/fleet/claim", lambda r: {"factoryId": FACTORY, "productId": P}),
    "claim_job": Row("POST", f"/fleet/jobs/{A}/claim", lambda r: {"factoryId": FACTORY}),
    "list_factories": Row("GET", "/fleet/factories"),
    "heartbeat": Row("POST", f"/fleet/factories/{FACTORY}/heartbeat", lambda r: {"products": [P]}),
    "get_queue_state": Row("GET", f"/fleet/queue-state?productId={P}"),
    "get_weights": Row("GET", f"/fleet/weights/{P}"),
    "put_weights": Row("PUT", f"/fleet/weights/{P}", lambda r: {"age": 2}),
    "get_budget": Row("GET", f"/fleet/budgets/{P}"),
    "put_budget": Row("PUT", f"/fleet/budgets/{P}", lambda r: {"ceilingUsd": 100, "window": "daily"}),
    "pause_budget": Row("POST", f"/fleet/budgets/{P}/pause"),
    "resume_budget": Row("POST", f"/fleet/budgets/{P}/resume"),
    "create_token": Row("POST", "/fleet/tokens", lambda r: {"role": "viewer", "name": f"from-{r}"}),
    "list_tokens": Row("GET", "/fleet/tokens"),
    "get_token": Row("GET", "/fleet/tokens/0000000000000000"),
    "revoke_token": Row("DELETE", "/fleet/tokens/0000000000000000"),
    "health": Row("GET", "/fleet/health"),
    "openapi_document": Row("GET", "/fleet/openapi.json"),
}
#: The dev host's own endpoint: run a timer now.
ADMIN_ROW = Row("POST", "/admin/functions/sweep_expired_leases", lambda r: {"input": ""})


def _http_functions() -> dict[str, Permission | None]:
    """Every HTTP function of the app (the API's and the dashboard's), and the permission it
    declares."""
    return {
        f.get_function_name(): (http.declared(f.get_user_function()) or web.declared(f.get_user_function())).needs
        for f in hosting.functions_of(function_app.app)
        if f.is_http_function()
    }


def test_every_endpoint_has_a_row():
    """The API's rows are here; the dashboard's are in `test_dashboard.PAGES`."""
    assert set(ROWS) == {name for name in _http_functions() if not name.startswith("dashboard_")}


class Coordinator:
    """A `fleet serve` with auth on, and tokens minted in its store."""

    def __init__(self, server, env: dict[str, str]) -> None:
        self.server, self.url = server, server.url
        self.ctx = Context(config.store_from(env))
        self.session = requests.Session()
        self.minted: list[str] = []

    def mint(self, role: Role, *, clock=None, **fields: Any) -> str:
        ctx = self.ctx if clock is None else Context(self.ctx.store, clock)
        token = tokens.create(ctx, role, **fields).token
        self.minted.append(token)
        return token

    def call(self, method: str, path: str, body: Any = None, token: str | None = None, headers=None):
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        return self.session.request(method, self.url + path, json=body, headers=sent, timeout=30)

    def close(self) -> None:
        self.session.close()
        self.ctx.store.close()


@pytest.fixture
def coordinator(serve, store_env) -> Iterator[Coordinator]:
    # No retry backoff: a retried job is claimable at once (no timers run to move it back).
    with serve({"FLEET_AUTH": "tokens", "FLEET_BUDGETS": "1", "FLEET_RETRY_BACKOFF_SECONDS": "0"}, args=("--no-timers",)) as server:
        env = {**store_env, "FLEET_DB": server.db}
        coordinator = Coordinator(server, env)
        try:
            yield coordinator
        finally:
            coordinator.close()


def _seed(c: Coordinator, admin: str) -> None:
    """The jobs the rows name: `a` (queued, then claimed by the factory), a composite, a spare."""
    for body in (
        {"productId": P, "idempotencyKey": "a"},
        {"productId": P, "idempotencyKey": "spare"},
        {"productId": P, "idempotencyKey": "comp", "kind": "composite", "children": [{"idempotencyKey": "c0"}]},
        {"productId": Q, "idempotencyKey": "theirs"},
    ):
        assert c.call("POST", "/fleet/jobs", body, admin).status_code == 201


def _problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["code"] == code and problem["status"] == status
    return problem


def test_every_endpoint_for_every_role(coordinator):
    c = coordinator
    admin = c.mint(Role.ADMIN, name="admin")
    _seed(c, admin)
    roles = {role: c.mint(role, name=f"the-{role.value}", factory_id=FACTORY if role == Role.FACTORY else None)
             for role in Role}
    needs = _http_functions()
    checked = 0
    for name, row in ROWS.items():
        for role, token in roles.items():
            response = c.call(row.method, row.path, row.body(role.value) if row.body else None, token)
            permission = needs[name]
            where = f"{role.value} {row.method} {row.path}: {response.status_code} {response.text[:300]}"
            if permission is None:
                assert response.status_code == 200, where
            elif permission in GRANTS[role]:
                assert response.status_code not in (401, 403) and response.status_code < 500, where
            else:
                problem = _problem(response, 403, "forbidden")
                assert problem["permission"] == permission.value, where
            checked += 1
    for role, token in roles.items():
        response = c.call(ADMIN_ROW.method, ADMIN_ROW.path, ADMIN_ROW.body(role.value), token)
        if role == Role.ADMIN:
            assert response.status_code == 202
        else:
            assert _problem(response, 403, "forbidden")["permission"] == Permission.RUN_TIMERS.value
    assert checked == len(ROWS) * len(Role)
    # Nothing of any token reaches the server's log: not the token, not its hash.
    log = c.server.log() + c.server.output()
    for token in c.minted:
        secret = token.split("_", 2)[2]  # the whole secret (it may hold "_")
        assert token not in log and secret not in log
        assert hashlib.sha256(secret.encode()).hexdigest() not in log


def test_a_token_revoked_against_the_store_is_refused_once_the_server_reads_it_again(
    serve, store_env, monkeypatch, capsys
):
    # A server that trusts a token's record for 1 s, and a token it has read and remembers
    with serve({"FLEET_AUTH": "tokens", "FLEET_TOKEN_RECHECK_SECONDS": "1"}, args=("--no-timers",)) as server:
        c = Coordinator(server, {**store_env, "FLEET_DB": server.db})
        try:
            token = c.mint(Role.VIEWER, name="leaked")
            for _ in range(2):
                assert c.call("GET", "/fleet/jobs", token=token).status_code == 200
            # `fleet tokens revoke`, from another process's view: the store, not the server
            for name, value in {**store_env, "FLEET_DB": server.db}.items():
                monkeypatch.setenv(name, value)
            assert cli.main(["tokens", "revoke", token.split("_")[1]]) == 0
            assert "within FLEET_TOKEN_RECHECK_SECONDS" in capsys.readouterr().out
            deadline = time.monotonic() + 10
            while c.call("GET", "/fleet/jobs", token=token).status_code == 200:
                assert time.monotonic() < deadline, "the revoked token still works"
                time.sleep(0.2)
            _problem(c.call("GET", "/fleet/jobs", token=token), 401, "unauthorized")
        finally:
            c.close()


def test_without_a_valid_credential_every_endpoint_but_health_and_the_document_is_401(coordinator):
    c = coordinator
    revoked = c.mint(Role.ADMIN, name="revoked")
    assert c.call("GET", "/fleet/jobs", token=revoked).status_code == 200
    assert c.call("GET", "/fleet/jobs", token=revoked).status_code == 200  # remembered by the server
    assert c.call("DELETE", f"/fleet/tokens/{revoked.split('_')[1]}", token=c.mint(Role.ADMIN)).status_code == 200
    expired = c.mint(Role.ADMIN, clock=FixedClock("2020-01-01T00:00:00.000Z"), expires_in=timedelta(days=1))
    unknown = "fleet_0123456789abcdef_" + "A" * 43
    attempts = {
        "no token": {},
        "basic scheme": {"Authorization": "Basic YWRtaW46YWRtaW4="},
        "empty bearer": {"Authorization": "Bearer "},
        "not a token": {"Authorization": "Bearer hello"},
        "unknown": {"Authorization": f"Bearer {unknown}"},
        "revoked": {"Authorization": f"Bearer {revoked}"},
        "expired": {"Authorization": f"Bearer {expired}"},
        "easy auth header outside its mode": {"X-MS-CLIENT-PRINCIPAL": "e30="},
    }
    for name, row in [*ROWS.items(), ("admin", ADMIN_ROW)]:
        for why, headers in attempts.items():
            response = c.call(row.method, row.path, row.body("x") if row.body else None, headers=headers)
            if name in ("health", "openapi_document"):
                assert response.status_code == 200, (name, why)
                continue
            _problem(response, 401, "unauthorized")
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), (name, why)
            assert "fleet_" not in response.text, (name, why)


def test_revoking_a_token_over_http_stops_its_next_request(coordinator):
    c = coordinator
    admin = c.mint(Role.ADMIN)
    created = c.call("POST", "/fleet/tokens", {"role": "operator", "products": [P], "name": "ops"}, admin)
    assert created.status_code == 201
    record = created.json()
    assert record["token"].startswith("fleet_") and record["role"] == "operator" and record["products"] == [P]
    assert c.call("GET", "/fleet/jobs", token=record["token"]).status_code == 200
    listed = c.call("GET", "/fleet/tokens", token=admin).json()["items"]
    assert record["id"] in [t["id"] for t in listed] and all("token" not in t and "hash" not in t for t in listed)
    one = c.call("GET", f"/fleet/tokens/{record['id']}", token=admin)
    assert one.status_code == 200 and "token" not in one.json() and "hash" not in one.json()
    assert (one.json()["name"], one.json()["revokedAt"]) == ("ops", None)
    revoked = c.call("DELETE", f"/fleet/tokens/{record['id']}", token=admin)
    assert revoked.status_code == 200 and revoked.json()["revokedAt"]
    assert c.call("GET", f"/fleet/tokens/{record['id']}", token=admin).json()["revokedAt"] == revoked.json()["revokedAt"]
    _problem(c.call("GET", "/fleet/jobs", token=record["token"]), 401, "unauthorized")
    # A whole token given as the id is not echoed back, nor is an unknown id found
    missing = c.call("GET", f"/fleet/tokens/{record['token']}", token=admin)
    assert missing.status_code == 404 and record["token"].split("_", 2)[2] not in missing.text
    _problem(c.call("GET", "/fleet/tokens/0000000000000000", token=admin), 404, "not_found")
    assert record["token"] not in c.server.log()


def test_an_error_body_never_echoes_a_token_secret(coordinator):
    # Given a token pasted where a value belongs (a path, a query, a body's key)
    c = coordinator
    admin = c.mint(Role.ADMIN)
    secret = admin.split("_", 2)[2]
    pasted = [
        ("GET", f"/fleet/jobs/{admin}", None),
        ("GET", f"/fleet/jobs?stage={admin}", None),
        ("GET", f"/fleet/jobs/{A}/{admin.replace('_', '%5F')}", None),
        ("POST", f"/fleet/jobs/{A}/actions/{admin}", {}),
        ("POST", "/fleet/jobs", {"productId": P, "idempotencyKey": "k", admin: 1}),
        ("POST", f"/admin/functions/{admin}", None),
        ("GET", f"/dashboard/fleet/jobs/{admin}", None),
        ("GET", f"/dashboard/fleet/jobs?stage={admin}", None),
    ]
    for method, path, body in pasted:
        # When it is refused, Then the answer names the token by its id alone
        answer = c.call(method, path, body, admin)
        assert answer.status_code in (400, 404, 405), (path, answer.status_code, answer.text)
        assert secret not in answer.text and "REDACTED" in answer.text, (path, answer.text)
        if path.startswith("/fleet/"):
            assert answer.json()["status"] == answer.status_code  # and it is still JSON


def test_a_principal_scoped_to_another_product_learns_nothing_of_it(coordinator):
    c = coordinator
    admin = c.mint(Role.ADMIN)
    _seed(c, admin)
    theirs = job_id(Q, "theirs")
    outsider = c.mint(Role.OPERATOR, products=[Q, "r"], name="q-ops")  # two: the listing filters by both
    factory_q = c.mint(Role.FACTORY, products=[Q], factory_id="fq")
    # Reads and writes of p's things are 404, as if p had none
    for method, path, body in [
        ("GET", f"/fleet/jobs/{A}", None),
        ("GET", f"/fleet/jobs/{COMPOSITE}/dag", None),
        ("POST", f"/fleet/jobs/{A}/actions/cancel", {}),
        ("POST", f"/fleet/jobs/{A}/review/request", {}),
        ("POST", f"/fleet/jobs/{COMPOSITE}/children", {"children": [{"idempotencyKey": "x"}]}),
        ("GET", f"/fleet/queue-state?productId={P}", None),
        ("GET", f"/fleet/weights/{P}", None),
        ("PUT", f"/fleet/weights/{P}", {"age": 3}),
        ("GET", f"/fleet/budgets/{P}", None),
        ("PUT", f"/fleet/budgets/{P}", {"ceilingUsd": 1, "window": "daily"}),
        ("POST", f"/fleet/budgets/{P}/pause", None),
    ]:
        _problem(c.call(method, path, body, outsider), 404, "not_found")
    for method, path, body in [
        ("PATCH", f"/fleet/jobs/{A}", {"leaseId": "x", "stage": "building"}),
        ("POST", f"/fleet/jobs/{A}/lease/release", {"leaseId": "x", "result": "retry"}),
        ("POST", f"/fleet/jobs/{A}/lease/report", {"leaseId": "x", "insights": {"costUsd": 1}}),
        ("POST", f"/fleet/jobs/{A}/claim", {"factoryId": "fq"}),
    ]:
        _problem(c.call(method, path, body, factory_q), 404, "not_found")
    # Putting work into p is refused outright
    _problem(c.call("POST", "/fleet/jobs", {"productId": P, "idempotencyKey": "mine"}, outsider), 403, "forbidden")
    _problem(c.call("POST", "/fleet/claim", {"factoryId": "fq", "productId": P}, factory_q), 403, "forbidden")
    _problem(c.call("POST", "/fleet/factories/fq/heartbeat", {"products": [P]}, factory_q), 403, "forbidden")
    # Listings show only q
    listed = c.call("GET", "/fleet/jobs", token=outsider).json()["items"]
    assert [j["id"] for j in listed] == [theirs]
    assert c.call("GET", f"/fleet/jobs?productId={P}", token=outsider).json()["items"] == []
    assert c.call("GET", f"/fleet/jobs/{theirs}", token=outsider).status_code == 200
    # and the factories serving q only
    assert c.call("POST", f"/fleet/factories/{FACTORY}/heartbeat", {"products": [P]}, admin).status_code == 200
    assert c.call("POST", "/fleet/factories/fq/heartbeat", {"products": [Q]}, factory_q).status_code == 200
    assert [f["id"] for f in c.call("GET", "/fleet/factories", token=outsider).json()["items"]] == ["fq"]
    # a factory serving p and q shows such a principal only q among what it serves
    assert c.call("POST", "/fleet/factories/both/heartbeat", {"products": [P, Q]}, admin).status_code == 200
    listed = {f["id"]: f["products"] for f in c.call("GET", "/fleet/factories", token=outsider).json()["items"]}
    assert listed == {"fq": [Q], "both": [Q]}
    assert {f["id"] for f in c.call("GET", "/fleet/factories", token=admin).json()["items"]} == {FACTORY, "fq", "both"}


def test_a_factory_works_only_as_itself_and_only_its_own_leases(coordinator):
    c = coordinator
    admin = c.mint(Role.ADMIN)
    _seed(c, admin)
    f1 = c.mint(Role.FACTORY, factory_id=FACTORY, products=[P])
    f2 = c.mint(Role.FACTORY, factory_id="f2", products=[P])
    viewer = c.mint(Role.VIEWER)
    operator = c.mint(Role.OPERATOR)
    # Not as another factory
    _problem(c.call("POST", "/fleet/claim", {"factoryId": "f2", "productId": P}, f1), 403, "forbidden")
    _problem(c.call("POST", f"/fleet/jobs/{A}/claim", {"factoryId": "f2"}, f1), 403, "forbidden")
    _problem(c.call("POST", "/fleet/factories/f2/heartbeat", {}, f1), 403, "forbidden")
    # As itself
    claimed = c.call("POST", f"/fleet/jobs/{A}/claim", {"factoryId": FACTORY}, f1).json()
    lease = claimed["lease"]["leaseId"]
    assert lease
    # The lease id is shown to its holder and to operators, to no one else
    assert c.call("GET", f"/fleet/jobs/{A}", token=f1).json()["lease"]["leaseId"] == lease
    assert c.call("GET", f"/fleet/jobs/{A}", token=operator).json()["lease"]["leaseId"] == lease
    for other in (viewer, f2):
        shown = c.call("GET", f"/fleet/jobs/{A}", token=other).json()
        assert shown["lease"]["factoryId"] == FACTORY and shown["lease"]["leaseId"] is None
        listed = c.call("GET", f"/fleet/jobs?productId={P}", token=other).json()["items"]
        assert all(j["lease"] is None or j["lease"]["leaseId"] is None for j in listed)
        assert lease not in c.call("GET", f"/fleet/jobs/{A}", token=other).text
    # Another factory, even knowing the lease id, cannot write with it
    _problem(c.call("PATCH", f"/fleet/jobs/{A}", {"leaseId": lease, "stage": "building"}, f2), 403, "forbidden")
    _problem(c.call("POST", f"/fleet/jobs/{A}/lease/release", {"leaseId": lease, "result": "retry"}, f2), 403, "forbidden")
    renewal = c.call("POST", "/fleet/factories/f2/heartbeat", {"running": [{"jobId": A, "leaseId": lease}]}, f2).json()
    assert renewal["leases"][0]["status"] == "revoked"
    # The holder can, and its answers keep the lease id
    moved = c.call("PATCH", f"/fleet/jobs/{A}", {"leaseId": lease, "stage": "building"}, f1).json()
    assert moved["stage"] == "building" and moved["lease"]["leaseId"] == lease
    assert moved["events"][-1]["actor"] == FACTORY
    # Ended by its holder, the lease stays on the run (`leaseId`, `endedBy`), shown as before
    released = c.call("POST", f"/fleet/jobs/{A}/lease/release", {"leaseId": lease, "result": "retry"}, f1).json()
    assert released["runs"][-1]["leaseId"] == released["runs"][-1]["endedBy"]["leaseId"] == lease
    assert c.call("GET", f"/fleet/jobs/{A}", token=operator).json()["runs"][-1]["endedBy"]["leaseId"] == lease
    for other in (viewer, f2):
        run = c.call("GET", f"/fleet/jobs/{A}", token=other).json()["runs"][-1]
        assert run["leaseId"] is None and run["endedBy"]["leaseId"] is None and run["endedBy"]["write"] == "release"
        assert lease not in c.call("GET", f"/fleet/jobs/{A}", token=other).text
    # Once another factory holds the job, the old lease is lost to its holder, not forbidden:
    # a repeat of its last write is answered, another write is lease_lost, and the lost lease
    # is nobody else's to repeat
    assert c.call("POST", f"/fleet/jobs/{A}/claim", {"factoryId": "f2"}, f2).status_code == 200
    again = c.call("POST", f"/fleet/jobs/{A}/lease/release", {"leaseId": lease, "result": "retry"}, f1)
    assert again.status_code == 200 and again.json()["lease"]["factoryId"] == "f2"
    _problem(c.call("PATCH", f"/fleet/jobs/{A}", {"leaseId": lease, "stage": "testing"}, f1), 409, "lease_lost")
    _problem(c.call("POST", f"/fleet/jobs/{A}/lease/release", {"leaseId": lease, "result": "retry"}, f2), 403, "forbidden")


def test_event_actors_are_the_principal_not_the_body(coordinator):
    c = coordinator
    admin = c.mint(Role.ADMIN)
    _seed(c, admin)
    operator = c.mint(Role.OPERATOR, name="olga")
    shipped = c.call("POST", f"/fleet/jobs/{job_id(P, 'spare')}/actions/ship", {"actor": "someone-else"}, operator)
    assert shipped.status_code == 200 and shipped.json()["events"][-1]["actor"] == "olga"
