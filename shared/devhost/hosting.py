"""The local stand-in for the Azure Functions host.

``DevHost`` hosts exactly the functions registered on an ``azure.functions.FunctionApp``:
HTTP functions on their route templates (see ``shared.devhost.routes``) under the route prefix, with
their methods and auth levels, and timer functions on their NCRONTAB schedules (see
``shared.devhost.timers``). ``POST /admin/functions/{name}`` runs a timer now, to completion, and
answers 202. Errors the host itself produces are RFC 9457 problem documents with a ``code``:
``not_found``, ``method_not_allowed``, ``unauthorized``, ``bad_request`` (an unreadable
body, or one that ended before its ``Content-Length``: the client went away),
``request_timeout`` (the body stalled: the server's read gave up, see
``shared.devhost.serving``), ``payload_too_large``, ``internal_error``.
``shared.devhost.serving`` serves a host over HTTP.

Keys: when any are configured (``keys=``, else the comma-separated ``FLEET_FUNCTION_KEYS``),
functions of auth level FUNCTION or ADMIN and the admin endpoint need one of them in the
``x-functions-key`` header or the ``code`` query parameter; ANONYMOUS functions never do.
Any configured key opens everything (there is no separate master key). Without keys, an app
may answer for the admin endpoint itself: when it has ``authorize_admin(headers)`` (returning
None to allow, or the ``func.HttpResponse`` to refuse with), it lets the caller in or refuses
it (the Fleet app: an admin's bearer token, ``run_timers``).

An app indexes its functions only once (a second ``get_functions()`` raises), so go through
``functions_of(app)``, which caches the result, wherever the project needs them.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import http
import inspect
import json
import logging
import os
import threading
import urllib.parse
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import azure.functions as func
from azure.functions.decorators.http import HttpTrigger
from azure.functions.decorators.timer import TimerTrigger
from werkzeug.datastructures import Headers
from werkzeug.wrappers import Request, Response

from shared.devhost import routes, timers
from shared.redaction import redact

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 4 * 1024 * 1024
FUNCTIONS_DEFAULT_ROUTE_PREFIX = "api"
KEYS_VARIABLE = "FLEET_FUNCTION_KEYS"
PROBLEM_JSON = "application/problem+json"

_ADMIN_ROUTE = routes.RouteTemplate("admin/functions/{name}")
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
    """An ``application/problem+json`` response (its detail redacted: it may quote a path)."""
    body = {"type": "about:blank", "title": http.HTTPStatus(status).phrase, "status": status,
            "code": code, "detail": redact(detail)}
    return Response(json.dumps(body), status=status, headers=headers, content_type=PROBLEM_JSON)


class DevHost:
    """Hosts the functions of ``app``; ``wsgi`` is the HTTP side, ``start_timers`` the
    schedules. ``keys=None`` reads ``FLEET_FUNCTION_KEYS``; ``keys=()`` leaves the host open.
    Functions with triggers other than HTTP and timer are logged and not hosted."""

    def __init__(self, app: func.FunctionApp, route_prefix: str = "",
                 keys: Iterable[str] | None = None, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.route_prefix = route_prefix.strip("/")
        self.keys = keys_from_env() if keys is None else tuple(k for k in keys if k)
        self.max_body = max_body
        self._authorize_admin = getattr(app, "authorize_admin", None)
        http_routes: list[routes.Route] = []
        timer_functions: list[timers.Timer] = []
        for function in functions_of(app):
            name, trigger = function.get_function_name(), function.get_trigger()
            if isinstance(trigger, HttpTrigger):
                http_routes.append(self._http_route(function, trigger))
            elif isinstance(trigger, TimerTrigger):
                timer_functions.append(self._timer(function, trigger))
            else:
                log.warning("%s: %s triggers are not hosted locally", name, trigger.type)
        self.routes = routes.RouteTable(http_routes)
        self._timers = timers.Scheduler(timer_functions)

    def _http_route(self, function, trigger) -> routes.Route:
        template = "/".join(part for part in (self.route_prefix, trigger.route.strip("/")) if part)
        methods = None
        if trigger.methods:
            methods = frozenset(str(getattr(m, "value", m)).upper() for m in trigger.methods)
        return routes.Route(routes.RouteTemplate(template), methods, function)

    @staticmethod
    def _timer(function, trigger) -> timers.Timer:
        name = function.get_function_name()
        return timers.Timer(name, timers.schedule_of(name, trigger.schedule),
                            bool(trigger.run_on_startup),
                            functools.partial(_invoke, function.get_user_function(), trigger.name))

    # HTTP

    def wsgi(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        """The WSGI application."""
        request = Request(environ)
        try:
            response = self._dispatch(request)
        except Exception:
            log.exception("dev host failed on %s %s", request.method, redact(request.path))
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
        except TimeoutError as error:
            log.warning("gave up on a stalled request body: %s %s (%s)", request.method,
                        redact(request.path), error)
            return problem(408, "request_timeout", f"{str(error).capitalize()}; send it again.")
        except _BodyEnded as ended:
            log.info("client went away: %s %s ended its body after %s", request.method,
                     redact(request.path), ended)
            return problem(400, "bad_request", f"The request body ended after {ended}")
        except ConnectionError as error:
            log.info("client went away: %s %s while sending its body (%s)", request.method,
                     redact(request.path), type(error).__name__)
            return problem(400, "bad_request", "The connection broke while the body was sent")
        except OSError as error:  # a broken chunked encoding, or one cut off
            log.info("unreadable request body: %s %s (%s)", request.method, redact(request.path), error)
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
        # The Functions host reads the query case-insensitively: ?CODE= works as ?code= does.
        given = request.headers.get("x-functions-key") or next(
            (value for name, value in request.args.items(multi=True) if name.lower() == "code"), None)
        return given is not None and any(
            hmac.compare_digest(given.encode(), key.encode()) for key in self.keys)

    @staticmethod
    def _unauthorized() -> Response:
        return problem(401, "unauthorized",
                       "A function key is required (x-functions-key header or ?code=)")

    def _read_body(self, request: Request) -> bytes | None:
        """The body, or None when it is larger than ``max_body`` (read no further). Raises
        ``_BodyEnded`` when it ends before its ``Content-Length``, and whatever the input
        stream raises (``TimeoutError`` when it stalls, ``OSError`` when it is broken)."""
        length = request.content_length
        if length is None and not request.environ.get("wsgi.input_terminated"):
            return b""  # neither a length nor chunked: no body (RFC 9112, 6.3)
        if length is not None and length > self.max_body:
            return None
        # Read the WSGI input itself: werkzeug's request stream would turn a stall and a
        # disconnect alike into one ClientDisconnected.
        stream = request.environ["wsgi.input"]
        wanted = self.max_body + 1 if length is None else length
        chunks, size = [], 0
        while size < wanted and (chunk := stream.read(min(64 * 1024, wanted - size))):
            chunks.append(chunk)
            size += len(chunk)
        if size > self.max_body:
            return None
        if length is not None and size < length:
            raise _BodyEnded(size, length)
        return b"".join(chunks)

    def _admin(self, request: Request, name: str) -> Response:
        if request.method != "POST":
            return problem(405, "method_not_allowed", f"{request.method} is not allowed on {request.path}", {"Allow": "POST"})
        if self.keys:  # as the Functions host's master key: a configured key opens it alone
            if not self._has_key(request):
                return self._unauthorized()
        elif self._authorize_admin is not None:
            refused = self._authorize_admin(dict(request.headers))
            if refused is not None:
                return _to_response(refused)
        if name not in self._timers:
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
        """Run the timer function ``name`` (any case) now and wait for it, as
        ``timers.Scheduler.run`` does (``KeyError`` for an unknown name)."""
        self._timers.run(name, past_due=past_due)

    def start_timers(self) -> None:
        """Run the timer functions on their schedules until ``stop_timers``, as
        ``timers.Scheduler.start`` does."""
        self._timers.start()

    def stop_timers(self, timeout: float = 10.0) -> None:
        """Stop the schedules; waits up to ``timeout`` seconds for running timers."""
        self._timers.stop(timeout)


class _BodyEnded(Exception):
    """The body ended (the client closed its side) before its ``Content-Length``."""

    def __init__(self, received: int, length: int) -> None:
        super().__init__(f"{received} of {length} bytes")


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

