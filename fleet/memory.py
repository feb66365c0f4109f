"""What a process remembers between requests of what it read from its store (a product's
weights, a token's record): bounded, thread-safe, and of one store at a time, so that a
process (or a test) that opens another store starts with nothing remembered."""
from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

V = TypeVar("V")


class Memory(Generic[V]):
    """Values by key, of the store they were read from; at most `limit`: past it, all are
    forgotten. `forget` is counted, so that what a read begun before it found is not
    remembered after it (`recall`'s count, given back to `remember` as `since`)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._of: weakref.ref | None = None
        self._entries: dict[str, V] = {}
        self._forgets = 0

    def recall(self, store: Any, key: str) -> tuple[V | None, int]:
        """What is remembered for `key` of `store` (None: nothing), and the count of forgets
        so far, under which what a read made now finds may be remembered."""
        with self._lock:
            return (self._entries.get(key) if self._holds(store) else None), self._forgets

    def remember(
        self, store: Any, key: str, value: V, since: int | None = None, over: Callable[[V], bool] | None = None
    ) -> None:
        """Remember `value` for `key` of `store`, unless something was forgotten after the
        count `since`, or `over(what is remembered now)` is false (`value` is not newer)."""
        with self._lock:
            if since is not None and since != self._forgets:
                return
            if not self._holds(store) or len(self._entries) >= self.limit:
                self._of, self._entries = weakref.ref(store), {}
            known = self._entries.get(key)
            if known is None or over is None or over(known):
                self._entries[key] = value

    def forget(self, store: Any, key: str) -> None:
        """Forget `key` of `store` (it changed), and count it."""
        with self._lock:
            self._forgets += 1
            if self._holds(store):
                self._entries.pop(key, None)

    def _holds(self, store: Any) -> bool:
        return self._of is not None and self._of() is store
