"""HTTP glue for the triggers: parse a body into a request model, answer a model as JSON, and
map every domain error to an RFC 9457 problem document in one table.

A trigger reads like a line of the API table, and declares once what the OpenAPI document
(`shared/openapi.py`) says of it: the permission it needs, its answer, body, query, path
parameters and errors. Before the trigger runs, the request is authenticated (`shared.auth`,
in the process's `FLEET_AUTH` mode) and its principal must hold the permission; the trigger's
use cases then act as that principal (`config.context()` within `config.acting`).

    @app.route(route="fleet/jobs/{id}", methods=["GET"])
    @http.endpoint(needs=Permission.READ, answer=jobs.Job, raises=(errors.NotFound,))
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
from fleet.jobs import PRODUCT_ID, READER, is_product_id
from fleet.principals import Permission, is_factory_id
from shared import auth, config, strict_json
from shared.redaction import redact_strings
from shared.stores import charge

log = logging.getLogger("fleet.http")

#: Largest request body accepted (a job body is at most 64 KiB of Markdown plus its fields).
MAX_BODY = 256 * 1024
PROBLEM = "application/problem+json"
_JSON_SUFFIX = re.compile(r"application/[a-z0-9!#$&^_.+-]+\+json")
_INTEGER = re.compile(r"-?[0-9]{1,18}")
#: Methods whose requests carry no body in this API.
_BODILESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})

#: Domain error → HTTP status. Anything not here is a 500.
STATUS: dict[type[errors.FleetError], int] = {
    errors.ValidationFailed: 400,
    errors.Unauthorized: 401,
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
    errors.StoreUnavailable: 503,
    errors.TooManyRetries: 503,
}

M = TypeVar("M", bound=pydantic.BaseModel)


class PayloadTooLarge(errors.FleetError):
    """The request body is larger than this endpoint accepts."""

    code = "payload_too_large"


STATUS[PayloadTooLarge] = 413


class UnsupportedMediaType(errors.FleetError):
    """The request body is not JSON: send it with `Content-Type: application/json`."""

    code = "unsupported_media_type"


STATUS[UnsupportedMediaType] = 415


def body(req: func.HttpRequest, model: type[M], *, optional: bool = False) -> M:
    """The request's JSON body as `model`; `ValidationFailed` naming what is wrong otherwise.
    With `optional`, an empty body is read as `{}`.

    A body needs a JSON `Content-Type` (`application/json` or `application/*+json`, any
    parameters; the bytes are UTF-8 whatever a `charset` says, as RFC 8259 has it), else 415;
    an absent one is refused too. A body that is empty or only whitespace needs none. Beyond
    what `model` says, the JSON itself is strict anywhere in the body (`shared.strict_json`)."""
    raw = req.get_body() or b""
    if len(raw) > MAX_BODY:
        raise PayloadTooLarge(f"request body is {len(raw)} bytes; at most {MAX_BODY} are accepted")
    if not raw.strip():
        if not optional:
            raise errors.ValidationFailed("a JSON object body is required", [{"field": "", "message": "missing body"}])
        raw = b"{}"
    else:
        _require_json(req.headers.get("content-type"))
    data = strict_json.loads(raw)
    if not isinstance(data, dict):
        raise errors.ValidationFailed("body must be a JSON object", [{"field": "", "message": "not an object"}])
    try:
        # Strict: a JSON string is not a number, nor 4.0 an integer.
        return model.model_validate_json(raw, strict=True)
    except pydantic.ValidationError as exc:
        raise validation_failed(exc) from None


class NoBody(pydantic.BaseModel):
    """The body of an endpoint that takes none: empty, or an empty JSON object."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


def no_body(req: func.HttpRequest) -> None:
    """Refuse a body on an endpoint that documents none: 400 naming its fields (415 if it is
    not JSON). An empty body, or `{}`, passes."""
    body(req, NoBody, optional=True)


#: How pydantic names the member of a union a value was tried against, in an error's location
#: (`constrained-str`, `function-after[_small(), Artifact]`): no field of the request.
_UNION_MEMBER = re.compile(r"^[a-z]+(-[a-z]+)+(\[.*\])?$")


