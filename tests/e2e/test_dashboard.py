"""The dashboard over HTTP against `fleet serve` with auth on, on SQLite and on Cosmos: who may
open each page and post each form (every dashboard function against every role), the session
cookie and form tokens, the 304 of an unchanged view, and malformed, oversized and hostile
input. What a person sees and clicks is tested in a real browser (`tests/browser`)."""
from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator
from urllib.parse import unquote_plus

import pytest
import requests

from fleet import tokens
from fleet.context import Context
from fleet.jobs import job_id
from fleet.principals import GRANTS, Role
from shared import config
from tests.e2e.test_auth import _http_functions

P, Q = "p", "q"
A, SPARE = job_id(P, "a"), job_id(P, "spare")
THEIRS = job_id(Q, "theirs")


@dataclass(frozen=True)
class Row:
    method: str
    path: str
    #: The form, from the role's name and its token.
    form: Callable[[str, str], dict[str, Any]] | None = None


#: One row per dashboard function, by function name.
PAGES: dict[str, Row] = {
    "dashboard_signin": Row("GET", "/dashboard/signin"),
    "dashboard_signin_post": Row("POST", "/dashboard/signin", lambda r, token: {"token": token}),
    "dashboard_signout": Row("POST", "/dashboard/signout", lambda r, token: {}),
    "dashboard_home": Row("GET", "/dashboard"),
    "dashboard_overview": Row("GET", "/dashboard/fleet"),
    "dashboard_jobs": Row("GET", "/dashboard/fleet/jobs?stage=queued"),
    "dashboard_new_job": Row("GET", "/dashboard/fleet/jobs/new"),
    "dashboard_submit_job": Row("POST", "/dashboard/fleet/jobs/new", lambda r, token: {"productId": P, "idempotencyKey": f"by-{r}"}),
    "dashboard_bulk_action": Row("POST", "/dashboard/fleet/jobs/bulk", lambda r, token: {"action": "requeue", "ids": [SPARE]}),
    "dashboard_job": Row("GET", f"/dashboard/fleet/jobs/{A}"),
    "dashboard_job_action": Row("POST", f"/dashboard/fleet/jobs/{SPARE}/actions/requeue", lambda r, token: {}),
    "dashboard_review": Row("POST", f"/dashboard/fleet/jobs/{A}/review", lambda r, token: {"decision": "approve"}),
    "dashboard_budget": Row("GET", "/dashboard/fleet/budget"),
    "dashboard_budget_new": Row("POST", "/dashboard/fleet/budget", lambda r, token: {"product": P, "ceiling": "100", "window": "daily"}),
    "dashboard_budget_change": Row("POST", f"/dashboard/fleet/budget/{P}/pause", lambda r, token: {"reason": f"by {r}"}),
    "dashboard_static": Row("GET", "/dashboard/static/dashboard.css"),
}

_CSRF = re.compile(r'<meta name="csrf-token" content="([0-9a-f]*)">')


