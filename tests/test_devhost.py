"""The dev host: routes, methods, keys, body limits and timers of a synthetic FunctionApp,
through werkzeug's test client, over real HTTP, and as a `fleet serve` subprocess."""

import http.client
import io
import socket
import json
import logging
import textwrap
import threading
import time
import urllib.parse

import azure.functions as func
import pytest
from werkzeug.test import Client

from shared import redaction
from shared.devhost import cli, hosting, routes, serving
from shared.devhost.process import running_server


class Recorder:
    """What the synthetic functions saw."""

    def __init__(self):
        self.timer_runs: list[tuple[str, bool]] = []
        self.active = 0
        self.most_active = 0
        self.lock = threading.Lock()

    def ran(self, name, request):
        with self.lock:
            self.timer_runs.append((name, request.past_due))

    def count(self, name):
        with self.lock:
            return sum(1 for ran, _ in self.timer_runs if ran == name)


def echo(req: func.HttpRequest, status: int = 200) -> func.HttpResponse:
    body = {"method": req.method, "routeParams": dict(req.route_params),
            "params": dict(req.params), "body": req.get_body().decode(), "url": req.url}
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype="application/json")


def build_app(recorder: Recorder) -> func.FunctionApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

    @app.route(route="fleet/jobs/{id}", methods=["GET", "PATCH"])
    def get_job(req: func.HttpRequest) -> func.HttpResponse:
        return echo(req)

    @app.route(route="fleet/jobs", methods=["POST"])
    def submit_job(req: func.HttpRequest) -> func.HttpResponse:
        return echo(req, status=201)

    @app.route(route="fleet/jobs/search", methods=["GET"])
    def search_jobs(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("search")

    @app.route(route="items/{n:int}", methods=["GET"])
    def get_item(req: func.HttpRequest) -> func.HttpResponse:
        return echo(req)

    @app.route(route="files/{*rest}", methods=["GET"])
    def get_file(req: func.HttpRequest) -> func.HttpResponse:
        return echo(req)

    @app.route(route="fleet/health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    def health(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("ok", headers={"X-Fleet": "yes"})

    @app.route(route="boom", methods=["GET"])
    def boom(req: func.HttpRequest) -> func.HttpResponse:
        raise RuntimeError("secret detail")

    @app.timer_trigger(schedule="0 0 0 1 1 *", arg_name="timer")
    def sweep(timer: func.TimerRequest) -> None:
        recorder.ran("sweep", timer)

    @app.timer_trigger(schedule="*/1 * * * * *", arg_name="timer")
    def every_second(timer: func.TimerRequest) -> None:
        recorder.ran("every_second", timer)

    @app.timer_trigger(schedule="*/1 * * * * *", arg_name="timer")
    def always_fails(timer: func.TimerRequest) -> None:
        recorder.ran("always_fails", timer)
        raise RuntimeError("timer broke")

    @app.timer_trigger(schedule="0 0 0 1 1 *", arg_name="timer", run_on_startup=True)
    def on_startup(timer: func.TimerRequest) -> None:
        recorder.ran("on_startup", timer)

    @app.timer_trigger(schedule="0 0 0 1 1 *", arg_name="timer")
    def slow(timer: func.TimerRequest) -> None:
        with recorder.lock:
            recorder.active += 1
            recorder.most_active = max(recorder.most_active, recorder.active)
        time.sleep(0.05)
        with recorder.lock:
            recorder.active -= 1

    return app


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def app(recorder):
    return build_app(recorder)


@pytest.fixture
def host(app):
    return hosting.DevHost(app, keys=())


@pytest.fixture
def client(host):
    return Client(host.wsgi)


def problem_of(response, status, code):
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/problem+json"
    body = response.json
    assert body["status"] == status and body["code"] == code and body["type"] == "about:blank"
    return body


# Routing


@pytest.mark.parametrize(("path", "route_params"), [
    # ids carry their partition: the colon stays inside the segment, the case is kept
    ("/fleet/jobs/MyProduct:abc123XYZ", {"id": "MyProduct:abc123XYZ"}),
    # literal segments match in any case; parameter values keep theirs
    ("/FLEET/Jobs/MyProduct:abc", {"id": "MyProduct:abc"}),
    # values are percent-decoded after the path is split, so %2F stays in one segment
    ("/fleet/jobs/a%2Fb%20c", {"id": "a/b c"}),
    ("/fleet/jobs/P:1/", {"id": "P:1"}),
    ("/items/42", {"n": "42"}),
    ("/files/a/b/c.txt", {"rest": "a/b/c.txt"}),
    ("/files", {}),
])
def test_routes_bind_parameters(client, path, route_params):
    response = client.get(path)

    assert response.status_code == 200
    assert response.json["routeParams"] == route_params


def test_query_parameters_and_body_reach_the_function(client):
    response = client.patch("/fleet/jobs/P:1?stage=building&x=1&x=2", data=b'{"a": 1}')

    assert response.json["params"] == {"stage": "building", "x": "1,2"}
    assert response.json["body"] == '{"a": 1}'
    assert response.json["url"] == "http://localhost/fleet/jobs/P:1?stage=building&x=1&x=2"


def test_a_literal_route_beats_a_parameter(client):
    assert client.get("/fleet/jobs/search").get_data(as_text=True) == "search"


def test_a_constraint_that_fails_is_no_match(client):
    problem_of(client.get("/items/forty-two"), 404, "not_found")
    problem_of(client.get("/items/99999999999"), 404, "not_found")  # beyond int


def test_the_route_prefix_comes_before_every_route(app):
    client = Client(hosting.DevHost(app, route_prefix="api", keys=()).wsgi)

    assert client.get("/api/fleet/jobs/P:1").json["routeParams"] == {"id": "P:1"}
    problem_of(client.get("/fleet/jobs/P:1"), 404, "not_found")


@pytest.mark.parametrize(("host_json", "prefix"), [
    ({"extensions": {"http": {"routePrefix": ""}}}, ""),
    ({"extensions": {"http": {"routePrefix": "/v1/"}}}, "v1"),
    ({"version": "2.0"}, "api"),  # the Functions default
    (None, "api"),  # no host.json at all
])
def test_route_prefix_is_read_from_host_json(tmp_path, host_json, prefix):
    path = tmp_path / "host.json"
    if host_json is not None:
        path.write_text(json.dumps(host_json))

    assert hosting.read_route_prefix(path) == prefix


def test_unknown_path_is_404_problem(client):
    body = problem_of(client.get("/fleet/nothing-here"), 404, "not_found")

    assert "/fleet/nothing-here" in body["detail"]


def test_wrong_method_is_405_with_allow(client):
    response = client.delete("/fleet/jobs/P:1")

    problem_of(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "GET, PATCH"


def test_the_response_keeps_status_headers_and_type(client):
    submitted = client.post("/fleet/jobs", data=b"{}")
    health = client.get("/fleet/health")

    assert submitted.status_code == 201
    assert submitted.headers["Content-Type"] == "application/json"
    assert health.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert health.headers["X-Fleet"] == "yes"
    assert health.get_data() == b"ok"


def test_a_failing_function_is_500_problem_without_its_traceback(client, caplog):
    with caplog.at_level(logging.ERROR, logger="shared.devhost"):
        response = client.get("/boom")

    body = problem_of(response, 500, "internal_error")
    assert body["title"] == "Internal Server Error"
    assert "secret detail" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)
    assert any(record.exc_info for record in caplog.records)  # the log has it


@pytest.mark.parametrize(("template", "path", "expected"), [
    ("fleet/jobs/{id}", "/Fleet/JOBS/P:Ab", {"id": "P:Ab"}),
    ("fleet/jobs/{id}", "/fleet/jobs", None),
    ("fleet/jobs/{id}", "/fleet/jobs/a/b", None),
    ("items/{n:int}", "/items/-7", {"n": "-7"}),
    ("items/{n:long}", "/items/99999999999", {"n": "99999999999"}),
    ("items/{n:int:range(1,5)}", "/items/6", None),
    ("flags/{on:bool}", "/flags/True", {"on": "True"}),
    ("flags/{on:bool}", "/flags/yes", None),
    ("names/{name:alpha}", "/names/abc1", None),
    ("prices/{p:double}", "/prices/1.5e3", {"p": "1.5e3"}),
    ("ids/{id:guid}", "/ids/0f8fad5b-d9cb-469f-a165-70867728950e",
     {"id": "0f8fad5b-d9cb-469f-a165-70867728950e"}),
    ("ids/{id:guid}", "/ids/not-a-guid", None),
    ("codes/{c:length(3)}", "/codes/abcd", None),
    ("codes/{c:regex(^[a-z]+$)}", "/codes/abc", {"c": "abc"}),
    ("files/{name}.{ext}", "/files/report.tar.gz", {"name": "report.tar", "ext": "gz"}),
    ("pages/{page?}", "/pages", {}),
    ("pages/{page=1}", "/pages", {"page": "1"}),
    ("pages/{page=1}", "/pages/2", {"page": "2"}),
    ("blobs/{**path}", "/blobs/a/b", {"path": "a/b"}),
])
def test_route_templates(template, path, expected):
    assert routes.RouteTemplate(template).match(routes.split_path(path)) == expected


@pytest.mark.parametrize("template", [
    "a/{*rest}/b",  # catch-all not last
    "{a}{b}",  # two parameters with nothing between
    "{a?}/b",  # optional before a required segment
    "{x:nope}",  # unknown constraint
    "{id}/{ID}",  # names are case-insensitive
    "a//b",
    "{unclosed",
])
def test_bad_route_templates_are_refused(template):
    with pytest.raises(ValueError, match="route"):
        routes.RouteTemplate(template)


# Bodies


def test_a_body_over_the_cap_is_413_before_the_function_runs(app):
    client = Client(hosting.DevHost(app, keys=(), max_body=10).wsgi)

    assert client.post("/fleet/jobs", data=b"x" * 10).status_code == 201
    problem_of(client.post("/fleet/jobs", data=b"x" * 11), 413, "payload_too_large")


def test_a_chunked_body_over_the_cap_is_413(app):
    client = Client(hosting.DevHost(app, keys=(), max_body=10).wsgi)

    def chunked(data):
        # A chunked request has no Content-Length; the server ends the stream.
        return client.post("/fleet/jobs", input_stream=io.BytesIO(data),
                           environ_overrides={"wsgi.input_terminated": True})

    assert chunked(b"y" * 10).json["body"] == "y" * 10
    problem_of(chunked(b"y" * 11), 413, "payload_too_large")


# Keys


@pytest.fixture
def locked(app):
    return Client(hosting.DevHost(app, keys=["k1", "k2"]).wsgi)


def test_function_level_needs_a_key_when_keys_are_set(locked):
    problem_of(locked.get("/fleet/jobs/P:1"), 401, "unauthorized")
    problem_of(locked.get("/fleet/jobs/P:1", headers={"x-functions-key": "nope"}), 401,
               "unauthorized")
    assert locked.get("/fleet/jobs/P:1", headers={"x-functions-key": "k2"}).status_code == 200
    assert locked.get("/fleet/jobs/P:1?code=k1").status_code == 200


def test_anonymous_never_needs_a_key(locked):
    assert locked.get("/fleet/health").status_code == 200


def test_keys_come_from_the_environment(app, monkeypatch):
    monkeypatch.setenv("FLEET_FUNCTION_KEYS", " a, b ,,")
    assert hosting.DevHost(app).keys == ("a", "b")

    monkeypatch.delenv("FLEET_FUNCTION_KEYS")
    assert hosting.DevHost(app).keys == ()  # open


def test_the_app_is_indexed_once(app):
    hosting.DevHost(app, keys=())
    hosting.DevHost(app, keys=())  # reuses the cached functions

    with pytest.raises(ValueError):
        app.get_functions()  # why: a second indexing raises in azure-functions


# Timers


def test_admin_runs_a_timer_to_completion_then_202(client, recorder):
    response = client.post("/admin/functions/sweep", json={"input": ""})

    assert response.status_code == 202
    assert recorder.timer_runs == [("sweep", False)]


def test_admin_names_are_case_insensitive_and_unknown_is_404(client, recorder):
    assert client.post("/admin/functions/SWEEP", json={"input": ""}).status_code == 202
    problem_of(client.post("/admin/functions/nope", json={"input": ""}), 404, "not_found")
    problem_of(client.post("/admin/functions/get_job", json={"input": ""}), 404, "not_found")
    problem_of(client.get("/admin/functions/sweep"), 405, "method_not_allowed")


def test_admin_needs_any_key_when_keys_are_set(locked, recorder):
    problem_of(locked.post("/admin/functions/sweep", json={"input": ""}), 401, "unauthorized")
    response = locked.post("/admin/functions/sweep", json={"input": ""},
                           headers={"x-functions-key": "k1"})

    assert response.status_code == 202
    assert recorder.count("sweep") == 1


def test_admin_run_of_a_failing_timer_is_500(client):
    problem_of(client.post("/admin/functions/always_fails", json={"input": ""}), 500,
               "internal_error")


def test_a_timer_never_runs_concurrently_with_itself(host, recorder):
    runs = [threading.Thread(target=host.run_timer, args=("slow",)) for _ in range(4)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()

    assert recorder.most_active == 1


def test_run_timer_of_an_unknown_name_raises(host):
    with pytest.raises(KeyError):
        host.run_timer("nope")


def test_the_scheduler_runs_timers_and_survives_one_that_raises(host, recorder):
    host.start_timers()
    try:
        deadline = time.monotonic() + 4
        while recorder.count("every_second") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        host.stop_timers()

    assert recorder.count("every_second") >= 2
    assert recorder.count("always_fails") >= 2  # raised each time, kept its schedule
    assert recorder.count("on_startup") == 1
    assert recorder.count("sweep") == 0  # not due until January


def test_a_schedule_may_name_an_app_setting(monkeypatch):
    app = func.FunctionApp()

    @app.timer_trigger(schedule="%SWEEP_SCHEDULE%", arg_name="timer")
    def sweep(timer):
        pass

    monkeypatch.setenv("SWEEP_SCHEDULE", "0 */2 * * * *")
    hosting.DevHost(app, keys=())
    monkeypatch.delenv("SWEEP_SCHEDULE")
    with pytest.raises(ValueError, match="SWEEP_SCHEDULE is not set"):
        hosting.DevHost(app, keys=())


def test_a_bad_schedule_names_the_function():
    app = func.FunctionApp()

    @app.timer_trigger(schedule="* * * * * 9", arg_name="timer")
    def broken(timer):
        pass

    with pytest.raises(ValueError, match="broken.*day-of-week"):
        hosting.DevHost(app, keys=())


# Over real HTTP


def call(base_url, method, path, body=None, headers=None):
    url = urllib.parse.urlsplit(base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        connection.close()


def test_over_http(app, recorder):
    host = hosting.DevHost(app, keys=(), max_body=1024)
    with serving.BackgroundServer(host.wsgi, port=0) as server:
        status, _, body = call(server.url, "GET", "/fleet/jobs/MyProduct:a%2Fb")
        assert (status, json.loads(body)["routeParams"]) == (200, {"id": "MyProduct:a/b"})

        status, content_type, _ = call(server.url, "GET", "/nowhere")
        assert (status, content_type) == (404, "application/problem+json")

        status, _, _ = call(server.url, "POST", "/admin/functions/sweep", b'{"input": ""}')
        assert status == 202 and recorder.count("sweep") == 1

        # an iterable body goes chunked, without a Content-Length
        status, _, body = call(server.url, "POST", "/fleet/jobs", iter([b"z" * 700] * 3))
        assert (status, json.loads(body)["code"]) == (413, "payload_too_large")

        status, _, body = call(server.url, "POST", "/fleet/jobs", b"not a chunk\r\n",
                               {"Transfer-Encoding": "chunked"})
        assert (status, json.loads(body)["code"]) == (400, "bad_request")


def test_over_http_a_large_content_length_is_refused_before_the_body_is_sent(app):
    host = hosting.DevHost(app, keys=(), max_body=1024)
    with serving.BackgroundServer(host.wsgi, port=0) as server:
        url = urllib.parse.urlsplit(server.url)
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        try:
            connection.putrequest("POST", "/fleet/jobs")
            connection.putheader("Content-Length", str(64 * 1024 * 1024))
            connection.endheaders()  # and no body: the answer must not wait for it
            response = connection.getresponse()
            assert response.status == 413
            response.read()
        finally:
            connection.close()


# The command


def test_the_cli_has_serve():
    args = cli.build_parser().parse_args(["serve", "--port", "0", "--db", "x.db"])

    assert (args.host, args.port, args.db, args.app) == ("127.0.0.1", 0, "x.db",
                                                         "function_app:app")


SYNTHETIC_APP = '''
import os
import azure.functions as func

DB_AT_IMPORT = os.environ.get("FLEET_DB")  # --db must be set before this import
app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

@app.route(route="hello/{name}", methods=["GET"])
def hello(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(f"{req.route_params['name']} {DB_AT_IMPORT}")

@app.timer_trigger(schedule="0 0 0 1 1 *", arg_name="timer")
def sweep(timer: func.TimerRequest) -> None:
    with open(os.environ["FLEET_DB"] + ".swept", "a") as file:
        file.write("swept\\n")
'''


def test_fleet_serve_runs_restarts_and_stops_cleanly(tmp_path):
    (tmp_path / "synthetic_app.py").write_text(textwrap.dedent(SYNTHETIC_APP))
    (tmp_path / "host.json").write_text('{"extensions": {"http": {"routePrefix": "v1"}}}')
    env = {"PYTHONPATH": str(tmp_path), "FLEET_FUNCTION_KEYS": None}
    db = str(tmp_path / "fleet.db")

    with running_server(env=env, db=db, args=("--app", "synthetic_app:app")) as server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert call(server.url, "GET", "/v1/hello/Ada")[2] == f"Ada {db}".encode()
        assert call(server.url, "POST", "/admin/functions/sweep", b'{"input": ""}')[0] == 202
        assert (tmp_path / "fleet.db.swept").read_text() == "swept\n"

        port = server.port
        server.restart()
        assert server.port == port
        assert call(server.url, "GET", "/v1/hello/Bob")[2] == f"Bob {db}".encode()

        assert server.stop() == 0  # SIGTERM is a clean stop
        assert "Traceback" not in server.log()


def test_fleet_serve_that_cannot_start_reports_its_stderr(tmp_path):
    with pytest.raises(RuntimeError, match="exited with 1(.|\n)*ModuleNotFoundError"):
        with running_server(db=str(tmp_path / "x.db"), args=("--app", "no_such_module:app")):
            pass


# Clients that stall, idle or go away; keys in the log


def test_route_regex_constraints_judge_the_whole_value():
    template = routes.RouteTemplate("codes/{c:regex(^[a-z]+$)}")

    assert template.match(["codes", "abc"]) == {"c": "abc"}
    assert template.match(["codes", "abc\n"]) is None  # `$` is the end of the value
    # An escaped `$`, or one in a class, is a dollar sign.
    assert routes.RouteTemplate(r"p/{c:regex(^a\$$)}").match(["p", "a$"]) == {"c": "a$"}
    assert routes.RouteTemplate("p/{c:regex(^[$]+$)}").match(["p", "$$\n"]) is None


@pytest.mark.parametrize(("line", "logged"), [
    ("GET /x?code=k1 HTTP/1.1", "GET /x?code=REDACTED HTTP/1.1"),
    ("GET /x?a=1&CODE=k1&b=2 HTTP/1.1", "GET /x?a=1&CODE=REDACTED&b=2 HTTP/1.1"),
    ("GET /x?c%6Fde=k1 HTTP/1.1", "GET /x?c%6Fde=REDACTED HTTP/1.1"),
    ("GET /x?a=1;code=k1 HTTP/1.1", "GET /x?a=1;code=REDACTED HTTP/1.1"),
    ("Bad request syntax ('GET /x?code=k1 junk')", "Bad request syntax ('GET /x?code=REDACTED junk')"),
    ("GET /x?codes=1&mycode=2 HTTP/1.1", "GET /x?codes=1&mycode=2 HTTP/1.1"),  # other names stay
    # a token pasted into a path keeps its id, not its secret
    ("DELETE /fleet/tokens/fleet_0123456789abcdef_Ab-_9" + "x" * 38 + " HTTP/1.1",
     "DELETE /fleet/tokens/fleet_0123456789abcdef_REDACTED HTTP/1.1"),
    ("GET /x?t=fleet_0123456789abcdef_s%2Dcret HTTP/1.1", "GET /x?t=fleet_0123456789abcdef_REDACTED HTTP/1.1"),
    ("GET /x?t=fleet%5F0123456789abcdef%5fs3cret HTTP/1.1", "GET /x?t=fleet%5F0123456789abcdef%5fREDACTED HTTP/1.1"),
])
def test_the_request_log_redacts_code_and_token_secrets(line, logged):
    assert redaction.redact(line) == logged


@pytest.mark.parametrize(("value", "seconds"), [(None, 10.0), ("", 10.0), ("2.5", 2.5), (" 30 ", 30.0)])
def test_the_body_timeout_comes_from_the_environment(value, seconds):
    environ = {} if value is None else {"FLEET_BODY_TIMEOUT_SECONDS": value}
    assert serving.timeout_from_env(environ) == seconds


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf", "nan"])
def test_a_bad_body_timeout_is_refused(value):
    with pytest.raises(ValueError, match="FLEET_BODY_TIMEOUT_SECONDS"):
        serving.timeout_from_env({"FLEET_BODY_TIMEOUT_SECONDS": value})


def test_a_key_may_be_given_as_code_in_any_case(locked):
    assert locked.get("/fleet/jobs/P:1?CODE=k1").status_code == 200


@pytest.fixture
def quick(app):
    """The synthetic app over real HTTP, giving clients 0.5 s."""
    with serving.BackgroundServer(hosting.DevHost(app, keys=()).wsgi, port=0, timeout=0.5) as server:
        yield server


def open_request(server, head: bytes) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    connection.sendall(head)
    return connection


def read_all(connection) -> bytes:
    data = b""
    with connection:
        while chunk := connection.recv(65536):
            data += chunk
    return data


POST_100 = (b"POST /fleet/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n")


def test_over_http_a_stalled_body_is_408(quick, caplog):
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="shared.devhost"):
        answer = read_all(open_request(quick, POST_100 + b'{"a": 1,'))

    assert answer.startswith(b"HTTP/1.1 408 ")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["code"] == "request_timeout"
    assert 0.4 <= time.monotonic() - started < 3
    assert "stalled request body" in caplog.text


@pytest.mark.parametrize("length", [b"abc", b"-1", b"1e3", b"\xef\xbc\x91", b"12, 13"])
def test_over_http_a_malformed_content_length_is_400_and_ends_the_connection(quick, length):
    # The body would otherwise be read as empty (an optional-body write going ahead without
    # it) and its bytes as the next request on the connection.
    head = b"POST /fleet/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
    answer = read_all(open_request(quick, head + length + b'\r\n\r\n{"a": 1}GET /fleet/jobs/P:1 HTTP/1.1\r\n\r\n'))
    assert answer.startswith(b"HTTP/1.1 400 ") and answer.count(b"HTTP/1.1 ") == 1, answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["detail"].startswith("Content-Length is not a length")


def test_over_http_two_equal_content_lengths_are_one(quick):
    head = b"POST /fleet/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
    answer = read_all(open_request(quick, head + b'Content-Length: 8\r\nContent-Length: 8\r\n\r\n{"a": 1}'))
    assert not answer.startswith(b"HTTP/1.1 400 "), answer


def test_over_http_an_http_2_request_line_is_answered_with_a_status_line(quick):
    answer = read_all(open_request(quick, b"GET /fleet/jobs/P:1 HTTP/2.0\r\nHost: x\r\n\r\n"))
    assert answer.startswith(b"HTTP/1.1 505 ") and b"application/problem+json" in answer


SECRET = "Ab-_9" + "x" * 38
PASTED = f"fleet_0123456789abcdef_{SECRET}"  # a whole token where a path segment goes


def test_a_token_in_a_path_reaches_no_log_and_no_error_body_whole(client, quick, caplog):
    with caplog.at_level(logging.INFO, logger="shared.devhost"):
        wrong_method = client.delete(f"/fleet/jobs/{PASTED}")
        unrouted = client.get(f"/fleet/nothing/{PASTED}")
        stalled = read_all(open_request(quick, f"PATCH /fleet/jobs/{PASTED} HTTP/1.1\r\nHost: x\r\n"
                                                   "Content-Length: 100\r\n\r\n{".encode()))
    assert wrong_method.status_code == 405 and unrouted.status_code == 404 and stalled.startswith(b"HTTP/1.1 408 ")
    shown = wrong_method.get_data(as_text=True) + unrouted.get_data(as_text=True) + stalled.decode() + caplog.text
    assert SECRET not in shown
    assert "fleet_0123456789abcdef_REDACTED" in caplog.text  # its id stays, to tell which


def test_over_http_a_chunked_body_that_stalls_is_408(quick):
    head = (b"POST /fleet/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n")
    assert read_all(open_request(quick, head)).startswith(b"HTTP/1.1 408 ")


def test_over_http_a_client_gone_mid_body_is_one_info_line(quick, caplog):
    with caplog.at_level(logging.INFO, logger="shared.devhost"):
        connection = open_request(quick, POST_100 + b'{"a": 1,')
        connection.shutdown(socket.SHUT_WR)
        answer = read_all(connection)
        deadline = time.monotonic() + 5
        while "client went away" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)

    assert answer.startswith(b"HTTP/1.1 400 ")
    gone = [r for r in caplog.records if "client went away" in r.getMessage()]
    assert len(gone) == 1 and gone[0].levelno == logging.INFO and gone[0].exc_info is None
    assert not any(r.levelno >= logging.ERROR or r.exc_info for r in caplog.records)


def test_over_http_an_idle_connection_is_closed(quick, caplog):
    with caplog.at_level(logging.INFO, logger="shared.devhost"):
        assert read_all(socket.create_connection(("127.0.0.1", quick.port), timeout=5)) == b""

    assert "no whole request within 0.5 s" in caplog.text and "Traceback" not in caplog.text


def test_over_http_an_unparsable_request_is_a_problem(quick):
    answer = read_all(open_request(quick, b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 200 + b"\r\n"))

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ") and b"application/problem+json" in head
    assert json.loads(body)["code"] == "headers_too_large"
