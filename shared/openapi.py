"""The OpenAPI 3.1 document, made from the app itself: one operation per HTTP function, its route,
methods and auth level read from the binding, its summary, models, parameters and errors from
what the trigger declares with `http.endpoint`, and every schema from the pydantic models.
Adding an endpoint to `function_app.py` adds it here."""
from __future__ import annotations

import functools
import http as http_status
import re
from typing import Any

import azure.functions as func
import pydantic
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.json_schema import models_json_schema

from fleet import errors
from fleet.stages import ClaimReason
from shared import http
from shared.devhost import hosting

VERSION = "0.1.0"

REF = "#/components/schemas/{model}"
#: A route parameter of a Functions route template: `{id}`, `{id:int}`, `{*rest}`.
ROUTE_PARAMETER = re.compile(r"\{\*?([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")
#: What the host answers, before any trigger runs, to a call without a valid function key.
UNAUTHORIZED = "unauthorized"
#: What `http.endpoint` answers when a trigger fails unexpectedly.
INTERNAL_ERROR = "internal_error"
#: Either way of presenting a function key opens a keyed operation.
KEYED = [{"functionKey": []}, {"functionKeyQuery": []}]
#: An operation that needs a permission takes a bearer token, beside a function key where the
#: host is configured with keys.
BEARER = [{"bearerToken": []}, {"bearerToken": [], "functionKey": []}, {"bearerToken": [], "functionKeyQuery": []}]


class Info(BaseModel):
    title: str
    version: str


class Document(BaseModel):
    """`GET /fleet/openapi.json`: this API described as OpenAPI 3.1."""

    model_config = ConfigDict(frozen=True)

    openapi: str
    info: Info
    paths: dict[str, dict[str, Any]]
    components: dict[str, Any]


class FieldError(BaseModel):
    #: The field at fault, dotted (`children.0.idempotencyKey`); empty for the body itself.
    field: str
    message: str
    type: str | None = None