def validation_failed(exc: pydantic.ValidationError) -> errors.ValidationFailed:
    fields = [
        {"field": ".".join(str(part) for part in e["loc"] if not _UNION_MEMBER.match(str(part))), "message": e["msg"],
         "type": e["type"]}
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
        # int() would take " 5\n", "1_000" and non-ASCII digits: a query value is the digits alone.
        if kind is int and not _INTEGER.fullmatch(raw):
            raise ValueError(raw)
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



def route_name(req: func.HttpRequest, name: str) -> str:
    """A route parameter that names a factory or similar: bounded, printable, no spaces."""
    raw = req.route_params.get(name, "")
    if not is_factory_id(raw):
        raise errors.ValidationFailed(f"{name} {raw[:80]!r} is not a valid name", [{"field": name, "message": "invalid"}])
    return raw


def ok(answer: pydantic.BaseModel, status: int = 200) -> func.HttpResponse:
    """`answer` as compact JSON, fields by their (camelCase) aliases, as the request's principal
    may read it (a lease id only to those who may see it: `fleet.jobs.Lease`)."""
    payload = answer.model_dump(mode="json", by_alias=True, context={READER: config.principal()})
    return func.HttpResponse(
        json.dumps(payload, separators=(",", ":"), allow_nan=False), status_code=status, mimetype="application/json"
    )


def problem(status: int, code: str, detail: str, **extra: Any) -> func.HttpResponse:
    title = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict", 413: "Payload Too Large",
             415: "Unsupported Media Type", 500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Error")
    doc = {"type": "about:blank", "title": title, "status": status, "code": code, "detail": detail, **extra}
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="fleet"'
    if "retryAfter" in extra:
        headers["Retry-After"] = retry_after_header(extra["retryAfter"])
    # Redacted: a detail or a field name may quote what was sent, a token pasted in it too.
    return func.HttpResponse(json.dumps(redact_strings(doc)), status_code=status, mimetype=PROBLEM, headers=headers)


def status_of(exc: errors.FleetError) -> int:
    """The HTTP status a domain error is answered with (`STATUS`; 500 for any other)."""
    return next((s for kind, s in STATUS.items() if isinstance(exc, kind)), 500)


def retry_after(exc: errors.FleetError) -> float | None:
    """Seconds to wait before trying again, for an error that is worth a retry; None otherwise."""
    if isinstance(exc, (errors.StoreBusy, errors.StoreUnavailable)):
        return exc.retry_after
    return 1 if isinstance(exc, errors.TooManyRetries) else None


def retry_after_header(seconds: float) -> str:
    """`Retry-After`'s value: whole seconds, at least one."""
    return str(max(1, math.ceil(seconds)))


def product_id(value: str | None, name: str = "productId") -> str:
    """A product id given in a route or query (`name`), or `ValidationFailed` naming it."""
    if not value or not is_product_id(value):
        raise errors.ValidationFailed(f"{name} must match {PRODUCT_ID}", [{"field": name, "message": "invalid"}])
    return value


#: The members every problem has, which an error's own `extra` never overrides.
PROBLEM_MEMBERS = frozenset({"type", "title", "status", "code", "detail"})


def from_error(exc: errors.FleetError) -> func.HttpResponse:
    extra: dict[str, Any] = {k: v for k, v in exc.extra.items() if k not in PROBLEM_MEMBERS}
    if isinstance(exc, errors.ValidationFailed):
        extra["errors"] = exc.errors
    wait = retry_after(exc)
    if wait is not None:
        extra["retryAfter"] = wait
    return problem(status_of(exc), exc.code, exc.detail, **extra)


#: A trigger: a function of the request.
Handler = Callable[[func.HttpRequest], func.HttpResponse]


@dataclass(frozen=True)
class Endpoint:
    """What a trigger declares about its operation, for the OpenAPI document. Route, methods and
    auth level are the binding's; the summary is the trigger's docstring."""

    summary: str
    #: The permission a principal needs to call it; None: anyone, without a credential.
    needs: Permission | None
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
    needs: Permission | None,
    answer: type[pydantic.BaseModel],
    status: int | tuple[int, ...] = 200,
    body: type[pydantic.BaseModel] | None = None,
    body_required: bool = True,
    query: type[pydantic.BaseModel] | None = None,
    path: Mapping[str, Any] | None = None,
    raises: tuple[type[errors.FleetError], ...] = (),
    store: bool = True,
) -> Callable[[Handler], Handler]:
    """Declare a trigger's operation (see `Endpoint`; `needs` has no default: every trigger
    says who may call it; `status`: the one or several statuses its answer comes with) and
    serve it (see `_served`)."""

    def decorate(handler: Handler) -> Handler:
        served = _served(handler, needs)
        served.endpoint = Endpoint(  # type: ignore[attr-defined]
            summary=(handler.__doc__ or handler.__name__).strip().splitlines()[0],
            needs=needs,
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


def _served(handler: Handler, needs: Permission | None) -> Handler:
    """Wrap a trigger: authenticate the request and check it `needs` its permission (401, 403),
    then run the handler as the request's principal; domain errors become problem documents,
    anything else a logged 500. A GET takes no body: one that is not empty (or `{}`) is
    refused before the handler runs."""

    @functools.wraps(handler)
    def wrapped(req: func.HttpRequest) -> func.HttpResponse:
        with charge.metered() as meter:
            try:
                endpoint = declared(wrapped)
                if needs is None:
                    response = _handled(handler, req, endpoint)
                else:
                    principal = auth.principal_of(config.context(), config.auth_mode(), req.headers)
                    principal.require(needs)
                    with config.acting(principal):
                        response = _handled(handler, req, endpoint)
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


def _handled(handler: Handler, req: func.HttpRequest, endpoint: Endpoint | None) -> func.HttpResponse:
    if req.method.upper() in _BODILESS_METHODS:
        no_body(req)
    if endpoint is not None and endpoint.needs is not None:  # health and the OpenAPI document: any
        known_params(req, endpoint.query)
    return handler(req)


#: Query parameters the platform reads, not the operation: a function key (`?code=`, and the
#: key's name, `clientId`, that Azure's own callers send beside it), in any case.
PLATFORM_PARAMS = frozenset({"code", "clientid"})


def known_params(req: func.HttpRequest, query: type[pydantic.BaseModel] | None) -> None:
    """`ValidationFailed` naming a query parameter the operation does not take (a misspelt
    `productId` would otherwise widen a listing to every product)."""
    taken = {field.alias or name for name, field in (query.model_fields if query else {}).items()}
    unknown = sorted(name for name in req.params if name not in taken and name.lower() not in PLATFORM_PARAMS)
    if unknown:
        shown = ", ".join(repr(name[:50]) for name in unknown[:5])
        allowed = ", ".join(sorted(taken)) or "none"
        raise errors.ValidationFailed(
            f"unknown query parameter: {shown} (this operation takes {allowed})",
            [{"field": name[:50], "message": "unknown query parameter"} for name in unknown[:5]],
        )


def _require_json(content_type: str | None) -> None:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if not (media_type == "application/json" or _JSON_SUFFIX.fullmatch(media_type)):
        sent = f"Content-Type {media_type[:100]!r}" if media_type else "no Content-Type"
        raise UnsupportedMediaType(f"the body was sent with {sent}; send JSON as application/json")
