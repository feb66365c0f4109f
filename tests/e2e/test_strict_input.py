"""Strict input at the HTTP edge, against a real `fleet serve`: bodies that stall or break off,
values with a trailing newline, numbers the stores cannot keep, duplicate keys, bodies that
are not JSON, bodies where none is taken, forged continuation tokens, and keys in the log."""
from __future__ import annotations

import base64
import contextlib
import json
import select
import socket
import time
import urllib.parse
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import Http
from shared.devhost.process import running_server

pytestmark = pytest.mark.e2e

#: FLEET_BODY_TIMEOUT_SECONDS of the module's server.
TIMEOUT = 2.0


@pytest.fixture(scope="module")
def server():
    env = {"FLEET_BODY_TIMEOUT_SECONDS": str(TIMEOUT), "FLEET_BUDGETS": "1", "FLEET_FUNCTION_KEYS": None}
    # No timers: they would start threads of their own while a test counts the server's.
    with running_server(env=env, args=("--no-timers",)) as handle:
        yield handle


@pytest.fixture
def lease(http, request):
    """A job of product `strict` claimed by f1: (job id, lease id)."""
    key = request.node.name[-60:]
    job = http.post("/fleet/jobs", {"productId": "strict", "idempotencyKey": key}).json()
    claimed = http.post("/fleet/jobs/" + job["id"] + "/claim", {"factoryId": "f1"}).json()
    return job["id"], claimed["lease"]["leaseId"]


def bearer(server) -> dict[str, str]:
    """The header that authenticates as the admin the server minted (auth is on)."""
    return {"Authorization": f"Bearer {server.admin_token}"}


def raw_request(server, head: str, body: bytes = b"") -> socket.socket:
    """A connection that has sent `head` (request line and headers) and `body`."""
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT + 10)
    connection.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
    return connection


def answer_of(connection: socket.socket) -> tuple[int, dict]:
    """Read a whole answer (the server closes every connection after one): status, body."""
    data = b""
    with connection:
        while chunk := connection.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body else {}


def threads_of(server) -> int:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


def idle_threads_of(server) -> int:
    """The server's threads once those of answered requests have ended (a request's thread
    ends just after its answer is sent): the count, once it has held for 0.2 s."""
    deadline, last, since = time.monotonic() + 5, threads_of(server), time.monotonic()
    while time.monotonic() - since < 0.2 and time.monotonic() < deadline:
        time.sleep(0.02)
        now = threads_of(server)
        if now != last:
            last, since = now, time.monotonic()
    return last


@contextlib.contextmanager
def closing_all(connections: list[socket.socket]):
    try:
        yield connections
    finally:
        for connection in connections:
            connection.close()


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


STALLED = ("POST /fleet/jobs HTTP/1.1\nHost: fleet\nContent-Type: application/json\n"
           "Content-Length: 100\n")


# Bodies that stall, connections that idle, clients that go away


def test_a_stalled_body_is_a_408_within_the_timeout_and_its_thread_is_freed(server, http):
    jobs = len(http.get("/fleet/jobs?limit=500").json()["items"])
    assert http.get("/fleet/health").status_code == 200  # its one store-probe thread starts now, once
    baseline = idle_threads_of(server)
    for _round in range(2):  # the same again: nothing is left behind to grow
        started = time.monotonic()
        with closing_all([raw_request(server, STALLED, b'{"produ') for _ in range(6)]) as stalled:
            wait_for(lambda: threads_of(server) >= baseline + 6, TIMEOUT, "each stalled body holds a thread")

            assert http.get("/fleet/health").status_code == 200  # the server still answers others

            for connection in stalled:
                status, problem = answer_of(connection)
                assert (status, problem["code"]) == (408, "request_timeout")
        assert TIMEOUT - 0.1 <= time.monotonic() - started <= TIMEOUT + 3
        wait_for(lambda: threads_of(server) <= baseline, 5, "every stalled body's thread ends")
    assert len(http.get("/fleet/jobs?limit=500").json()["items"]) == jobs  # nothing half-submitted


