"""Plain-text tables and values for the `fleet` CLI's human-readable output."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from enum import Enum
from typing import Any

#: Longest cell shown; longer text is cut with an ellipsis.
MAX_CELL = 60


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns padded to their widest cell, a header row, no borders."""
    cells = [[cell(value) for value in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    lines = [headers, *cells]
    return "\n".join("  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in lines)


def fields(pairs: Iterable[tuple[str, Any]]) -> str:
    """`name: value` lines, names aligned."""
    pairs = [(name, cell(value, limit=None)) for name, value in pairs]
    width = max((len(name) for name, _ in pairs), default=0)
    return "\n".join(f"{name + ':':<{width + 1}} {value}" for name, value in pairs)


def cell(value: Any, limit: int | None = MAX_CELL) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, datetime):
        text = when(value)
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, tuple)):
        text = ",".join(cell(v, None) for v in value) or "-"
    elif isinstance(value, Enum):
        text = str(value.value)
    else:
        text = str(value)
    text = " ".join(text.split()) if "\n" in text else text
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def when(at: datetime | None, now: datetime | None = None) -> str:
    """`2026-01-05 09:00:00Z (12s ago)`."""
    if at is None:
        return "-"
    now = now or datetime.now(timezone.utc)
    stamp = at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{stamp} ({ago((now - at).total_seconds())})"


def ago(seconds: float) -> str:
    """`12s ago`, `3h ago`; a time ahead (a lease's expiry, a token's): `in 4m`."""
    span = _span(abs(seconds))
    return f"in {span}" if seconds < 0 else f"{span} ago"


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def usd(value: float | None) -> str:
    return "-" if value is None else f"${value:,.2f}"
