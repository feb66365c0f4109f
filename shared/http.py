"""HTTP glue for the triggers: parse a body into a request model, answer a model as JSON, and
map every domain error to an RFC 9457 problem document in one table.

A trigger reads like a line of the API table, and declares once what the OpenAPI document
(`shared/openapi.py`) says of it: its answer, body, query, path parameters and errors.

    @app.route(route="fleet/jobs/{id}", methods=["GET"])
    @http.endpoint(answer=jobs.Job, raises=(errors.NotFound,))
    def get_job(req):
        '''A job with its runs and events'''
        return http.ok(listing.get(ctx(), req.route_params["id"]))
"""
from __future__ import annotations

import functools
import json
import logging
import math
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Mapping, TypeVar

import azure.functions as func
import pydantic

from fleet import errors
from shared.stores import charge

log = logging.getLogger("fleet.http")

#: Largest request body accepted (a job body is at most 64 KiB of Markdown plus its fields).
MAX_BODY = 256 * 1024
#: Deepest nesting accepted in a body (checkpoints and insights are free-form JSON).
MAX_DEPTH = 32
PROBLEM = "application/problem+json"

#: Domain error → HTTP status. Anything not here is a 500.
STATUS: dict[type[errors.FleetError], int] = {
    errors.ValidationFailed: 400,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.FeatureDisabled: 404,
    errors.LeaseLost: 409,
    errors.IllegalTransition: 409,
    errors.IdempotencyConflict: 409,
    errors.NotClaimable: 409,
    errors.Conflict: 409,
    errors.TooLarge: 413,
    errors.PreconditionFailed: 409,
    errors.StoreBusy: 503,
    errors.TooManyRetries: 503,
}

M = TypeVar("M", bound=pydantic.BaseModel)


class PayloadTooLarge(errors.FleetError):
    """The request body is larger than this endpoint accepts."""

    code = "payload_too_large"


STATUS[PayloadTooLarge] = 413


def body(req: func.HttpRequest, model: type[M], *, optional: bool = False) -> M:
    """The request's JSON body as `model`; `ValidationFailed` naming what is wrong otherwise.
    With `optional`, an empty body is read as `{}`."""
    raw = req.get_body() or b""
    if len(raw) > MAX_BODY:
        raise PayloadTooLarge(f"request body is {len(raw)} bytes; at most {MAX_BODY} are accepted")
    if not raw.strip():
        if optional:
            raw = b"{}"
        else:
            raise errors.ValidationFailed("a JSON object body is required", [{"field": "", "message": "missing body"}])
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.ValidationFailed(f"body is not valid JSON: {exc}", [{"field": "", "message": "malformed JSON"}])
    except RecursionError:
        data = None  # nested past what the parser takes: refused just below
    if data is None or _depth(data) > MAX_DEPTH:
        raise errors.ValidationFailed(
            f"body is nested deeper than {MAX_DEPTH} levels", [{"field": "", "message": "nested too deeply"}]
        )
    if not isinstance(data, dict):
        raise errors.ValidationFailed("body must be a JSON object", [{"field": "", "message": "not an object"}])
    try:
        # Strict: a JSON string is not a number, nor 4.0 an integer. (The parse above stays: it
        # refuses NaN and Infinity anywhere, which could not be written back out as JSON.)
        return model.model_validate_json(raw, strict=True)
    except pydantic.ValidationError as exc:
        raise validation_failed(exc) from None


