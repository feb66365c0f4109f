"""The key columns' values: what a write stores in each column of `sqlite_query.KEYED` beside
the body, so that a column always holds what `json_extract` reads of its field in the body.

A whole write (create, replace, upsert) sets every key column from the document (`of_doc`); a
patch applied in place sets those of the fields its operations change (`of_ops`), and only
those, so that SQLite re-keys only the indexes on them; an increment, whose new values only the
stored body knows, has SQLite read them out of the body it writes. The conformance tests check,
after every kind of write, that each column equals `json_extract` of its field.
"""
from __future__ import annotations

import json
import math
from typing import Any

from fleet.store import Op
from shared.stores.sqlite_query import KEYED, key_column, path


def columns(container: str) -> tuple[str, ...]:
    """The key columns of `container`'s documents, in `KEYED` order (none for most)."""
    return _COLUMNS.get(container, ())


def of_doc(container: str, doc: dict[str, Any]) -> tuple[Any, ...]:
    """The values of `container`'s key columns (`columns` order) for the document `doc`."""
    return tuple(value(_dig(doc.get(head), rest)) for _, head, rest in _FIELDS.get(container, ()))


def read_out(fields: list[str] | tuple[str, ...], body: str = "body") -> str:
    """`k = json_extract(body, path)` for the key column of each of `fields`, joined for an
    UPDATE's SET: the columns filled from what the SQL expression `body` holds."""
    return ", ".join(f"{key_column(f)} = json_extract({body}, {path(f)})" for f in fields)


def of_ops(container: str, ops: list[Op]) -> dict[str, Any] | None:
    """The key columns `ops` change, applied in turn to a document that takes them all (the
    in-place patch's guards see to that), and their new values; None when an operation
    changes a keyed field into what only the stored body tells (an append to a keyed array)."""
    changed: dict[str, Any] = {}
    heads = _HEADS.get(container, {})
    for op in ops:
        for name, rest in heads.get(op.field, ()):
            if op.kind == "set":
                changed[name] = value(_dig(op.value, rest))
            elif op.kind == "remove" or rest:
                # Gone, or (appended to: an array before and after) no object to read `rest` of.
                changed[name] = None
            else:
                return None
    return changed


def value(v: Any) -> Any:
    """`v` as `json_extract` reads it: SQL has no booleans, and an object or array is its JSON.
    `ValueError` for text no column can hold as `json_extract` reads it (a NUL, where it stops
    reading; an unpaired surrogate, which UTF-8 cannot encode)."""
    if isinstance(v, str):
        if not v.isascii() and not _encodable(v) or "\x00" in v:
            raise ValueError(f"an indexed field cannot hold {v!r}: a NUL or an unpaired surrogate")
        return v
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int) and not -(2**63) <= v < 2**63:
        # SQLite reads an integer past 64 bits as a real, one past a double's range as infinity.
        try:
            return float(v)
        except OverflowError:
            return math.inf if v > 0 else -math.inf
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return v


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _dig(doc: Any, rest: tuple[str, ...]) -> Any:
    """What `json_extract` reads at the path `rest` (names, none: `doc` itself) inside `doc`."""
    for part in rest:
        doc = doc.get(part) if isinstance(doc, dict) else None
    return doc


#: Per container: each keyed field's column, top-level name and the rest of its path.
_FIELDS = {
    container: tuple((key_column(field), field.split(".")[0], tuple(field.split(".")[1:])) for field in fields)
    for container, fields in KEYED.items()
}
_COLUMNS = {container: tuple(name for name, _, _ in fields) for container, fields in _FIELDS.items()}
#: Per container: top-level name → the key columns under it, with the rest of their paths.
_HEADS: dict[str, dict[str, list[tuple[str, tuple[str, ...]]]]] = {}
for _container, _fields in _FIELDS.items():
    for _name, _head, _rest in _fields:
        _HEADS.setdefault(_container, {}).setdefault(_head, []).append((_name, _rest))
