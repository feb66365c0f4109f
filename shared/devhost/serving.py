"""Serving the dev host over HTTP with werkzeug's threaded server: ``BackgroundServer`` serves
any WSGI app on a background thread, ``serve`` runs a ``shared.devhost.hosting.DevHost`` (HTTP and
timers) in the foreground until a signal stops it, as ``fleet serve`` does.

A connection holds a thread (one per connection), so no client may hold one for long: with
``timeout`` (``FLEET_BODY_TIMEOUT_SECONDS``, default 10 s), a connection that sends nothing for
that long (idle, or stalled in its request line or headers) is closed, and a request's whole body
must arrive within that long of its headers. A body read that would wait past that raises
``TimeoutError`` in the app (the dev host answers 408); a body that ends before its
``Content-Length`` reads short, as a stream does at its end.

The request log names no key: a ``code`` query parameter's value is logged as ``REDACTED``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

import werkzeug.serving

from shared.redaction import redact

if TYPE_CHECKING:
    from shared.devhost.hosting import DevHost

# The dev host logs under one name, whichever of its modules does the work.
log = logging.getLogger("shared.devhost")


TIMEOUT_VARIABLE = "FLEET_BODY_TIMEOUT_SECONDS"
DEFAULT_TIMEOUT = 10.0

# Problem codes for what http.server refuses before the app sees a request.
_PROBLEM_CODES = {414: "uri_too_long", 431: "headers_too_large", 501: "not_implemented",
                  505: "http_version_not_supported"}



def timeout_from_env(environ: dict[str, str] | None = None) -> float:
    """``FLEET_BODY_TIMEOUT_SECONDS``: seconds, more than 0 (default 10)."""
    raw = (os.environ if environ is None else environ).get(TIMEOUT_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{TIMEOUT_VARIABLE} must be a number of seconds above 0, not {raw!r}")
    return seconds


class _BodyInput(io.RawIOBase):
    """A request body read off the connection, never past ``deadline`` (``time.monotonic``).

    It waits for the socket with ``select`` and reads without blocking, so that the socket
    file never sees a timeout: a ``SocketIO`` that timed out refuses every later read, and
    werkzeug still reads the connection once the answer is written."""

    def __init__(self, rfile: io.BufferedReader, connection: socket.socket, deadline: float,
                 timeout: float) -> None:
        super().__init__()
        self._rfile, self._connection = rfile, connection
        self._deadline, self._timeout = deadline, timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        """Some bytes (at most ``len(buffer)``), or 0 at the end of the stream."""
        if time.monotonic() > self._deadline:  # however steadily it trickles in
            raise self._late()
        chunk = self._read_now(len(buffer))
        if not chunk:  # nothing yet, or the end: wait for the socket to say which
            remaining = self._deadline - time.monotonic()
            with selectors.DefaultSelector() as selector:
                selector.register(self._connection, selectors.EVENT_READ)
                if remaining <= 0 or not selector.select(remaining):
                    raise self._late()
            chunk = self._read_now(len(buffer))
        buffer[:len(chunk)] = chunk
        return len(chunk)

    def _late(self) -> TimeoutError:
        return TimeoutError(f"the request body did not arrive within {self._timeout:g} s")

    def _read_now(self, size: int) -> bytes:
        """What is buffered, or what one recv gets without waiting (b"" for nothing or EOF)."""
        self._connection.setblocking(False)
        try:
            return self._rfile.read1(size) or b""
        finally:
            self._connection.settimeout(self._timeout)


class _RequestHandler(werkzeug.serving.WSGIRequestHandler):
    """Werkzeug's handler with ``timeout`` on its connection and the body behind a deadline,
    logging each request as plain text (no terminal colours, no keys)."""

    timeout: float = DEFAULT_TIMEOUT

    def make_environ(self) -> dict:
        environ = super().make_environ()
        body = io.BufferedReader(_BodyInput(self.rfile, self.connection,
                                            time.monotonic() + self.timeout, self.timeout))
        chunked = isinstance(environ["wsgi.input"], werkzeug.serving.DechunkedInput)
        environ["wsgi.input"] = werkzeug.serving.DechunkedInput(body) if chunked else body
        return environ

    def parse_request(self) -> bool:
        """http.server's parse, and a `Content-Length` that is not one length refused (400):
        werkzeug would read a malformed one as no body, and the body's bytes as the next
        request on the connection."""
        if not super().parse_request():
            return False
        lengths = self.headers.get_all("Content-Length") or []
        if lengths and (len(set(lengths)) > 1 or not lengths[0].strip().isdigit() or not lengths[0].isascii()):
            self.send_error(400, f"Content-Length is not a length: {', '.join(lengths)[:40]!r}")
            return False
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer a request http.server could not parse (a bad request line or headers), as
        problem+json like every other error, and close the connection. Always with a status
        line and headers: http.server refuses `HTTP/2.0` before it knows the request's version,
        and would answer it as HTTP/0.9, a bare body."""
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
        phrase = self.responses.get(code, ("Error", ""))[0]
        self.log_error("code %d, message %s", code, message or phrase)
        body = json.dumps({"type": "about:blank", "title": phrase, "status": code,
                           "code": _PROBLEM_CODES.get(code, "bad_request"),
                           "detail": redact(message or explain or phrase)}).encode()
        self.send_response(code)
        self.send_header("Connection", "close")
        self.send_header("Content-Type", "application/problem+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.info('"%s" %s %s', redact(self.requestline), code, size)

    def log_error(self, format: str, *args: object) -> None:
        message = redact(format % args)
        if message.startswith("Request timed out"):  # http.server's word for an idle connection
            log.info("closed a connection from %s: no whole request within %g s",
                     self.address_string(), self.timeout)
        else:
            log.warning("%s", message)

    def log_message(self, format: str, *args: object) -> None:
        log.info("%s", redact(format % args))


class BackgroundServer:
    """A WSGI app served by a threaded werkzeug server on a background thread, until
    ``close()`` (or the end of a ``with`` block). ``port=0`` picks a free port; ``timeout``
    bounds how long a client may keep a connection's thread waiting (see the module)."""

    def __init__(self, wsgi: Callable, host: str = "127.0.0.1", port: int = 0,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        handler = type("RequestHandler", (_RequestHandler,), {"timeout": timeout})
        self._server = werkzeug.serving.make_server(host, port, wsgi, threaded=True,
                                                    request_handler=handler)
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
          timers: bool = True, out: TextIO | None = None, timeout: float | None = None) -> None:
    """Serve ``devhost`` (and run its timers) until SIGINT (Ctrl-C) or SIGTERM, then stop
    both and return. Once listening, and before any timer runs, writes exactly one line to
    ``out`` (stdout): ``Listening on http://HOST:PORT``. ``timeout`` defaults to
    ``FLEET_BODY_TIMEOUT_SECONDS``."""
    timeout = timeout_from_env() if timeout is None else timeout
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
        with BackgroundServer(devhost.wsgi, host, port, timeout) as server:
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
