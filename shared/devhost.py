"""The local stand-in for the Azure Functions host.

``DevHost`` hosts exactly the functions registered on an ``azure.functions.FunctionApp``:
HTTP functions on their route templates (see ``shared.routes``) under the route prefix, with
their methods and auth levels, and timer functions on their NCRONTAB schedules (see
``shared.ncrontab``). ``POST /admin/functions/{name}`` runs a timer now, to completion, and
answers 202. Errors the host itself produces are RFC 9457 problem documents with a ``code``:
``not_found``, ``method_not_allowed``, ``unauthorized``, ``bad_request`` (an unreadable
body), ``payload_too_large``, ``internal_error``.

Keys: when any are configured (``keys=``, else the comma-separated ``FLEET_FUNCTION_KEYS``),
functions of auth level FUNCTION or ADMIN and the admin endpoint need one of them in the
``x-functions-key`` header or the ``code`` query parameter; ANONYMOUS functions never do.
Any configured key opens everything (there is no separate master key).

An app indexes its functions only once (a second ``get_functions()`` raises), so go through
``functions_of(app)``, which caches the result, wherever the project needs them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hmac
import http
import inspect
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterable
from typing import Any, TextIO

import azure.functions as func
from azure.functions import timer as func_timer
from azure.functions.decorators.http import HttpTrigger
from azure.functions.decorators.timer import TimerTrigger
from werkzeug import serving
from werkzeug.datastructures import Headers
from werkzeug.wrappers import Request, Response

from shared import ncrontab, routes

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 4 * 1024 * 1024
FUNCTIONS_DEFAULT_ROUTE_PREFIX = "api"
KEYS_VARIABLE = "FLEET_FUNCTION_KEYS"
PROBLEM_JSON = "application/problem+json"

_ADMIN_ROUTE = routes.RouteTemplate("admin/functions/{name}")
_PAST_DUE_AFTER = dt.timedelta(seconds=1)
_indexed: weakref.WeakKeyDictionary[Any, list] = weakref.WeakKeyDictionary()
_indexed_lock = threading.Lock()


def functions_of(app: func.FunctionApp) -> list:
    """``app.get_functions()``, called once per app and cached."""
    with _indexed_lock:
        if app not in _indexed:
            _indexed[app] = app.get_functions()
        return _indexed[app]


def read_route_prefix(host_json: str | os.PathLike) -> str:
    """``extensions.http.routePrefix`` from a host.json; the Functions default ``api`` when
    the file or the setting is absent."""
    try:
        with open(host_json, encoding="utf-8") as file:
            settings = json.load(file)
    except FileNotFoundError:
        return FUNCTIONS_DEFAULT_ROUTE_PREFIX
    prefix = settings.get("extensions", {}).get("http", {}).get("routePrefix")
    return FUNCTIONS_DEFAULT_ROUTE_PREFIX if prefix is None else prefix.strip("/")


def keys_from_env(environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """The function keys in ``FLEET_FUNCTION_KEYS`` (comma-separated; blanks ignored)."""
    raw = (os.environ if environ is None else environ).get(KEYS_VARIABLE, "")
    return tuple(key.strip() for key in raw.split(",") if key.strip())


def problem(status: int, code: str, detail: str, headers: dict | None = None) -> Response:
    """An ``application/problem+json`` response."""
    body = {"type": "about:blank", "title": http.HTTPStatus(status).phrase, "status": status,
            "code": code, "detail": detail}
    return Response(json.dumps(body), status=status, headers=headers, content_type=PROBLEM_JSON)


@dataclasses.dataclass(eq=False)
class _Timer:
    name: str
    schedule: ncrontab.Schedule
    run_on_startup: bool
    function: Callable[..., Any]
    argument: str
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    last: dt.datetime | None = None


class DevHost:
    """Hosts the functions of ``app``; ``wsgi`` is the HTTP side, ``start_timers`` the
    schedules. ``keys=None`` reads ``FLEET_FUNCTION_KEYS``; ``keys=()`` leaves the host open.
    Functions with triggers other than HTTP and timer are logged and not hosted."""

    def __init__(self, app: func.FunctionApp, route_prefix: str = "",
                 keys: Iterable[str] | None = None, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.route_prefix = route_prefix.strip("/")
        self.keys = keys_from_env() if keys is None else tuple(k for k in keys if k)
        self.max_body = max_body
        http_routes: list[routes.Route] = []
        self._timers: dict[str, _Timer] = {}
        for function in functions_of(app):
            name, trigger = function.get_function_name(), function.get_trigger()
            if isinstance(trigger, HttpTrigger):
                http_routes.append(self._http_route(function, trigger))
            elif isinstance(trigger, TimerTrigger):
                self._timers[name.lower()] = self._timer(function, trigger)
            else:
                log.warning("%s: %s triggers are not hosted locally", name, trigger.type)
        self.routes = routes.RouteTable(http_routes)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _http_route(self, function, trigger) -> routes.Route:
        template = "/".join(part for part in (self.route_prefix, trigger.route.strip("/")) if part)
        methods = None
        if trigger.methods:
            methods = frozenset(str(getattr(m, "value", m)).upper() for m in trigger.methods)
        return routes.Route(routes.RouteTemplate(template), methods, function)

    @staticmethod
    def _timer(function, trigger) -> _Timer:
        name, expression = function.get_function_name(), trigger.schedule
        if len(expression) > 2 and expression[0] == expression[-1] == "%":  # an app setting
            setting = expression.strip("%")
            if not os.environ.get(setting):
                raise ValueError(f"timer function {name}: app setting {setting} is not set")
            expression = os.environ[setting]
        try:
            schedule = ncrontab.parse(expression)
        except ValueError as error:
            raise ValueError(f"timer function {name}: {error}") from None
        return _Timer(name, schedule, bool(trigger.run_on_startup),
                      function.get_user_function(), trigger.name)

    # HTTP

    def wsgi(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        """The WSGI application."""
        request = Request(environ)
        try:
            response = self._dispatch(request)
        except Exception:
            log.exception("dev host failed on %s %s", request.method, request.path)
            response = problem(500, "internal_error", "The dev host failed; see its log.")
        return response(environ, start_response)

    __call__ = wsgi

    def _dispatch(self, request: Request) -> Response:
        path = _raw_path(request)
        admin = _ADMIN_ROUTE.match(routes.split_path(path))
        if admin is not None:
            return self._admin(request, admin["name"])
        try:
            route, params = self.routes.resolve(request.method, path)
        except routes.MethodNotAllowed as error:
            return problem(405, "method_not_allowed",
                           f"{request.method} is not allowed on {request.path}",
                           {"Allow": ", ".join(error.allowed)})
        except routes.RouteNotFound:
            return problem(404, "not_found", f"No function is routed at {request.path}")
        function = route.target
        level = str(getattr(function.get_trigger().auth_level, "value", "function")).lower()
        if level != "anonymous" and not self._has_key(request):
            return self._unauthorized()
        try:
            body = self._read_body(request)
        except OSError:  # a broken chunked encoding, or the client went away
            return problem(400, "bad_request", "The request body could not be read")
        if body is None:
            return problem(413, "payload_too_large",
                           f"The request body is larger than {self.max_body} bytes")
        http_request = func.HttpRequest(
            method=request.method, url=_url(request, path), headers=dict(request.headers),
            params={key: ",".join(values) for key, values in request.args.lists()},
            route_params=params, body=body)
        name = function.get_function_name()
        try:
            result = _invoke(function.get_user_function(), function.get_trigger().name,
                             http_request)
            return _to_response(result)
        except Exception as error:
            log.exception("function %s failed", name)
            return problem(500, "internal_error",
                           f"Function {name} failed ({type(error).__name__}); see the host log.")

    def _has_key(self, request: Request) -> bool:
        if not self.keys:
            return True
        given = request.headers.get("x-functions-key") or request.args.get("code")
        return given is not None and any(
            hmac.compare_digest(given.encode(), key.encode()) for key in self.keys)

    @staticmethod
    def _unauthorized() -> Response:
        return problem(401, "unauthorized",
                       "A function key is required (x-functions-key header or ?code=)")

    def _read_body(self, request: Request) -> bytes | None:
        """The body, or None when it is larger than ``max_body`` (read no further)."""
        if request.content_length is not None and request.content_length > self.max_body:
            return None
        chunks, size = [], 0
        while chunk := request.stream.read(min(64 * 1024, self.max_body + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_body:
                return None
        return b"".join(chunks)

    def _admin(self, request: Request, name: str) -> Response:
        if request.method != "POST":
            return problem(405, "method_not_allowed", f"{request.method} is not allowed on "
                           f"{request.path}", {"Allow": "POST"})
        if not self._has_key(request):
            return self._unauthorized()
        if name.lower() not in self._timers:
            return problem(404, "not_found", f"No timer function is named {name!r}")
        try:
            self.run_timer(name)
        except Exception as error:
            log.exception("timer %s failed", name)
            return problem(500, "internal_error",
                           f"Timer {name} failed ({type(error).__name__}); see the host log.")
        return Response(status=202)

    # Timers

    def run_timer(self, name: str, *, past_due: bool = False) -> None:
        """Run the timer function ``name`` (any case) now and wait for it; waits first for a
        run of it already under way. Raises ``KeyError`` for an unknown name, and whatever the
        function raises."""
        timer = self._timers[name.lower()]
        with timer.lock:
            self._fire(timer, past_due)

    def start_timers(self) -> None:
        """Run each timer on its schedule (and now, if it runs on startup) on its own thread,
        until ``stop_timers``. A timer that raises is logged; a run that falls due while the
        previous one is still going is skipped."""
        if self._threads:
            return
        self._stop = threading.Event()
        for timer in self._timers.values():
            thread = threading.Thread(target=self._schedule_loop, args=(timer, self._stop),
                                      name=f"timer {timer.name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop_timers(self, timeout: float = 10.0) -> None:
        """Stop the schedules; waits up to ``timeout`` seconds for running timers."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("%s is still running; leaving it behind", thread.name)
        self._threads = []

    def _schedule_loop(self, timer: _Timer, stop: threading.Event) -> None:
        try:
            if timer.run_on_startup:
                self._scheduled_run(timer, past_due=False)
            due = timer.schedule.next_after(_now())
            while not stop.is_set():
                wait = (due - _now()).total_seconds()
                if wait > 0:
                    stop.wait(min(wait, 30.0))  # re-read the clock at least every 30 s
                    continue
                self._scheduled_run(timer, past_due=_now() - due > _PAST_DUE_AFTER)
                due = timer.schedule.next_after(max(_now(), due))
        except Exception:
            log.exception("the schedule of timer %s stopped", timer.name)

    def _scheduled_run(self, timer: _Timer, past_due: bool) -> None:
        if not timer.lock.acquire(blocking=False):
            log.info("timer %s: skipped, the previous run is still going", timer.name)
            return
        try:
            self._fire(timer, past_due)
        except Exception:
            log.exception("timer %s failed", timer.name)
        finally:
            timer.lock.release()

    def _fire(self, timer: _Timer, past_due: bool) -> None:
        now = _now()
        status = {"Last": timer.last.isoformat() if timer.last else None,
                  "Next": timer.schedule.next_after(now).isoformat(),
                  "LastUpdated": now.isoformat()}
        timer.last = now
        log.info("timer %s: running%s", timer.name, " (past due)" if past_due else "")
        request = func_timer.TimerRequest(past_due=past_due, schedule_status=status,
                                          schedule={"AdjustForDST": True})
        _invoke(timer.function, timer.argument, request)


