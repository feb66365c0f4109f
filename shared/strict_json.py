"""JSON as the fleet takes it from a client: stricter than `json.loads`, so that what a body
says is what the stores keep.

`loads(raw)` refuses, with `ValidationFailed` naming where:

- anything that is not JSON, and `NaN`/`Infinity`, which JSON does not have;
- a key twice in one object (`{"productId": "a", "productId": "b"}`): which one was meant?
- a number a store cannot keep: one too large for a double (`1e999` would parse as infinity
  and be stored as null) and an integer past ±(2**53 - 1), which Cosmos DB, whose numbers are
  doubles, would silently round;
- nesting deeper than `MAX_DEPTH` (checkpoints and insights are free-form JSON).
"""
from __future__ import annotations

import json
import math
from typing import Any

from fleet import errors

#: Deepest nesting accepted (the top-level value is level 1).
MAX_DEPTH = 32
#: Largest integer accepted anywhere: the largest every store keeps exactly.
MAX_SAFE_INTEGER = 2**53 - 1


def loads(raw: bytes | str, subject: str = "body") -> Any:
    """The JSON value `raw` holds (UTF-8), or `ValidationFailed` saying what is refused, of
    the `subject` (a request's body; the CLI's a file)."""
    try:
        data = json.loads(raw, parse_constant=_reject_constant, object_pairs_hook=_unique_keys, parse_int=_integer)
    except _DuplicateKey as exc:
        raise errors.ValidationFailed(
            f"key {exc.key!r} appears twice in one object", [{"field": exc.key, "message": "duplicate key"}]
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.ValidationFailed(
            f"{subject} is not valid JSON: {exc}", [{"field": "", "message": "malformed JSON"}]
        ) from None
    except RecursionError:  # nested past what the parser takes
        raise _too_deep(subject) from None
    _check_values(data, subject)
    return data


def _check_values(data: Any, subject: str) -> None:
    """Walk `data` iteratively (hostile input must not recurse) for nesting and numbers."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:
        node, path = stack.pop()
        if len(path) >= MAX_DEPTH:
            raise _too_deep(subject)
        if isinstance(node, dict):
            for key in node:
                _text(key, ".".join((*path, "(key)")), subject)
            stack.extend((child, (*path, key)) for key, child in node.items())
        elif isinstance(node, str):
            _text(node, ".".join(path), subject)
        elif isinstance(node, list):
            stack.extend((child, (*path, str(i))) for i, child in enumerate(node))
        elif _out_of_range(node):
            field = ".".join(path)
            raise errors.ValidationFailed(
                f"{field or 'the ' + subject} is a number out of range", [{"field": field, "message": "number out of range"}]
            )


def _text(value: str, field: str, subject: str) -> None:
    """`ValidationFailed` if `value` holds a lone surrogate (a `\\ud800` escape without its
    pair): no character, and no store or page can hold it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        escape = f"\\u{ord(value[exc.start]):04x}"
        raise errors.ValidationFailed(
            f"{field or 'the ' + subject} holds {escape}, half of a UTF-16 pair without its other half: not text",
            [{"field": field, "message": "lone surrogate"}],
        ) from None


def _out_of_range(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SAFE_INTEGER


def _too_deep(subject: str) -> errors.ValidationFailed:
    return errors.ValidationFailed(
        f"{subject} is nested deeper than {MAX_DEPTH} levels", [{"field": "", "message": "nested too deeply"}]
    )


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


#: Digits past which an integer is out of range whatever its value (`MAX_SAFE_INTEGER` has 16).
_MAX_DIGITS = 20


def _integer(text: str) -> int | float:
    """An integer as written; one of more digits than any accepted integer has is an infinity
    of its sign, which `_check_values` refuses as out of range, naming its field (Python's own
    conversion refuses one of over 4,300 digits with an error of its own, naming no field)."""
    if len(text.lstrip("-")) > _MAX_DIGITS:
        return -math.inf if text.startswith("-") else math.inf
    return int(text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