class Problem(BaseModel):
    """An RFC 9457 problem document: how every refusal is answered, with a stable `code`.
    Fields beyond the first five are sent only with the codes named beside them."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    code: str
    detail: str
    #: `validation_error`: the fields at fault.
    errors: list[FieldError] = Field(default_factory=list)
    #: `store_busy`: seconds to wait before retrying (also the `Retry-After` header).
    retry_after: float | None = None
    #: `not_claimable`: why the factory may not claim the job.
    reason: ClaimReason | None = None
    #: `not_claimable` (reason `capabilities`): the capabilities the factory lacks.
    missing: list[str] = Field(default_factory=list)
    #: A claim's failure (`not_claimable` reason `lost_race`, `store_busy`, ...) after it had
    #: evicted jobs of the factory for a critical job: their leases are gone, stop them.
    preempted: list[str] = Field(default_factory=list)
    #: `idempotency_conflict`: the job already submitted under the key.
    job_id: str | None = None
    #: `forbidden`, for a principal whose role lacks it: the permission the operation needs.
    permission: str | None = None


@functools.cache
def document(app: func.FunctionApp) -> Document:
    """The document of every HTTP function of `app` (made once per app) but the dashboard's
    pages, which answer HTML to browsers and are not part of the API."""
    functions = [f for f in hosting.functions_of(app) if f.is_http_function() and not _is_page(f)]
    declared = [(f, _declaration(f)) for f in functions]
    refs, defs = models_json_schema(_models(endpoint for _, endpoint in declared), by_alias=True, ref_template=REF)
    schemas = dict(defs.get("$defs", {}))
    paths: dict[str, dict[str, Any]] = {}
    for function, endpoint in declared:
        trigger = function.get_trigger()
        path = "/" + ROUTE_PARAMETER.sub(r"{\1}", trigger.route)
        for method in trigger.methods:
            operation = _operation(function, endpoint, refs, schemas)
            paths.setdefault(path, {})[str(getattr(method, "value", method)).lower()] = operation
    for query in {e.query for _, e in declared if e.query is not None}:
        # A query model is read into parameters, not sent as a payload.
        schemas.pop(_name(refs[(query, "validation")]), None)
    return Document(
        openapi="3.1.0",
        info=Info(title="Fleet control plane", version=VERSION),
        paths=paths,
        components={
            "schemas": schemas,
            "securitySchemes": {
                "functionKey": {"type": "apiKey", "in": "header", "name": "x-functions-key"},
                "functionKeyQuery": {"type": "apiKey", "in": "query", "name": "code"},
                "bearerToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token (`fleet tokens create`, or POST /fleet/tokens): "
                    "`Authorization: Bearer fleet_...`",
                },
            },
        },
    )


def _is_page(function: Any) -> bool:
    return getattr(function.get_user_function(), "page", None) is not None


def _declaration(function: Any) -> http.Endpoint:
    endpoint = http.declared(function.get_user_function())
    if endpoint is None:
        raise LookupError(f"HTTP function {function.get_function_name()} is not declared with http.endpoint")
    return endpoint


def _models(endpoints) -> list[tuple[type[BaseModel], str]]:
    """Every model the operations send (serialisation schemas) or accept (validation schemas)."""
    keyed = {(Problem, "serialization")}
    for endpoint in endpoints:
        keyed.add((endpoint.answer, "serialization"))
        keyed.update((model, "validation") for model in (endpoint.body, endpoint.query) if model is not None)
    return sorted(keyed, key=lambda pair: (pair[0].__name__, pair[1]))


def _operation(function: Any, endpoint: http.Endpoint, refs, schemas: dict[str, Any]) -> dict[str, Any]:
    keyed = function.get_trigger().auth_level != func.AuthLevel.ANONYMOUS
    answer = {"schema": refs[(endpoint.answer, "serialization")]}
    responses: dict[str, Any] = {
        str(status): {"description": http_status.HTTPStatus(status).phrase, "content": {"application/json": answer}}
        for status in endpoint.statuses
    }
    for status, codes in sorted(_problems(endpoint, keyed).items()):
        responses.setdefault(str(status), {"description": http_status.HTTPStatus(status).phrase, "content": {}})
        responses[str(status)]["description"] += ": " + ", ".join(codes)
        responses[str(status)]["content"][http.PROBLEM] = {
            "schema": {"allOf": [{"$ref": REF.format(model="Problem")}], "properties": {"code": {"enum": codes}}}
        }
    responses = {status: responses[status] for status in sorted(responses)}
    responses["default"] = {
        "description": "Any other problem the host answers (an unknown route, a method it does not take)",
        "content": {http.PROBLEM: {"schema": {"$ref": REF.format(model="Problem")}}},
    }
    operation: dict[str, Any] = {
        "operationId": function.get_function_name(),
        "summary": endpoint.summary,
        **({"description": f"Needs the `{endpoint.needs.value}` permission."} if endpoint.needs else {}),
        "security": BEARER if endpoint.needs is not None else KEYED if keyed else [],
        "responses": responses,
    }
    parameters = _path_parameters(function.get_trigger().route, endpoint, schemas)
    if endpoint.query is not None:
        parameters += _query_parameters(schemas[_name(refs[(endpoint.query, "validation")])])
    if parameters:
        operation["parameters"] = parameters
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": endpoint.body_required,
            "content": {"application/json": {"schema": refs[(endpoint.body, "validation")]}},
        }
    return operation


def _problems(endpoint: http.Endpoint, keyed: bool) -> dict[int, list[str]]:
    """The problem codes an operation may answer, by status."""
    kinds = list(endpoint.raises)
    if endpoint.body is not None or endpoint.query is not None or endpoint.path:
        kinds.append(errors.ValidationFailed)
    if endpoint.body is not None:
        kinds.append(http.PayloadTooLarge)
    if endpoint.store:
        kinds.append(errors.StoreBusy)
    if endpoint.needs is not None:
        kinds.append(errors.Forbidden)
    codes: dict[int, set[str]] = {500: {INTERNAL_ERROR}}
    if keyed or endpoint.needs is not None:
        codes[401] = {UNAUTHORIZED}
    for kind in kinds:
        status = next((s for k, s in http.STATUS.items() if issubclass(kind, k)), 500)
        codes.setdefault(status, set()).add(kind.code)
    return {status: sorted(names) for status, names in codes.items()}


def _path_parameters(route: str, endpoint: http.Endpoint, schemas: dict[str, Any]) -> list[dict[str, Any]]:
    parameters = []
    for name in ROUTE_PARAMETER.findall(route):
        schema = pydantic.TypeAdapter(endpoint.path.get(name, str)).json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    return parameters


def _query_parameters(model_schema: dict[str, Any]) -> list[dict[str, Any]]:
    required = set(model_schema.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": _present(schema)}
        for name, schema in model_schema["properties"].items()
    ]


def _present(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: a parameter is absent or has a value, so an optional field's
    null branch (and its null default) does not apply."""
    branches = [branch for branch in schema.get("anyOf", []) if branch.get("type") != "null"]
    if len(branches) != 1:
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf" and not (k == "default" and v is None)}
    return {**rest, **branches[0]}


def _name(ref: dict[str, str]) -> str:
    return ref["$ref"].rsplit("/", 1)[-1]