class _RequestHandler(serving.WSGIRequestHandler):
    """Werkzeug's handler, logging each request as plain text (no terminal colours)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.info('"%s" %s %s', self.requestline, code, size)


class BackgroundServer:
    """A WSGI app served by a threaded werkzeug server on a background thread, until
    ``close()`` (or the end of a ``with`` block). ``port=0`` picks a free port."""

    def __init__(self, wsgi: Callable, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = serving.make_server(host, port, wsgi, threaded=True,
                                           request_handler=_RequestHandler)
        self.host = host
        self.port: int = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name="dev host http", daemon=True)
        self._thread.start()
        self._closed = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def serve(devhost: DevHost, host: str = "127.0.0.1", port: int = 7071, *,
          timers: bool = True, out: TextIO | None = None) -> None:
    """Serve ``devhost`` (and run its timers) until SIGINT (Ctrl-C) or SIGTERM, then stop
    both and return. Once listening, and before any timer runs, writes exactly one line to
    ``out`` (stdout): ``Listening on http://HOST:PORT``."""
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        if not stopping:  # one stop request; another signal must not break the clean-up
            stopping = True
            raise KeyboardInterrupt

    handled = (signal.SIGINT, signal.SIGTERM)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, on_signal) for sig in handled} if in_main_thread else {}
    try:
        with BackgroundServer(devhost.wsgi, host, port) as server:
            try:
                out = out or sys.stdout
                out.write(f"Listening on {server.url}\n")  # one write: timers may print too
                out.flush()
                if timers:
                    devhost.start_timers()
                while server.running:
                    time.sleep(0.25)
            except KeyboardInterrupt:
                stopping = True
                log.info("stopping")
            finally:
                devhost.stop_timers()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _invoke(function: Callable[..., Any], argument: str, value: Any) -> Any:
    if inspect.iscoroutinefunction(function):
        return asyncio.run(function(**{argument: value}))
    return function(**{argument: value})


