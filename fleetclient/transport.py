"""The one place the client talks HTTP: a request, its retries, and its answer or typed error.

Each thread gets its own `requests.Session` (connection pool); `close()` closes them all.
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import requests

from fleetclient import errors, retry

log = logging.getLogger("fleetclient")

#: Seconds to connect, and to wait for an answer once connected.
DEFAULT_TIMEOUT = (5.0, 30.0)
KEY_HEADER = "x-functions-key"
USER_AGENT = "fleetclient/0.1"


def _encoded(value: Any) -> bytes:
    """`value` as the JSON body of a request: compact UTF-8, so a text field the coordinator
    bounds in characters fits its bound in bytes (a `bodyMd` of 65,536 characters is within a
    request's 256 KiB unless most are beyond the Basic Multilingual Plane; as `\\uXXXX`
    escapes, 65,536 `é` were 393 KB). Text that is not valid Unicode (a lone surrogate) goes
    as escapes, for the coordinator to refuse by name."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, allow_nan=False, separators=(",", ":")).encode("ascii")


class Answer:
    """A successful (or accepted) answer: its status and decoded JSON body."""

    __slots__ = ("status", "body")

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body


class Transport:
    def __init__(self, url: str, key: str | None, timeout: float | tuple[float, float], backoff: retry.Backoff,
                 sleep: Callable[[float], None], token: str | None = None) -> None:
        self.url = url
        self.key = key
        self.token = token
        self.timeout = timeout
        self.backoff = backoff
        self._sleep = sleep
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        safe: bool = True,
        accept: tuple[int, ...] = (),
        backoff: retry.Backoff | None = None,
    ) -> Answer:
        """Send one request, retrying as `safe` allows (see `fleetclient.retry`). Answers a 2xx
        (or a status in `accept`); raises `FleetApiError` subclasses or `FleetUnreachable`."""
        backoff = backoff or self.backoff
        params = {k: v for k, v in (params or {}).items() if v is not None}
        body, headers = (None, None) if json is None else (_encoded(json), {"Content-Type": "application/json"})
        url = self.url + path
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._session().request(
                    method, url, data=body, headers=headers, params=params, timeout=self.timeout
                ) as response:
                    if response.ok or response.status_code in accept:
                        return Answer(response.status_code, _decode(response))
                    error = errors.FleetApiError.from_response(response)
            except requests.RequestException as exc:
                if attempt >= backoff.attempts or not (safe or retry.never_sent(exc)):
                    raise errors.FleetUnreachable(f"{method} {url}: {_reason(exc)}") from exc
                delay = backoff.delay(attempt)
                log.info("%s %s failed (%s); retrying in %.2fs", method, path, _reason(exc), delay)
                self._sleep(delay)
                continue
            if not safe or attempt >= backoff.attempts or error.status not in retry.RETRY_STATUSES:
                raise error
            delay = backoff.delay(attempt, error.retry_after)
            log.info("%s %s answered %s; retrying in %.2fs", method, path, error, delay)
            self._sleep(delay)

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
        self._local = threading.local()

    def close_thread_session(self) -> None:
        session = getattr(self._local, "session", None)
        if session is None:
            return
        del self._local.session
        with self._lock:
            if session in self._sessions:
                self._sessions.remove(session)
        session.close()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = USER_AGENT
            session.headers["Accept"] = "application/json, application/problem+json"
            if self.key:
                session.headers[KEY_HEADER] = self.key
            if self.token:
                session.headers["Authorization"] = f"Bearer {self.token}"
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session


def _decode(response: requests.Response) -> Any:
    if not response.content:
        return {}
    try:
        return response.json()
    except ValueError:
        return {}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connect timeout"
    if isinstance(exc, requests.exceptions.Timeout):
        return "timed out waiting for an answer"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "connection refused" if retry.never_sent(exc) else "connection failed"
    return type(exc).__name__
