"""The OpenAPI 3.1 document, generated from the pydantic request and response models."""
from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from fleet import jobs, schemas
from fleet.stages import Stage

VERSION = "0.1.0"

#: (method, path, operationId, summary, request body model, response model or None)
ENDPOINTS: list[tuple[str, str, str, str, type[BaseModel] | None, type[BaseModel] | None]] = [
    ("post", "/fleet/jobs", "submit_job", "Submit a job (idempotent by idempotencyKey)", schemas.JobSpec, jobs.Job),
    ("get", "/fleet/jobs", "list_jobs", "List jobs, newest first (stage, productId, limit, offset, continuation)", None, None),
    ("get", "/fleet/jobs/{id}", "get_job", "A job with its runs and events", None, jobs.Job),
    ("patch", "/fleet/jobs/{id}", "patch_job", "The lease holder moves its job (fenced)", schemas.PatchBody, jobs.Job),
    ("post", "/fleet/jobs/{id}/lease/release", "release_lease", "End the lease (fenced)", schemas.ReleaseBody, jobs.Job),
    ("post", "/fleet/jobs/{id}/actions/{action}", "job_action", "Operator action: requeue, reject, cancel, ship", schemas.ActionBody, jobs.Job),
    ("post", "/fleet/jobs/{id}/children", "add_children", "Add children to a waiting composite job", schemas.ChildrenSpec, None),
    ("get", "/fleet/jobs/{id}/dag", "get_dag", "The nested DAG subtree under a job", None, None),
    ("post", "/fleet/jobs/{id}/review/request", "request_review", "Open the review gate on a testing job", schemas.ReviewRequestBody, jobs.Job),
    ("post", "/fleet/jobs/{id}/review", "submit_review", "A reviewer approves or rejects", schemas.ReviewBody, jobs.Job),
    ("post", "/fleet/claim", "claim_next", "Claim the best queued job of a product", schemas.ClaimBody, None),
    ("post", "/fleet/jobs/{id}/claim", "claim_job", "Claim one named job", schemas.ClaimBody, None),
    ("get", "/fleet/factories", "list_factories", "Factories with health and seats", None, None),
    ("post", "/fleet/factories/{id}/heartbeat", "heartbeat", "Register a factory and renew its leases", schemas.HeartbeatBody, None),
    ("get", "/fleet/queue-state", "get_queue_state", "The product's queue version (one point read)", None, None),
    ("get", "/fleet/weights/{productId}", "get_weights", "The product's scoring weights", None, None),
    ("put", "/fleet/weights/{productId}", "put_weights", "Set the product's scoring weights (per-field merge)", schemas.WeightsBody, None),
    ("get", "/fleet/budgets/{productId}", "get_budget", "The product's budget (FLEET_BUDGETS)", None, None),
    ("put", "/fleet/budgets/{productId}", "put_budget", "Set the ceiling and window (FLEET_BUDGETS)", schemas.BudgetBody, None),
    ("post", "/fleet/budgets/{productId}/pause", "pause_budget", "Pause the product's spending", None, None),
    ("post", "/fleet/budgets/{productId}/resume", "resume_budget", "Resume the product's spending", None, None),
    ("get", "/fleet/health", "health", "Store reachability, flags, version", None, None),
    ("get", "/fleet/openapi.json", "openapi_document", "This document", None, None),
]


def _query(name: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema}


_PRODUCT = {"type": "string", "pattern": jobs.PRODUCT_ID}
#: Query parameters and constrained path parameters, by operationId.
PARAMETERS: dict[str, list[dict[str, Any]]] = {
    "list_jobs": [
        _query("stage", {"type": "string", "enum": [s.value for s in Stage]}),
        _query("productId", _PRODUCT),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}),
        _query("offset", {"type": "integer", "minimum": 0, "maximum": 10_000, "default": 0}),
        _query("continuation", {"type": "string"}),
    ],
    "get_queue_state": [_query("productId", _PRODUCT, required=True)],
}
#: Operations that answer 201 when they create something.
CREATED = {"submit_job", "add_children"}
PATH_SCHEMAS: dict[str, dict[str, Any]] = {
    "action": {"type": "string", "enum": ["requeue", "reject", "cancel", "ship"]},
    "productId": _PRODUCT,
}


def _problem_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["type", "title", "status", "code", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "code": {"type": "string"},
            "detail": {"type": "string"},
            "errors": {"type": "array", "items": {"type": "object"}},
        },
    }


@functools.cache
def document() -> dict[str, Any]:
    models = {m for _, _, _, _, req, res in ENDPOINTS for m in (req, res) if m is not None}
    keyed = [(m, "validation" if m is not jobs.Job else "serialization") for m in sorted(models, key=lambda m: m.__name__)]
    refs, defs = models_json_schema(keyed, by_alias=True, ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for method, path, op_id, summary, req, res in ENDPOINTS:
        op: dict[str, Any] = {
            "operationId": op_id,
            "summary": summary,
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"application/json": {"schema": refs[(res, "serialization")] if res else {"type": "object"}}},
                },
                "default": {
                    "description": "A problem",
                    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
                },
            },
        }
        params = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
        parameters = [
            {"name": p, "in": "path", "required": True, "schema": PATH_SCHEMAS.get(p, {"type": "string"})} for p in params
        ] + PARAMETERS.get(op_id, [])
        if parameters:
            op["parameters"] = parameters
        if req is not None:
            op["requestBody"] = {
                "required": req not in (schemas.ActionBody, schemas.ReviewRequestBody, schemas.HeartbeatBody),
                "content": {"application/json": {"schema": refs[(req, "validation")]}},
            }
        if op_id in CREATED:
            op["responses"]["201"] = {**op["responses"]["200"], "description": "Created"}
        if op_id != "health":
            op["security"] = [{"functionKey": []}]
        paths.setdefault(path, {})[method] = op
    components = {**defs.get("$defs", {}), "Problem": _problem_schema()}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Fleet control plane", "version": VERSION},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"functionKey": {"type": "apiKey", "in": "header", "name": "x-functions-key"}},
        },
    }