class Browser:
    """A cookie-keeping HTTP client signed in (or not) to one coordinator's dashboard."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.csrf = ""

    def sign_in(self, token: str) -> requests.Response:
        answer = self.post("/dashboard/signin", {"token": token}, csrf=False)
        self.csrf = _CSRF.search(self.get("/dashboard/fleet").text).group(1)
        return answer

    def get(self, path: str, **kw) -> requests.Response:
        return self.session.get(self.url + path, allow_redirects=False, timeout=30, **kw)

    def post(self, path: str, form: dict[str, Any] | None = None, csrf: bool = True, **kw) -> requests.Response:
        data = {**(form or {}), **({"csrf": self.csrf} if csrf else {})}
        return self.session.post(self.url + path, data=data, allow_redirects=False, timeout=30, **kw)

    def close(self) -> None:
        self.session.close()


class Coordinator:
    def __init__(self, server, env: dict[str, str]) -> None:
        self.server, self.url = server, server.url
        self.ctx = Context(config.store_from(env))
        self.browsers: list[Browser] = []

    def mint(self, role: Role, **fields: Any) -> str:
        return tokens.create(self.ctx, role, **fields).token

    def browser(self, token: str | None = None) -> Browser:
        browser = Browser(self.url)
        self.browsers.append(browser)
        if token:
            browser.sign_in(token)
        return browser

    def api(self, method: str, path: str, token: str, body: Any = None) -> requests.Response:
        return requests.request(method, self.url + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def close(self) -> None:
        for browser in self.browsers:
            browser.close()
        self.ctx.store.close()


def _coordinator(serve, store_env, budgets: str) -> Iterator[Coordinator]:
    with serve({"FLEET_AUTH": "tokens", "FLEET_BUDGETS": budgets}, args=("--no-timers",)) as server:
        coordinator = Coordinator(server, {**store_env, "FLEET_DB": server.db})
        try:
            yield coordinator
        finally:
            coordinator.close()


@pytest.fixture
def coordinator(serve, store_env) -> Iterator[Coordinator]:
    yield from _coordinator(serve, store_env, "1")


def _seed(c: Coordinator, admin: str) -> None:
    for body in (
        {"productId": P, "idempotencyKey": "a", "title": "Job a"},
        {"productId": P, "idempotencyKey": "spare", "title": "Spare"},
        {"productId": Q, "idempotencyKey": "theirs", "title": "Theirs"},
    ):
        assert c.api("POST", "/fleet/jobs", admin, body).status_code == 201
    assert c.api("PUT", f"/fleet/budgets/{P}", admin, {"ceilingUsd": 50, "window": "monthly"}).status_code == 200


def test_every_dashboard_function_has_a_row():
    pages = {name for name in _http_functions() if name.startswith("dashboard_")}
    assert set(PAGES) == pages


def test_every_page_and_form_for_every_role(coordinator):
    c = coordinator
    admin = c.mint(Role.ADMIN, name="admin")
    _seed(c, admin)
    needs = _http_functions()
    checked = 0
    for role in Role:
        token = c.mint(role, name=f"the-{role.value}", factory_id="f1" if role == Role.FACTORY else None)
        browser = c.browser(token)
        for name, row in PAGES.items():
            if name == "dashboard_signout":
                continue  # it would end this browser's session: checked below
            if row.method == "GET":
                answer = browser.get(row.path)
            else:
                answer = browser.post(row.path, row.form(role.value, token))
            where = f"{role.value} {row.method} {row.path}: {answer.status_code} {answer.text[:300]}"
            permission = needs[name]
            if permission is None or permission in GRANTS[role]:
                assert answer.status_code not in (401, 403) and answer.status_code < 500, where
            else:
                assert answer.status_code == 403, where
                assert "not allowed" in answer.text and permission.value in answer.text, where
            checked += 1
        assert browser.post("/dashboard/signout").status_code == 303
        assert browser.get("/dashboard/fleet").status_code == 303  # signed out
    assert checked == (len(PAGES) - 1) * len(Role)


def test_signing_in_sets_a_strict_httponly_session_and_out_ends_it(coordinator):
    c = coordinator
    token = c.mint(Role.VIEWER, name="viewer")
    browser = c.browser()
    # Not signed in: the overview sends the browser to sign in, and back afterwards
    first = browser.get("/dashboard/fleet")
    assert first.status_code == 303 and first.headers["location"] == "/dashboard/signin?next=/dashboard/fleet"
    page = browser.get("/dashboard/signin?next=/dashboard/fleet/jobs")
    assert 'for="token">Token</label>' in page.text and ">Sign in</button>" in page.text
    refused = browser.post("/dashboard/signin", {"token": "fleet_0123456789abcdef_" + "A" * 43}, csrf=False)
    assert refused.status_code == 401 and "That token was not accepted." in refused.text
    signed = browser.post("/dashboard/signin", {"token": token, "next": "/dashboard/fleet/jobs"}, csrf=False)
    assert signed.status_code == 303 and signed.headers["location"] == "/dashboard/fleet/jobs"
    cookie = signed.headers["set-cookie"]
    assert cookie.startswith(f"fleet_session={token};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/dashboard" in cookie
    assert browser.get("/dashboard/fleet").status_code == 200
    # A `next` elsewhere is not followed
    elsewhere = browser.post("/dashboard/signin", {"token": token, "next": "//evil.example/x"}, csrf=False)
    assert elsewhere.headers["location"] == "/dashboard/fleet"
    # nor one that would break the Location header (a CR/LF, a space, a backslash)
    for odd in ("/dashboard/fleet\r\nX-Injected: 1", "/dashboard/fleet jobs", "/dashboard/\\evil.example"):
        answered = browser.post("/dashboard/signin", {"token": token, "next": odd}, csrf=False)
        assert (answered.status_code, answered.headers["location"]) == (303, "/dashboard/fleet"), odd
        assert "X-Injected" not in answered.headers
    # A revoked token's session is over
    revoked = c.api("DELETE", f"/fleet/tokens/{token.split('_')[1]}", c.mint(Role.ADMIN, name="admin"))
    assert revoked.status_code == 200
    ended = browser.get("/dashboard/fleet")
    assert ended.status_code == 303 and ended.headers["set-cookie"].startswith("fleet_session=; Max-Age=0;")


def test_a_refused_session_is_ended_and_a_refused_header_leaves_a_good_session_alone(coordinator):
    c = coordinator
    admin = c.mint(Role.ADMIN, name="admin")
    _seed(c, admin)
    # A form posted with a session whose token was revoked: refused, and the session ended
    revoked = c.mint(Role.OPERATOR, name="gone")
    browser = c.browser(revoked)
    assert c.api("DELETE", f"/fleet/tokens/{revoked.split('_')[1]}", admin).status_code == 200
    posted = browser.post(f"/dashboard/fleet/jobs/{SPARE}/actions/cancel")
    assert posted.status_code == 401 and posted.headers["set-cookie"].startswith("fleet_session=; Max-Age=0;")
    assert c.api("GET", f"/fleet/jobs/{SPARE}", admin).json()["stage"] == "queued"
    # A good session sent with a refused Authorization header: the header is what is judged
    good = c.browser(c.mint(Role.VIEWER, name="kept"))
    bad = {"Authorization": "Bearer fleet_0123456789abcdef_" + "A" * 43}
    refused = good.get("/dashboard/fleet", headers=bad)
    assert refused.status_code == 401 and "set-cookie" not in refused.headers
    assert good.get("/dashboard/fleet").status_code == 200  # the session is as it was


def test_a_form_needs_its_token_and_this_dashboards_origin(coordinator):
    c = coordinator
    admin = c.mint(Role.ADMIN, name="admin")
    _seed(c, admin)
    browser = c.browser(admin)
    no_token = browser.post(f"/dashboard/fleet/jobs/{SPARE}/actions/cancel", csrf=False)
    assert no_token.status_code == 403 and "reload the page" in no_token.text
    assert "your role" not in no_token.text  # an admin's form refused for what it is, not its role
    wrong = browser.post(f"/dashboard/fleet/jobs/{SPARE}/actions/cancel", {"csrf": "0" * 64}, csrf=False)
    assert wrong.status_code == 403
    other_site = browser.post(f"/dashboard/fleet/jobs/{SPARE}/actions/cancel", headers={"Origin": "https://evil.example"})
    assert other_site.status_code == 403 and "is not this dashboard" in other_site.text
    assert "your role" not in other_site.text
    # Another principal's form token is not this one's
    viewer = c.browser(c.mint(Role.OPERATOR, name="operator"))
    viewer.csrf = browser.csrf
    assert viewer.post(f"/dashboard/fleet/jobs/{SPARE}/actions/cancel").status_code == 403
    assert c.api("GET", f"/fleet/jobs/{SPARE}", admin).json()["stage"] == "queued"  # nothing happened
    done = browser.post(f"/dashboard/fleet/jobs/{SPARE}/actions/cancel")
    assert done.status_code == 303 and "Cancelled." in unquote_plus(done.headers["location"])
    job = c.api("GET", f"/fleet/jobs/{SPARE}", admin).json()
    assert job["stage"] == "cancelled" and job["events"][-1]["actor"] == "admin"  # the principal, as actor


def test_an_unchanged_view_answers_304_and_a_change_renders_anew(coordinator):
    c = coordinator
    admin = c.mint(Role.ADMIN, name="admin")
    _seed(c, admin)
    browser = c.browser(admin)
    for path in ("/dashboard/fleet", "/dashboard/fleet/jobs", f"/dashboard/fleet/jobs/{A}", "/dashboard/fleet/budget"):
        for _ in range(2):  # a view's ETag holds the minute: across a minute's turn, look again
            first = browser.get(path)
            tag = first.headers["etag"]
            assert first.status_code == 200 and f'data-version="{tag}"' in first.text.replace("&#34;", '"')
            again = browser.get(path, headers={"If-None-Match": tag})
            if again.status_code != 200:
                break
        assert again.status_code == 304 and again.content == b"", path
    tag = browser.get("/dashboard/fleet").headers["etag"]
    assert c.api("POST", "/fleet/jobs", admin, {"productId": P, "idempotencyKey": "new"}).status_code == 201
    # A factory's claim of it shows at once on the job's own page (the job's ETag is part of it)
    job_page = browser.get(f"/dashboard/fleet/jobs/{job_id(P, 'new')}")
    claim = c.api("POST", f"/fleet/jobs/{job_id(P, 'new')}/claim", admin, {"factoryId": "f1"})
    assert claim.status_code == 200, claim.text
    after = browser.get(f"/dashboard/fleet/jobs/{job_id(P, 'new')}", headers={"If-None-Match": job_page.headers["etag"]})
    assert after.status_code == 200 and "Assigned" in after.text
    changed = browser.get("/dashboard/fleet", headers={"If-None-Match": tag})
    assert changed.status_code == 200 and changed.headers["etag"] != tag


def test_a_scoped_principal_sees_only_its_products(coordinator):
    c = coordinator
    admin = c.mint(Role.ADMIN, name="admin")
    _seed(c, admin)
    browser = c.browser(c.mint(Role.OPERATOR, name="p-operator", products=[P]))
    listing = browser.get("/dashboard/fleet/jobs").text
    assert "Job a" in listing and "Theirs" not in listing
    assert browser.get(f"/dashboard/fleet/jobs/{THEIRS}").status_code == 404
    assert browser.post(f"/dashboard/fleet/jobs/{THEIRS}/actions/cancel").status_code == 404
    overview = browser.get("/dashboard/fleet").text
    assert ">q<" not in overview and ">p<" in overview


def test_bad_input_gets_a_page_naming_what_is_wrong_and_changes_nothing(coordinator):
    c = coordinator
    admin = c.mint(Role.ADMIN, name="admin")
    _seed(c, admin)
    browser = c.browser(admin)
    assert browser.get("/dashboard/fleet/jobs?stage=nonsense").status_code == 400
    assert browser.get("/dashboard/fleet/jobs?offset=-1").status_code == 400
    assert browser.get("/dashboard/fleet/jobs?product=NOT%20A%20PRODUCT").status_code == 400
    assert browser.get("/dashboard/fleet/jobs/nope").status_code == 404
    assert browser.get(f"/dashboard/fleet/jobs/{job_id(P, 'never')}").status_code == 404
    assert browser.get("/dashboard/static/..%2Fweb.py").status_code == 404
    assert browser.get("/dashboard/static/nothing.css").status_code == 404
    huge = browser.post("/dashboard/fleet/jobs/new", {"productId": P, "idempotencyKey": "big", "bodyMd": "x" * 900_000})
    assert huge.status_code == 413
    too_long = browser.post("/dashboard/fleet/jobs/new", {"productId": P, "idempotencyKey": "long", "bodyMd": "x" * 65_537})
    assert too_long.status_code == 400 and "The job was not submitted" in too_long.text
    as_json = browser.session.post(
        c.url + "/dashboard/fleet/jobs/new", json={"csrf": browser.csrf}, allow_redirects=False, timeout=30
    )
    assert as_json.status_code == 415
    invalid = browser.post("/dashboard/fleet/jobs/new", {"productId": P, "idempotencyKey": "", "title": "kept", "priority": "urgent"})
    assert invalid.status_code == 400 and "The job was not submitted" in invalid.text and 'value="kept"' in invalid.text
    # a key another job holds with other fields: the form again, its values kept, the key named
    taken = browser.post("/dashboard/fleet/jobs/new", {"productId": P, "idempotencyKey": "a", "title": "Not job a"})
    assert taken.status_code == 409 and "The job was not submitted" in taken.text
    assert 'value="Not job a"' in taken.text and "idempotencyKey:" in taken.text
    # a pattern refused is said in words, not as its regular expression
    worded = browser.post("/dashboard/fleet/jobs/new", {"productId": "no spaces", "idempotencyKey": "w", "title": "\x07"})
    assert worded.status_code == 400 and "productId: must be a letter or digit, then up to 63" in worded.text
    assert "title: holds a character it may not" in worded.text and "should match pattern" not in worded.text
    bad_cost = browser.post("/dashboard/fleet/jobs/new", {"productId": P, "idempotencyKey": "c", "estimatedCostUsd": "lots"})
    assert bad_cost.status_code == 400
    assert browser.post("/dashboard/fleet/jobs/bulk", {"action": "ship", "ids": [SPARE]}).status_code == 400
    assert browser.post("/dashboard/fleet/jobs/bulk", {"action": "requeue"}).status_code == 400
    # a `back` that would break the Location header is not followed, and the action's answer stands
    crlf = browser.post("/dashboard/fleet/jobs/bulk", {"action": "cancel", "ids": [SPARE], "back": "/dashboard/fleet/jobs\r\nX-Injected: 1"})
    assert crlf.status_code == 303 and crlf.headers["location"].startswith("/dashboard/fleet/jobs?notice=Cancelled")
    assert "X-Injected" not in crlf.headers
    assert browser.post("/dashboard/fleet/jobs/bulk", {"action": "requeue", "ids": [SPARE]}).status_code == 303
    # a `back` of the bare list with an empty query (as the list's own form sends) reads cleanly
    bare = browser.post("/dashboard/fleet/jobs/bulk", {"action": "requeue", "ids": [SPARE], "back": "/dashboard/fleet/jobs?"})
    assert bare.headers["location"].startswith("/dashboard/fleet/jobs?notice=")
    assert browser.post(f"/dashboard/fleet/jobs/{SPARE}/actions/explode").status_code == 400
    assert browser.post(f"/dashboard/fleet/budget/{P}/settings", {"ceiling": "-5", "window": "daily"}).status_code == 400
    assert browser.post(f"/dashboard/fleet/budget/{P}/settings", {"ceiling": "nan", "window": "daily"}).status_code == 400
    assert browser.post(f"/dashboard/fleet/budget/{P}/settings", {"ceiling": "5", "window": "hourly"}).status_code == 400
    for estimate in ("-1", "nan", "lots", "1e12", "51"):  # 51: above the ceiling
        bad = {"ceiling": "5", "window": "daily", "defaultEstimate": estimate}
        assert browser.post(f"/dashboard/fleet/budget/{P}/settings", bad).status_code == 400
    assert browser.post(f"/dashboard/fleet/budget/{P}/sideways").status_code == 404
    # a field sent twice, or bytes that are not UTF-8, are refused, as the API refuses them
    twice = browser.session.post(
        c.url + "/dashboard/fleet/jobs/new", data=f"csrf={browser.csrf}&productId={P}&productId=q&idempotencyKey=twice",
        headers={"content-type": "application/x-www-form-urlencoded"}, allow_redirects=False, timeout=30,
    )
    assert twice.status_code == 400 and "productId is given 2 times" in twice.text
    not_utf8 = browser.session.post(
        c.url + f"/dashboard/fleet/jobs/{SPARE}/actions/cancel", data=f"csrf={browser.csrf}&reason=bad%FF%FEbytes",
        headers={"content-type": "application/x-www-form-urlencoded"}, allow_redirects=False, timeout=30,
    )
    assert not_utf8.status_code == 400 and "could not be read" in not_utf8.text
    # a form's free text is held to what the API takes: no control characters, the same length
    assert browser.post(f"/dashboard/fleet/budget/{P}/pause", {"reason": "a\x00b"}).status_code == 400
    assert browser.post(f"/dashboard/fleet/budget/{P}/pause", {"reason": "x" * 501}).status_code == 400
    assert browser.post(f"/dashboard/fleet/jobs/{SPARE}/actions/cancel", {"reason": "\x1b[2J"}).status_code == 400
    assert c.api("GET", f"/fleet/budgets/{P}", admin).json()["paused"] is False
    listing = c.api("GET", "/fleet/jobs?limit=50", admin).json()["items"]
    assert sorted(j["idempotencyKey"] for j in listing) == ["a", "spare", "theirs"]  # nothing half-written
    assert c.api("GET", f"/fleet/budgets/{P}", admin).json()["ceilingUsd"] == 50


def test_a_hostile_job_body_is_shown_as_text(coordinator):
    c = coordinator
    admin = c.mint(Role.ADMIN, name="admin")
    hostile = {
        "productId": P, "idempotencyKey": "hostile", "title": '<img src=x onerror="alert(1)">',
        "bodyMd": "<script>alert(1)</script>\n\n[click](javascript:alert(1)) **bold**",
    }
    created = c.api("POST", "/fleet/jobs", admin, hostile).json()
    page = c.browser(admin).get(f"/dashboard/fleet/jobs/{created['id']}").text
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert 'href="javascript:' not in page and "<strong>bold</strong>" in page
    assert "<img src=x" not in page and "&lt;img src=x" in page


def test_a_token_pasted_into_a_form_is_not_shown_back_in_its_problems_or_notices(coordinator):
    c = coordinator
    admin = c.mint(Role.ADMIN, name="admin")
    browser = c.browser(admin)
    secret = admin.split("_", 2)[2]
    refused = browser.post("/dashboard/fleet/jobs/new", {"productId": P, "idempotencyKey": "k", "deps": admin})
    assert refused.status_code == 400 and "REDACTED" in refused.text
    assert secret not in refused.text.replace(f'value="{admin}"', "")  # the field keeps what was typed
    bulk = browser.post("/dashboard/fleet/jobs/bulk", {"action": "cancel", "ids": [admin]})
    assert bulk.status_code == 303 and secret not in bulk.headers["location"]


def test_the_longest_body_the_schema_allows_is_taken_from_the_form_in_any_script(coordinator):
    # A browser sends each UTF-8 byte beyond ASCII as %XX: 65,536 "é" are 786 KB of form
    c = coordinator
    admin = c.mint(Role.ADMIN, name="admin")
    browser = c.browser(admin)
    for key, text in (("accents", "é" * 65_536), ("emoji", "\U0001f600" * 65_536)):
        answer = browser.post("/dashboard/fleet/jobs/new", {"productId": P, "idempotencyKey": key, "bodyMd": text})
        assert answer.status_code == 303, answer.text[:300]
        assert c.api("GET", f"/fleet/jobs/{job_id(P, key)}", admin).json()["bodyMd"] == text


def test_pages_allow_only_their_own_scripts_and_no_framing(coordinator):
    c = coordinator
    page = c.browser(c.mint(Role.VIEWER, name="viewer")).get("/dashboard/fleet")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "form-action 'self'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"


def test_with_budgets_off_the_budget_page_says_so(serve, store_env):
    for c in _coordinator(serve, store_env, "0"):
        admin = c.mint(Role.ADMIN, name="admin")
        browser = c.browser(admin)
        page = browser.get("/dashboard/fleet/budget")
        assert page.status_code == 200 and "Budgets are off" in page.text
        assert "Budgets are off" in browser.get("/dashboard/fleet").text
        refused = browser.post(f"/dashboard/fleet/budget/{P}/pause")
        assert refused.status_code == 404 and "budgets are off" in refused.text


def test_under_easy_auth_the_platforms_principal_is_the_session(serve, store_env):
    with serve({"FLEET_AUTH": "easyauth"}, args=("--no-timers",)) as server:
        def as_user(role: str) -> dict[str, str]:
            claims = [{"typ": "roles", "val": role}, {"typ": "name", "val": "ada@example.com"}, {"typ": "oid", "val": "u-1"}]
            payload = base64.b64encode(json.dumps({"claims": claims}).encode()).decode()
            return {"X-MS-CLIENT-PRINCIPAL": payload}

        browser = Browser(server.url)
        try:
            browser.session.headers.update(as_user("Fleet.Viewer"))
            page = browser.get("/dashboard/fleet")
            assert page.status_code == 200 and "ada@example.com · viewer" in page.text
            browser.csrf = _CSRF.search(page.text).group(1)
            assert browser.post(f"/dashboard/fleet/jobs/{SPARE}/actions/cancel").status_code == 403
            browser.session.headers.update(as_user("Fleet.Operator"))
            assert ">Requeue</button>" in browser.get("/dashboard/fleet/jobs").text
            signin = browser.get("/dashboard/signin").text
            assert "/.auth/login/aad?post_login_redirect_uri=" in signin
        finally:
            browser.close()


def test_a_job_page_reads_its_events_and_lease_as_an_operator_would(coordinator):
    c = coordinator
    admin = c.mint(Role.ADMIN, name="admin")
    _seed(c, admin)
    added = c.api("POST", f"/fleet/jobs/{SPARE}/children", admin,
                  {"children": [{"idempotencyKey": "c1"}, {"idempotencyKey": "c2"}]})
    assert added.status_code == 201
    page = c.browser(admin).get(f"/dashboard/fleet/jobs/{SPARE}").text
    assert "children: c1, c2" in page and "[&#39;c1&#39;" not in page  # a list as its items, not its repr
    claimed = c.api("POST", "/fleet/claim", admin, {"factoryId": "f1", "productId": P}).json()
    held = c.browser(admin).get(f"/dashboard/fleet/jobs/{claimed['job']['id']}").text
    assert re.search(r"expires \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", held)  # a lease's expiry to the second