def test_a_body_that_trickles_in_is_cut_off_at_the_timeout_too(server):
    connection = raw_request(server, STALLED, b"{")
    started = time.monotonic()
    for _ in range(int(TIMEOUT / 0.25) + 4):  # a byte every quarter second: never idle for long
        if select.select([connection], [], [], 0.25)[0]:  # answered: stop sending
            break
        connection.sendall(b" ")
    status, problem = answer_of(connection)
    assert (status, problem["code"]) == (408, "request_timeout")
    assert time.monotonic() - started <= TIMEOUT + 3


def test_an_idle_connection_is_closed_after_the_timeout(server, http):
    assert http.get("/fleet/health").status_code == 200
    baseline = idle_threads_of(server)
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT + 10) for _ in range(4)]
    half_sent = raw_request(server, "GET /fleet/health HTTP/1.1\nHost: fleet")  # headers never end
    with closing_all([*idle, half_sent]) as connections:
        wait_for(lambda: threads_of(server) >= baseline + 5, TIMEOUT, "each connection holds a thread")
        for connection in connections:
            assert connection.recv(1024) == b""  # closed without an answer
    wait_for(lambda: threads_of(server) <= baseline, 5, "every idle connection's thread ends")


@pytest.mark.parametrize("how", ["close", "half-close"])
def test_a_client_that_goes_away_mid_body_is_logged_as_gone_not_as_a_500(server, how):
    before = len(server.log())
    connection = raw_request(server, STALLED, b'{"produ')
    if how == "close":
        connection.close()
    else:  # done sending, still reading: it gets an answer
        connection.shutdown(socket.SHUT_WR)
        status, problem = answer_of(connection)
        assert (status, problem["code"]) == (400, "bad_request") and "7 of 100 bytes" in problem["detail"]
    wait_for(lambda: "client went away" in server.log()[before:], 5, "the host logs the client as gone")
    log = server.log()[before:]
    assert "Traceback" not in log and "internal_error" not in log and '" 500 ' not in log
    assert log.count("client went away") == 1


# Values with a trailing newline


@pytest.mark.parametrize("method,path", [
    ("PUT", "/fleet/budgets/hp%0A"),
    ("GET", "/fleet/budgets/hp%0A"),
    ("POST", "/fleet/budgets/hp%0A/pause"),
    ("GET", "/fleet/weights/hp%0A"),
    ("PUT", "/fleet/weights/hp%0A"),
    ("POST", "/fleet/factories/f1%0A/heartbeat"),
    ("GET", "/fleet/queue-state?productId=hp%0A"),
    ("GET", "/fleet/jobs?productId=hp%0A"),
    ("GET", "/fleet/jobs?limit=5%0A"),
    ("GET", "/fleet/jobs?offset=1%0A"),
    ("GET", "/fleet/jobs?stage=queued%0A"),
])
def test_a_trailing_newline_in_a_route_or_query_value_is_a_400(http, method, path):
    body = {"ceilingUsd": 5} if path.startswith("/fleet/budgets") and method == "PUT" else \
        {"age": 2} if method == "PUT" else None
    response = http.call(method, path, body)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "validation_error"
    assert http.get("/fleet/budgets/hp%0A").status_code == 400  # and no product "hp\n" was made


@pytest.mark.parametrize("path,body,field", [
    ("/fleet/jobs", {"productId": "hp\n", "idempotencyKey": "k"}, "productId"),
    ("/fleet/jobs", {"productId": "hp", "idempotencyKey": "k\n"}, "idempotencyKey"),
    ("/fleet/jobs", {"productId": "hp", "idempotencyKey": "k", "capabilities": ["python\n"]}, "capabilities.0"),
    ("/fleet/jobs", {"productId": "hp", "idempotencyKey": "k", "repo": "acme/web\n"}, "repo"),
    ("/fleet/jobs", {"productId": "hp", "idempotencyKey": "k", "repo": "acme/web", "baseBranch": "main\n"}, "baseBranch"),
    ("/fleet/claim", {"factoryId": "f1\n", "productId": "hp"}, "factoryId"),
    ("/fleet/factories/f1/heartbeat", {"products": ["hp\n"]}, "products.0"),
])
def test_a_trailing_newline_in_a_body_value_is_a_400(http, path, body, field):
    response = http.post(path, body)
    assert response.status_code == 400 and field in {e["field"] for e in response.json()["errors"]}


