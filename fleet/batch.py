"""Working through many documents so that one bad one never stops the rest."""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

from fleet import errors

log = logging.getLogger("fleet.batch")


def each(items: Iterable[Any], act: Callable[[Any], None]) -> int:
    """`act` on every item; a vanished document is passed over, any other failure is logged
    and counted, and the rest still get their turn. Returns how many failed."""
    failed = 0
    for item in list(items):
        try:
            act(item)
        except errors.NotFound:
            continue
        except Exception:  # noqa: BLE001 - one bad document must not stop the batch
            log.exception("%s failed", item.get("id") if isinstance(item, dict) else getattr(item, "id", item))
            failed += 1
    return failed