def validation_failed(exc: pydantic.ValidationError) -> errors.ValidationFailed:
    fields = [
        {"field": ".".join(str(part) for part in e["loc"]), "message": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    names = ", ".join(sorted({f["field"] or "(body)" for f in fields}))
    return errors.ValidationFailed(f"invalid fields: {names}", fields)


E = TypeVar("E", bound=Enum)


def param(req: func.HttpRequest, name: str, kind: type[E] | type[int] | type[str], default: Any = None, *,
          minimum: int | None = None, maximum: int | None = None) -> Any:
    """A query-string parameter, converted and bounded, or `ValidationFailed` naming it."""
    raw = req.params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        allowed = f" (one of {', '.join(m.value for m in kind)})" if isinstance(kind, type) and issubclass(kind, Enum) else ""
        raise errors.ValidationFailed(
            f"query parameter {name}={raw!r} is not valid{allowed}", [{"field": name, "message": "invalid value"}]
        ) from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise errors.ValidationFailed(
            f"query parameter {name} must be between {minimum} and {maximum}", [{"field": name, "message": "out of range"}]
        )
    return value


def route_enum(req: func.HttpRequest, name: str, kind: type[E]) -> E:
    raw = req.route_params.get(name, "")
    try:
        return kind(raw)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise errors.ValidationFailed(
            f"unknown {name} {raw!r}; one of {allowed}", [{"field": name, "message": "unknown value"}]
        ) from None


NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}$")


def route_name(req: func.HttpRequest, name: str) -> str:
    """A route parameter that names a factory or similar: bounded, printable, no spaces."""
    raw = req.route_params.get(name, "")
    if not NAME.match(raw):
        raise errors.ValidationFailed(f"{name} {raw[:80]!r} is not a valid name", [{"field": name, "message": "invalid"}])
    return raw


def ok(answer: pydantic.BaseModel, status: int = 200) -> func.HttpResponse:
    """`answer` as compact JSON, fields by their (camelCase) aliases."""
    payload = answer.model_dump(mode="json", by_alias=True)
    return func.HttpResponse(
        json.dumps(payload, separators=(",", ":"), allow_nan=False), status_code=status, mimetype="application/json"
    )


def problem(status: int, code: str, detail: str, **extra: Any) -> func.HttpResponse:
    title = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 409: "Conflict", 413: "Payload Too Large",
             500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Error")
    doc = {"type": "about:blank", "title": title, "status": status, "code": code, "detail": detail, **extra}
    headers = {}
    if "retryAfter" in extra:
        headers["Retry-After"] = str(max(1, math.ceil(extra["retryAfter"])))
    return func.HttpResponse(json.dumps(doc), status_code=status, mimetype=PROBLEM, headers=headers)


def from_error(exc: errors.FleetError) -> func.HttpResponse:
    status = next((s for kind, s in STATUS.items() if isinstance(exc, kind)), 500)
    extra: dict[str, Any] = dict(exc.extra)
    if isinstance(exc, errors.ValidationFailed):
        extra["errors"] = exc.errors
    if isinstance(exc, errors.StoreBusy):
        extra["retryAfter"] = exc.retry_after
    elif isinstance(exc, errors.TooManyRetries):
        extra["retryAfter"] = 1
    return problem(status, exc.code, exc.detail, **extra)


#: A trigger: a function of the request.
Handler = Callable[[func.HttpRequest], func.HttpResponse]


@dataclass(frozen=True)
class Endpoint:
    """What a trigger declares about its operation, for the OpenAPI document. Route, methods and
    auth level are the binding's; the summary is the trigger's docstring."""

    summary: str
    #: The model of the answer, sent with each of `statuses`.
    answer: type[pydantic.BaseModel]
    statuses: tuple[int, ...] = (200,)
    #: The request body's model, and whether a body must be sent (an empty one reads as `{}`).
    body: type[pydantic.BaseModel] | None = None
    body_required: bool = True
    #: The query string's model (the trigger reads each parameter with `param`).
    query: type[pydantic.BaseModel] | None = None
    #: Types of the route's parameters, by name; those not named are strings.
    path: Mapping[str, Any] = field(default_factory=dict)
    #: The domain errors the use case may raise (the problems parsing and the store may answer
    #: are added: `validation_error`, `payload_too_large`, `store_busy`, `internal_error`).
    raises: tuple[type[errors.FleetError], ...] = ()
    #: False: the operation answers without the store (or reports its failure in the answer).
    store: bool = True


def endpoint(
    *,
    answer: type[pydantic.BaseModel],
    status: int | tuple[int, ...] = 200,
    body: type[pydantic.BaseModel] | None = None,
    body_required: bool = True,
    query: type[pydantic.BaseModel] | None = None,
    path: Mapping[str, Any] | None = None,
    raises: tuple[type[errors.FleetError], ...] = (),
    store: bool = True,
) -> Callable[[Handler], Handler]:
    """Declare a trigger's operation (see `Endpoint`; `status`: the one or several statuses its
    answer comes with) and serve it (see `_served`)."""

    def decorate(handler: Handler) -> Handler:
        served = _served(handler)
        served.endpoint = Endpoint(  # type: ignore[attr-defined]
            summary=(handler.__doc__ or handler.__name__).strip().splitlines()[0],
            answer=answer,
            statuses=(status,) if isinstance(status, int) else tuple(status),
            body=body,
            body_required=body_required,
            query=query,
            path=dict(path or {}),
            raises=tuple(raises),
            store=store,
        )
        return served

    return decorate


def declared(function: Callable[..., Any]) -> Endpoint | None:
    """The `Endpoint` a trigger declared with `endpoint`, None if it declared none."""
    return getattr(function, "endpoint", None)


def _served(handler: Callable[[func.HttpRequest], func.HttpResponse]) -> Callable[[func.HttpRequest], func.HttpResponse]:
    """Wrap a trigger: domain errors become problem documents, anything else a logged 500."""

    @functools.wraps(handler)
    def wrapped(req: func.HttpRequest) -> func.HttpResponse:
        with charge.metered() as meter:
            try:
                response = handler(req)
            except errors.FleetError as exc:
                response = from_error(exc)
            except Exception:
                log.exception("unhandled error in %s", handler.__name__)
                response = problem(500, "internal_error", "the coordinator failed to handle this request; see its logs")
        response.headers[charge.HEADER] = charge.header_value(meter.total)
        log.info(
            "%s %s -> %s (%s RU over %d store responses)",
            handler.__name__, req.method, response.status_code, charge.header_value(meter.total), meter.responses,
            extra={"useCase": handler.__name__, "status": response.status_code, "requestCharge": meter.total},
        )
        return response

    return wrapped


def _depth(value: Any) -> int:
    """How deeply a parsed JSON value nests (iteratively: hostile input must not recurse)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            break
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, level + 1) for child in children)
    return deepest


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
