"""Settings from the environment, and the one `Context` a process serves requests with.

The domain never reads the environment: this module does, once, and hands it a `Context`.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
from typing import Any, Iterator, Mapping

from fleet import outage
from fleet.clock import SystemClock
from fleet.context import Context, Settings
from fleet.principals import Principal
from fleet.store import Store
from shared import auth

log = logging.getLogger("fleet.config")

TRUTHY = frozenset({"1", "true", "yes"})
#: The SQLite file used unless `FLEET_DB` names another.
DEFAULT_DB = ".fleet/fleet.db"
#: The store deadline when `FLEET_STORE_TIMEOUT_SECONDS` is unset.
STORE_TIMEOUT_SECONDS = 5.0

_lock = threading.Lock()
_context: Context | None = None
_mode: auth.Mode | None = None
#: Who the request being served acts as (set by `acting`, around one trigger).
_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)


def truthy(value: str | None) -> bool:
    """`1`, `true`, `yes` in any case (the spec's feature-flag rule)."""
    return (value or "").strip().lower() in TRUTHY


def settings_from(env: Mapping[str, str]) -> Settings:
    return Settings(
        lease_seconds=_int(env, "FLEET_LEASE_SECONDS", 300, minimum=1),
        retry_backoff_seconds=_int(env, "FLEET_RETRY_BACKOFF_SECONDS", 30, minimum=0),
        retry_backoff_max_seconds=_int(env, "FLEET_RETRY_BACKOFF_MAX_SECONDS", 900, minimum=0),
        preemption=truthy(env.get("FLEET_PREEMPTION")),
        budgets=truthy(env.get("FLEET_BUDGETS")),
        preempt_exempt_seconds=_int(env, "FLEET_PREEMPT_EXEMPT_SECONDS", 0, minimum=0),
        claim_weights_seconds=_int(env, "FLEET_CLAIM_WEIGHTS_SECONDS", 0, minimum=0),
        token_recheck_seconds=_int(env, "FLEET_TOKEN_RECHECK_SECONDS", 60, minimum=0),
    )


def sqlite_db(env: Mapping[str, str]) -> str | None:
    """The SQLite database (a file's path, or a URI) the settings name; None for another store."""
    kind = env.get("FLEET_STORE", "sqlite").strip().lower() or "sqlite"
    return (env.get("FLEET_DB") or DEFAULT_DB) if kind == "sqlite" else None


def store_from(env: Mapping[str, str]) -> Store:
    """The store `FLEET_STORE` names, with the deadline `FLEET_STORE_TIMEOUT_SECONDS` gives
    every call to it."""
    kind = env.get("FLEET_STORE", "sqlite").strip().lower() or "sqlite"
    timeout = store_timeout(env)
    if kind == "sqlite":
        from shared.stores.sqlite_store import SqliteStore

        return SqliteStore(sqlite_db(env), timeout=timeout)
    if kind == "cosmos":
        from shared.stores.cosmos_store import CosmosStore

        return CosmosStore(**cosmos_settings(env), timeout=timeout)
    raise ValueError(f"FLEET_STORE must be sqlite or cosmos, not {kind!r}")


def store_timeout(env: Mapping[str, str]) -> float:
    """`FLEET_STORE_TIMEOUT_SECONDS`: how long one store call may take before the request
    answers 503 (default 5; fractions allowed, at most 300)."""
    raw = env.get("FLEET_STORE_TIMEOUT_SECONDS")
    if raw in (None, ""):
        return STORE_TIMEOUT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"FLEET_STORE_TIMEOUT_SECONDS must be a number of seconds, not {raw!r}") from None
    if not 0 < value <= 300:  # also refuses nan and inf
        raise ValueError("FLEET_STORE_TIMEOUT_SECONDS must be more than 0 and at most 300")
    return value


def cosmos_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """`CosmosStore`'s arguments from `COSMOS_ENDPOINT`, `COSMOS_KEY`, `COSMOS_DATABASE`
    (default `fleet`), `COSMOS_VERIFY_TLS` (default true; `0`/`false`/`no` turn it off) and
    `COSMOS_CREATE`."""
    endpoint = env.get("COSMOS_ENDPOINT")
    if not endpoint:
        raise ValueError("COSMOS_ENDPOINT is not set")
    return {
        "endpoint": endpoint,
        "key": env.get("COSMOS_KEY") or None,
        "database": env.get("COSMOS_DATABASE") or "fleet",
        "verify_tls": env.get("COSMOS_VERIFY_TLS", "true").strip().lower() not in {"0", "false", "no"},
        "create": truthy(env.get("COSMOS_CREATE")),
    }


def context() -> Context:
    """The process's context, built from the environment on first use. Its store notices the
    process starting and the store recovering (`outage.Watched`): the first answer it gets
    records the gap in which this process was not serving, so leases that expired meanwhile
    stay their holders'."""
    global _context
    with _lock:
        if _context is None:
            clock, settings = SystemClock(), settings_from(os.environ)
            store = outage.Watched(store_from(os.environ), clock, settings)
            _context = Context(store=store, clock=clock, settings=settings)
            _warn_if_open()
        built = _context
    principal = _principal.get()
    return built if principal is None else built.acting_as(principal)


def auth_mode() -> auth.Mode:
    """The process's `FLEET_AUTH` mode, read once (`tokens` unless set: auth is on by default)."""
    global _mode
    if _mode is None:
        _mode = auth.mode_from(os.environ)
    return _mode


def use_auth(mode: auth.Mode | None) -> None:
    """Authenticate in `mode` from now on (tests), or read `FLEET_AUTH` again next time (None)."""
    global _mode
    _mode = mode


def principal() -> Principal | None:
    """Who the request being served acts as; None outside one (or for an anonymous endpoint)."""
    return _principal.get()


@contextlib.contextmanager
def acting(principal: Principal) -> Iterator[None]:
    """Within the block, `context()` acts as `principal` (one request's)."""
    token = _principal.set(principal)
    try:
        yield
    finally:
        _principal.reset(token)


def _warn_if_open() -> None:
    if auth_mode() == auth.Mode.OFF:
        log.warning(
            "FLEET_AUTH=off: AUTHENTICATION IS OFF. Every request acts as an admin, without any "
            "credential. Never serve like this beyond one trusted machine."
        )


def current() -> Context | None:
    """The process's context if it was built, without building it (health must answer while
    the store cannot even be opened)."""
    return _context


def settings() -> Settings:
    """The process's settings: its context's, or the environment's before a context exists."""
    built = _context
    return built.settings if built is not None else settings_from(os.environ)


def use(ctx: Context | None) -> None:
    """Serve with `ctx` from now on (tests), or rebuild from the environment next time (None)."""
    global _context
    with _lock:
        if _context is not None and _context is not ctx:
            _context.store.close()
        _context = ctx
        if ctx is not None:
            _warn_if_open()


#: The most seconds a duration setting may name (30 days): a time that far ahead is still a
#: time (a lease's expiry, a retry's end), and more is a mistake, refused rather than failing
#: every request that adds it to now.
MAX_SECONDS = 30 * 24 * 3600


def _int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int = MAX_SECONDS) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}")
    if value > maximum:
        raise ValueError(f"{name} must be at most {maximum}")
    return value
