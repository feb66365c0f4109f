"""Serving the dev host over HTTP with werkzeug's threaded server: ``BackgroundServer`` serves
any WSGI app on a background thread, ``serve`` runs a ``shared.devhost.hosting.DevHost`` (HTTP and
timers) in the foreground until a signal stops it, as ``fleet serve`` does."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

import werkzeug.serving

if TYPE_CHECKING:
    from shared.devhost.hosting import DevHost

# The dev host logs under one name, whichever of its modules does the work.
log = logging.getLogger("shared.devhost")


class _RequestHandler(werkzeug.serving.WSGIRequestHandler):
    """Werkzeug's handler, logging each request as plain text (no terminal colours)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.info('"%s" %s %s', self.requestline, code, size)


class BackgroundServer:
    """A WSGI app served by a threaded werkzeug server on a background thread, until
    ``close()`` (or the end of a ``with`` block). ``port=0`` picks a free port."""

    def __init__(self, wsgi: Callable, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = werkzeug.serving.make_server(host, port, wsgi, threaded=True,
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