# Numbers the stores cannot keep, and duplicate keys


@pytest.mark.parametrize("number", ["1e999", "-1e999", "9007199254740993", "-123456789012345678901234567890"])
def test_a_number_out_of_range_anywhere_in_a_body_is_a_400(http, lease, number):
    job, lease_id = lease
    writes = [
        ("POST", f"/fleet/jobs/{job}/lease/release", '{"leaseId": "%s", "checkpoint": {"step": [1, %s]}}', "checkpoint.step.1"),
        ("PATCH", f"/fleet/jobs/{job}", '{"leaseId": "%s", "stage": "building", "insights": {"gpuHours": %s}}', "insights.gpuHours"),
        ("PATCH", f"/fleet/jobs/{job}", '{"leaseId": "%s", "stage": "building", "insights": {"costUsd": %s}}', "insights.costUsd"),
    ]
    for method, path, template, field in writes:
        response = http.call(method, path, data=template % (lease_id, number), headers={"Content-Type": "application/json"})
        assert response.status_code == 400, response.text
        assert [e["field"] for e in response.json()["errors"]] == [field]
    after = http.get(f"/fleet/jobs/{job}").json()
    assert after["stage"] == "assigned" and after["checkpoint"] is None and after["runs"][-1]["insights"] == {}


def test_the_largest_numbers_the_stores_keep_are_accepted(http, lease):
    job, lease_id = lease
    checkpoint = {"big": 9007199254740991, "small": -9007199254740991, "huge": 1.7e308}
    response = http.post(f"/fleet/jobs/{job}/lease/release", {"leaseId": lease_id, "checkpoint": checkpoint})
    assert response.status_code == 200, response.text
    assert http.get(f"/fleet/jobs/{job}").json()["checkpoint"] == checkpoint


