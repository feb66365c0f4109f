"""Route templates and the route table, read the way the Azure Functions host (ASP.NET Core
routing) reads them.

Template syntax, segment by segment (``/``-separated):

- a literal (``fleet``), matched case-insensitively;
- ``{name}``: one non-empty segment; ``{name:int}`` adds constraints (``int``, ``long``,
  ``bool``, ``guid``, ``alpha``, ``double``, ``float``, ``decimal``, ``datetime``,
  ``min(n)``, ``max(n)``, ``range(a,b)``, ``minlength(n)``, ``maxlength(n)``,
  ``length(n)`` / ``length(a,b)``, ``regex(expr)``, ``required``), chained with ``:``;
- ``{name?}`` optional and ``{name=value}`` defaulted: only in trailing segments;
- ``{*name}`` (or ``{**name}``): catch-all, last segment only, zero or more segments;
- literals and parameters mixed in one segment (``{file}.{ext}``); ``{{`` and ``}}`` are
  literal braces.

Parameter values are percent-decoded after the path is split on ``/`` (so ``%2F`` stays
inside a segment) and keep their case; ``MyProduct:abc`` is one segment. A constraint judges
the whole value: unlike .NET (and Python), ``$`` in a ``regex(...)`` means the end of the value,
so ``regex(^[a-z]+$)`` refuses ``abc%0A``. A trailing slash is
ignored. When several templates match a path the most specific wins, segment by segment
(literal, then mixed, then constrained parameter, then parameter, then catch-all), then
registration order; only then is the method checked, so ``resolve`` answers 405 only when no
matching template takes the method.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import urllib.parse
from collections.abc import Callable, Iterable

Check = Callable[[str], bool]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INTEGER = re.compile(r"[-+]?[0-9]+")
_NUMBER = re.compile(r"[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?")
_DECIMAL = re.compile(r"[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)")
_GUID = re.compile(r"[0-9a-f]{32}|([({]?)[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}[)}]?", re.I)
_ALPHA = re.compile(r"[A-Za-z]+")
_CONSTRAINT = re.compile(r"([a-z]+)(?:\((.*)\))?", re.S)

# Precedence digit per template segment (lower is more specific), as ASP.NET ranks them.
_LITERAL, _MIXED, _CONSTRAINED, _PLAIN, _CATCH_ALL_CONSTRAINED, _CATCH_ALL = 1, 2, 3, 4, 5, 6


class RouteNotFound(LookupError):
    """No route template matches the path."""


class MethodNotAllowed(LookupError):
    """A route template matches the path, but none of its routes takes the method."""

    def __init__(self, allowed: Iterable[str]) -> None:
        self.allowed = tuple(sorted(set(allowed)))
        super().__init__(f"allowed: {', '.join(self.allowed)}")


@dataclasses.dataclass(frozen=True)
class Parameter:
    """A route parameter: its name as written, the checks its value must pass, and whether it
    may be absent (optional, defaulted or catch-all)."""

    name: str
    checks: tuple[Check, ...] = ()
    optional: bool = False
    default: str | None = None
    catch_all: bool = False

    def accepts(self, value: str) -> bool:
        return all(check(value) for check in self.checks)


@dataclasses.dataclass(frozen=True)
class _Segment:
    pattern: re.Pattern[str] | None  # None for a catch-all
    params: tuple[Parameter, ...]
    rank: int
    lone: Parameter | None = None  # the parameter, when it is the whole segment

    @property
    def may_be_absent(self) -> bool:
        p = self.lone
        return p is not None and (p.optional or p.default is not None or p.catch_all)


class RouteTemplate:
    """A parsed route template. Raises ``ValueError`` on a template the host would refuse."""

    def __init__(self, text: str) -> None:
        self.text = text
        stripped = text.strip().removeprefix("~").strip("/")
        self._segments = tuple(_parse_segment(part, text) for part in stripped.split("/")) \
            if stripped else ()
        names = [p.name.lower() for s in self._segments for p in s.params]
        if len(names) != len(set(names)):
            raise ValueError(f"route {text!r}: a parameter name is used twice")
        for i, segment in enumerate(self._segments):
            if segment.pattern is None and i != len(self._segments) - 1:
                raise ValueError(f"route {text!r}: a catch-all parameter must be the last segment")
            if segment.may_be_absent and not all(s.may_be_absent for s in self._segments[i:]):
                raise ValueError(f"route {text!r}: only trailing parameters may be optional")
        self.precedence = tuple(segment.rank for segment in self._segments)

    def __repr__(self) -> str:
        return f"RouteTemplate({self.text!r})"

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """The parameter values if the decoded path ``segments`` match, else None. Absent
        optional parameters are left out; absent defaulted ones get their default."""
        values: dict[str, str] = {}
        for i, segment in enumerate(self._segments):
            if segment.pattern is None:
                return _bind_catch_all(segment.lone, segments[i:], values)
            if i >= len(segments):
                if not segment.may_be_absent:
                    return None
                if segment.lone.default is not None:
                    values[segment.lone.name] = segment.lone.default
                continue
            found = segment.pattern.fullmatch(segments[i])
            if found is None:
                return None
            for param, value in zip(segment.params, found.groups()):
                if not param.accepts(value):
                    return None
                values[param.name] = value
        return values if len(segments) <= len(self._segments) else None


@dataclasses.dataclass(frozen=True)
class Route:
    """One routable function: its template, the methods it takes (None: any), and whatever
    the caller wants back when it matches."""

    template: RouteTemplate
    methods: frozenset[str] | None
    target: object


class RouteTable:
    """Routes in match order (most specific first, then registration order)."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = tuple(sorted(routes, key=lambda route: route.template.precedence))

    def resolve(self, method: str, raw_path: str) -> tuple[Route, dict[str, str]]:
        """The route for ``method`` on ``raw_path`` (percent-encoded, as sent) and its
        parameter values. Raises ``RouteNotFound`` or ``MethodNotAllowed``."""
        segments = split_path(raw_path)
        allowed: list[str] = []
        for route in self.routes:
            values = route.template.match(segments)
            if values is None:
                continue
            if route.methods is None or method.upper() in route.methods:
                return route, values
            allowed.extend(route.methods)
        if allowed:
            raise MethodNotAllowed(allowed)
        raise RouteNotFound(raw_path)


