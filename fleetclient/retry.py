"""When to try a coordinator call again, and how long to wait first.

Only a call that is safe to repeat is retried after it may have reached the coordinator: reads,
heartbeats and idempotent writes (a submit is idempotent by its key, PUTs set a value, operator
actions converge). A call that is not (claim, PATCH, lease release, review) is retried only when
the connection was never made, so the request cannot have been sent.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import requests
import urllib3.exceptions

#: Statuses worth another try of a safe call: throttled or briefly unavailable.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with full jitter; a `Retry-After` from the coordinator wins."""

    #: Tries in all, the first included.
    attempts: int = 4
    #: The first retry waits up to this long; each further one up to twice as long as the last.
    base_seconds: float = 0.25
    cap_seconds: float = 8.0
    #: The longest `Retry-After` honoured; a longer one is cut to this.
    max_retry_after: float = 30.0

    def delay(self, retry: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number `retry` (1 for the first)."""
        rng = rng or random
        if retry_after is not None:
            # A little jitter on top, so clients told the same Retry-After do not return together.
            return min(retry_after, self.max_retry_after) + rng.uniform(0, self.base_seconds)
        return rng.uniform(0, min(self.cap_seconds, self.base_seconds * 2 ** (retry - 1)))


NO_RETRY = Backoff(attempts=1)


def never_sent(exc: BaseException) -> bool:
    """Whether a failed call certainly did not reach the coordinator: the connection itself
    could not be made (refused, unresolvable, connect timeout). A reset or a read timeout may
    come after the coordinator acted on the request, so those are not."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError)):
            return True
        if isinstance(current, (urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError)):
            return False
        if isinstance(current, urllib3.exceptions.MaxRetryError):
            pending.append(current.reason)
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
        pending.extend((current.__cause__, current.__context__))
    return False