@pytest.mark.parametrize("raw,field", [
    ('{"productId": "a", "productId": "b", "idempotencyKey": "dup"}', "productId"),
    ('{"productId": "a", "idempotencyKey": "dup", "children": [{"idempotencyKey": "c", "title": "x", "title": "y"}]}',
     "title"),
])
def test_a_duplicate_key_anywhere_in_a_body_is_a_400(http, raw, field):
    response = http.call("POST", "/fleet/jobs", data=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == field
    assert http.get("/fleet/jobs?productId=a").json()["items"] == []


def test_a_duplicate_key_in_free_form_json_is_a_400(http, lease):
    job, lease_id = lease
    raw = '{"leaseId": "%s", "checkpoint": {"step": 1, "step": 2}}' % lease_id
    response = http.call("POST", f"/fleet/jobs/{job}/lease/release", data=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "step"
    assert http.get(f"/fleet/jobs/{job}").json()["stage"] == "assigned"


# Content types


@pytest.mark.parametrize("content_type", [
    "text/plain",
    "application/x-www-form-urlencoded",  # what `curl -d` sends unless told otherwise
    "multipart/form-data; boundary=x",
    "application/jsonp",
    "application/json-seq",
    None,  # absent
])
def test_a_body_that_is_not_sent_as_json_is_a_415(server, content_type):
    headers = bearer(server) if content_type is None else {**bearer(server), "Content-Type": content_type}
    body = b'{"productId": "ct", "idempotencyKey": "k"}'
    response = requests.post(f"{server.url}/fleet/jobs", data=body, headers=headers, timeout=10)
    assert response.status_code == 415, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "unsupported_media_type"
    assert requests.get(f"{server.url}/fleet/jobs?productId=ct", headers=bearer(server), timeout=10).json()["items"] == []


@pytest.mark.parametrize("content_type", [
    "application/json",
    "Application/JSON",
    "application/json; charset=utf-8",
    "application/json;charset=UTF-8",
    "application/vnd.fleet+json",
])
def test_json_is_accepted_under_any_of_its_names(server, content_type):
    key = base64.b32encode(content_type.encode()).decode().strip("=")[:100]
    body = json.dumps({"productId": "ct-ok", "idempotencyKey": key}).encode()
    response = requests.post(f"{server.url}/fleet/jobs", data=body, headers={**bearer(server), "Content-Type": content_type},
                             timeout=10)
    assert response.status_code == 201, response.text


def test_an_empty_body_needs_no_content_type(server, lease):
    job, _ = lease
    response = requests.post(f"{server.url}/fleet/jobs/{job}/actions/requeue",
                             headers={**bearer(server), "Content-Type": "text/plain"}, timeout=10)
    assert response.status_code == 200, response.text


# Endpoints that take no body


@pytest.mark.parametrize("action", ["pause", "resume"])
def test_pause_and_resume_refuse_a_body(http, action):
    budget = f"/fleet/budgets/quiet-{action}"
    assert http.call("PUT", budget, {"ceilingUsd": 10}).status_code == 200
    refused = http.post(f"{budget}/{action}", {"paused": False})
    assert refused.status_code == 400 and refused.json()["errors"][0]["field"] == "paused"
    not_json = http.call("POST", f"{budget}/{action}", data="now", headers={"Content-Type": "text/plain"})
    assert not_json.status_code == 415
    assert http.get(budget).json()["paused"] is False  # nothing changed
    assert http.post(f"{budget}/{action}").status_code == 200  # no body
    assert http.post(f"{budget}/{action}", {}).status_code == 200  # no fields


@pytest.mark.parametrize("path", ["/fleet/jobs", "/fleet/factories", "/fleet/queue-state?productId=p", "/fleet/health"])
def test_a_get_refuses_a_body(http, path):
    response = http.get(path, json={"productId": "p"})
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "productId"


@pytest.mark.parametrize("path,body", [
    ("actions/requeue", {"reason": "x", "force": True}),
    ("review/request", {"required": 1, "quorum": 2}),
])
def test_an_optional_body_takes_only_its_documented_fields(http, lease, path, body):
    job, _ = lease
    response = http.post(f"/fleet/jobs/{job}/{path}", body)
    assert response.status_code == 400
    assert {e["field"] for e in response.json()["errors"]} & {"force", "quorum"}


# Continuation tokens (both stores)


def test_a_forged_or_altered_continuation_token_is_a_400(serve):
    with serve() as handle:
        client = Http(handle.url)
        try:
            for n in range(3):
                assert client.post("/fleet/jobs", {"productId": "pages", "idempotencyKey": f"p{n}"}).status_code == 201
            first = client.get("/fleet/jobs?productId=pages&limit=1").json()
            token = first["continuation"]
            second = client.get(f"/fleet/jobs?productId=pages&limit=1&continuation={token}")
            assert second.status_code == 200 and second.json()["items"][0]["id"] != first["items"][0]["id"]

            body, mac = token.split(".")
            store_token = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
            forged_store_token = "0" if store_token.isdigit() else _keyset_token_at_the_start(store_token)
            flipped = "A" if body[0] != "A" else "B"
            forgeries = {
                "a bare store token": store_token,
                "a store token of the client's own": forged_store_token,
                "an edited store token under the old mac": f"{_b64(forged_store_token)}.{mac}",
                "an edited mac": f"{body}.{mac[:-2]}{'AA' if mac[-2:] != 'AA' else 'BA'}",
                "an edited first character": f"{flipped}{body[1:]}.{mac}",
                "no mac": body,
                "padding added": f"{body}==.{mac}",
                "standard base64": f"{body}.{mac.replace('-', '+').replace('_', '/')}" if set(mac) & set("-_") else "x.y",
                "junk": "%00%0A",
            }
            for name, forged in forgeries.items():
                response = client.get("/fleet/jobs?productId=pages&limit=1&continuation=" + urllib.parse.quote(forged))
                assert response.status_code == 400, name
                assert response.json()["errors"][0]["field"] == "continuation", name
            # A genuine token, but of a listing with other filters.
            other = client.get(f"/fleet/jobs?productId=other&limit=1&continuation={token}")
            assert other.status_code == 400
            assert client.get(f"/fleet/jobs?stage=queued&productId=pages&limit=1&continuation={token}").status_code == 400
        finally:
            client.close()


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _keyset_token_at_the_start(store_token: str) -> str:
    """A Cosmos keyset token of the same shape, pointing before every document."""
    raw = json.loads(base64.urlsafe_b64decode(store_token + "=" * (-len(store_token) % 4)))
    raw["v"] = [["9999-12-31T00:00:00.000Z"], ["~"]][: len(raw["v"])]
    return _b64(json.dumps(raw, separators=(",", ":")))


# Keys in the log


def test_no_function_key_appears_in_the_server_log():
    keys = ("Sekr1tKeyOne", "Sekr1tKeyTwo")
    with running_server(env={"FLEET_FUNCTION_KEYS": ",".join(keys)}, args=("--no-timers",)) as handle, \
            requests.Session() as session:
        url = handle.url
        session.headers.update(bearer(handle))
        answers = [
            session.get(f"{url}/fleet/jobs?code={keys[0]}", timeout=10),
            session.get(f"{url}/fleet/jobs?limit=1&CODE={keys[1]}", timeout=10),
            session.get(f"{url}/fleet/jobs?code=WrongSekr1t", timeout=10),
            session.get(f"{url}/fleet/nowhere?code={keys[0]}", timeout=10),
            session.post(f"{url}/admin/functions/sweep_expired_leases?code={keys[1]}", json={"input": ""}, timeout=10),
            session.get(f"{url}/fleet/jobs", headers={"x-functions-key": keys[0]}, timeout=10),
            session.get(f"{url}/fleet/jobs", headers={"x-functions-key": "WrongSekr1t"}, timeout=10),
            session.post(f"{url}/fleet/jobs?code={keys[0]}", data=b"{", headers={"Content-Type": "text/plain"}, timeout=10),
        ]
        assert [a.status_code for a in answers] == [200, 200, 401, 404, 202, 200, 401, 415]
        # The name percent-encoded (requests would decode it before sending).
        encoded = raw_request(handle, f"GET /fleet/jobs?c%6Fde={keys[0]}&limit=1 HTTP/1.1\nHost: fleet\n"
                                      f"Authorization: {bearer(handle)['Authorization']}\n")
        assert answer_of(encoded)[0] == 200
        # A request line http.server cannot parse is logged with its reason, quoting the line
        # (and answered with a status line, though it cannot tell the request's version).
        connection = raw_request(handle, f"GET /fleet/jobs?code={keys[1]} HTTP/1.1 junk\nHost: fleet\n")
        with connection, connection.makefile("rb") as answer:
            status, _, body = answer.read().partition(b"\r\n\r\n")
            assert status.startswith(b"HTTP/1.1 400 ") and json.loads(body)["code"] == "bad_request"
        wait_for(lambda: "junk" in handle.log(), 5, "the request log has every answer")
        log, request_log, token = handle.log() + handle.output(), handle.log(), handle.admin_token
    assert token.split("_", 2)[2] not in request_log  # nor the bearer token's secret (stdout shows it once)
    for secret in (*keys, "WrongSekr1t"):
        assert secret not in log
    assert "code=REDACTED" in log and "CODE=REDACTED" in log and "c%6Fde=REDACTED" in log