def _to_response(result: Any) -> Response:
    if isinstance(result, (str, bytes)):
        result = func.HttpResponse(result)
    if not isinstance(result, func.HttpResponse):
        raise TypeError(f"an HTTP function returned {type(result).__name__}, not HttpResponse")
    headers = Headers([(key, value) for key, value in result.headers.items()
                       if key.lower() not in ("content-length", "transfer-encoding")])
    if "content-type" not in headers:
        # As the Python worker does: text types carry their charset.
        mimetype = result.mimetype
        headers["Content-Type"] = (
            f"{mimetype}; charset={result.charset}" if mimetype.startswith("text/") else mimetype)
    return Response(result.get_body(), status=result.status_code, headers=headers)


def _raw_path(request: Request) -> str:
    """The path as the client sent it (percent-encoded), so that ``%2F`` stays inside a
    segment when the route is matched."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if not raw:
        return urllib.parse.quote(request.path)
    path = raw.split("?", 1)[0].split("#", 1)[0]
    if "://" in path:
        path = urllib.parse.urlsplit(path).path
    # WSGI hands over raw bytes as latin-1 text; percent-encode any that are not ASCII.
    return urllib.parse.quote(path.encode("latin-1", "replace"), safe="/%:@!$&'()*+,;=-._~")


def _url(request: Request, raw_path: str) -> str:
    query = request.environ.get("QUERY_STRING", "")
    return request.host_url.rstrip("/") + raw_path + (f"?{query}" if query else "")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