def split_path(raw_path: str) -> list[str]:
    """Split a percent-encoded path into decoded segments, ignoring one trailing slash."""
    path = raw_path.removeprefix("/")
    if not path:
        return []
    segments = path.split("/")
    if segments[-1] == "":
        segments.pop()
    return [urllib.parse.unquote(segment) for segment in segments]


def _bind_catch_all(param: Parameter, rest: list[str], values: dict[str, str]) -> dict | None:
    if rest:
        value = "/".join(rest)
        if not param.accepts(value):
            return None
        values[param.name] = value
    elif param.default is not None:
        values[param.name] = param.default
    return values


def _parse_segment(text: str, template: str) -> _Segment:
    if not text:
        raise ValueError(f"route {template!r}: empty segment")
    parts: list[str | Parameter] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith(("{{", "}}"), i):
            literal.append(text[i])
            i += 2
        elif text[i] == "{":
            end = _closing_brace(text, i, template)
            if literal:
                parts.append("".join(literal))
                literal = []
            elif parts:
                raise ValueError(f"route {template!r}: two parameters need a literal between them")
            parts.append(_parse_parameter(text[i + 1:end], template))
            i = end + 1
        elif text[i] == "}":
            raise ValueError(f"route {template!r}: unmatched '}}'")
        else:
            literal.append(text[i])
            i += 1
    if literal:
        parts.append("".join(literal))
    params = tuple(part for part in parts if isinstance(part, Parameter))
    if any(p.catch_all for p in params):
        if len(parts) != 1:
            raise ValueError(f"route {template!r}: a catch-all must be a whole segment")
        rank = _CATCH_ALL_CONSTRAINED if params[0].checks else _CATCH_ALL
        return _Segment(None, params, rank, params[0])
    if len(parts) > 1 and any(p.optional or p.default is not None for p in params):
        raise ValueError(f"route {template!r}: an optional parameter must be a whole segment")
    pattern = "".join("(.+)" if isinstance(part, Parameter) else re.escape(part) for part in parts)
    if not params:
        rank = _LITERAL
    elif len(parts) > 1:
        rank = _MIXED
    else:
        rank = _CONSTRAINED if params[0].checks else _PLAIN
    lone = params[0] if len(parts) == 1 and params else None
    return _Segment(re.compile(pattern, re.IGNORECASE | re.DOTALL), params, rank, lone)


