"""The request-charge meter: how many request units (RU) the store calls of one request cost.

The HTTP layer starts a meter per request and puts its total in the `x-fleet-request-charge`
response header; logs carry it per use case. `CosmosStore` feeds the meter from the
`x-ms-request-charge` header of every HTTP response it gets (retries and metadata reads
included, because they are billed too); `SqliteStore` costs nothing and adds nothing.

The meter lives in a context variable, so concurrent requests (threads of the dev host, or
invocations of the Functions worker) each see only their own charge. A thread started inside a
request does not inherit it unless it runs in a copy of the context (`contextvars.copy_context`);
such threads then add to the same meter, which is why `add` takes a lock.

    token = charge.start()
    try:
        ...  # store calls
        ru = charge.total()
    finally:
        charge.reset(token)
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

#: The response header the HTTP layer reports the per-request total in.
HEADER = "x-fleet-request-charge"


@dataclass
class Meter:
    """Request units charged, and how many store responses they came from, since `start`."""

    total: float = 0.0
    responses: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, ru: float) -> None:
        with self._lock:
            self.total += ru
            self.responses += 1


_current: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("fleet_request_charge", default=None)


def start() -> contextvars.Token:
    """Start a fresh meter for the current context; hand the token back to `reset`."""
    return _current.set(Meter())


def reset(token: contextvars.Token) -> float:
    """Stop the meter `start` returned `token` for (restoring the one before); its total."""
    spent = total()
    _current.reset(token)
    return spent


def add(ru: float) -> None:
    """Charge `ru` request units to the current meter; a no-op when none is running."""
    meter = _current.get()
    if meter is not None:
        meter.add(ru)


def total() -> float:
    """Request units charged to the current meter so far (0 when none is running)."""
    meter = _current.get()
    return meter.total if meter is not None else 0.0


def current() -> Meter | None:
    """The running meter, if any (for logs that want the response count too)."""
    return _current.get()


@contextlib.contextmanager
def metered() -> Iterator[Meter]:
    """`with charge.metered() as meter:` — a meter for the block; read `meter.total` after."""
    token = start()
    meter = _current.get()
    assert meter is not None
    try:
        yield meter
    finally:
        _current.reset(token)


def header_value(ru: float) -> str:
    """How a charge is written in the response header: at most two decimals, no trailing zeros."""
    return f"{ru:.2f}".rstrip("0").rstrip(".")