def _closing_brace(text: str, start: int, template: str) -> int:
    depth = 0
    for i in range(start + 1, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth = max(0, depth - 1)
        elif text[i] == "}" and depth == 0:
            return i
    raise ValueError(f"route {template!r}: unmatched '{{'")


def _parse_parameter(body: str, template: str) -> Parameter:
    catch_all = body.startswith("*")
    body = body.lstrip("*")
    body, default = _split_outside_parens(body, "=", template, limit=1)
    optional = body.endswith("?")
    body = body.removesuffix("?")
    name, *constraints = _split_outside_parens(body, ":", template)
    if not _NAME.fullmatch(name):
        raise ValueError(f"route {template!r}: bad parameter name {name!r}")
    if optional and default is not None:
        raise ValueError(f"route {template!r}: {name} cannot be both optional and defaulted")
    checks = tuple(_constraint(c, template) for c in constraints)
    return Parameter(name, checks, optional, default, catch_all)


def _split_outside_parens(text: str, sep: str, template: str, limit: int = -1):
    """Split on ``sep`` outside parentheses. With ``limit=1`` return (head, tail or None)."""
    pieces, depth, current = [], 0, []
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == sep and depth == 0 and (limit < 0 or len(pieces) < limit):
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    pieces.append("".join(current))
    if limit == 1:
        return pieces[0], (pieces[1] if len(pieces) > 1 else None)
    return pieces


def _constraint(text: str, template: str) -> Check:
    found = _CONSTRAINT.fullmatch(text.strip())
    factory = _CONSTRAINTS.get(found.group(1).lower()) if found else None
    if factory is None:
        raise ValueError(f"route {template!r}: unknown constraint {text!r}")
    raw_args = found.group(2)
    if found.group(1).lower() == "regex":
        args = [raw_args or ""]
    else:
        args = [arg.strip() for arg in raw_args.split(",")] if raw_args else []
    try:
        return factory(*args)
    except (TypeError, ValueError, re.error) as error:
        raise ValueError(f"route {template!r}: bad constraint {text!r}: {error}") from None


def _integer(bits: int) -> Check:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return lambda v: bool(_INTEGER.fullmatch(v)) and low <= int(v) <= high


def _bounded(low: int | None, high: int | None) -> Check:
    return lambda v: bool(_INTEGER.fullmatch(v)) and (low is None or int(v) >= low) \
        and (high is None or int(v) <= high)


def _length(low: int, high: int | None) -> Check:
    return lambda v: len(v) >= low and (high is None or len(v) <= high)


def _is_datetime(value: str) -> bool:
    try:
        dt.datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


_CONSTRAINTS: dict[str, Callable[..., Check]] = {
    "int": lambda: _integer(32),
    "long": lambda: _integer(64),
    "bool": lambda: lambda v: v.lower() in ("true", "false"),
    "guid": lambda: lambda v: bool(_GUID.fullmatch(v)),
    "alpha": lambda: lambda v: bool(_ALPHA.fullmatch(v)),
    "double": lambda: lambda v: bool(_NUMBER.fullmatch(v)),
    "float": lambda: lambda v: bool(_NUMBER.fullmatch(v)),
    "decimal": lambda: lambda v: bool(_DECIMAL.fullmatch(v)),
    "datetime": lambda: _is_datetime,
    "required": lambda: bool,
    "min": lambda n: _bounded(int(n), None),
    "max": lambda n: _bounded(None, int(n)),
    "range": lambda a, b: _bounded(int(a), int(b)),
    "minlength": lambda n: _length(int(n), None),
    "maxlength": lambda n: _length(0, int(n)),
    "length": lambda a, b=None: _length(int(a), int(a) if b is None else int(b)),
    # ASP.NET's regex constraint is an unanchored, case-insensitive IsMatch; its `$` is ours.
    "regex": lambda expr: (lambda pattern: lambda v: bool(pattern.search(v)))(
        re.compile(_end_of_value(expr), re.IGNORECASE)),
}


def _end_of_value(expr: str) -> str:
    """``expr`` with each ``$`` anchor (not escaped, not in a character class) spelt ``\\Z``:
    ``$`` also matches before a final newline, which would let ``abc\\n`` pass ``^[a-z]+$``."""
    out, i, in_class = [], 0, False
    while i < len(expr):
        char = expr[i]
        if char == "\\":
            out.append(expr[i:i + 2])
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            # A "]" first in a class (after any "^") is a literal, not its end.
            lead = 2 if expr.startswith("^]", i + 1) else 1 if expr.startswith("]", i + 1) else 0
            out.append(expr[i:i + 1 + lead])
            i += 1 + lead
            continue
        elif char == "$":
            char = "\\Z"
        out.append(char)
        i += 1
    return "".join(out)
