"""The routing table: one HTTP function per endpoint, and the timers.

Each trigger parses, calls one use case, and serialises; see DESIGN.md's API table.
"""
from __future__ import annotations

import logging

import azure.functions as func

from fleet import (
    actions,
    budget_rules,
    budgets,
    claims,
    dag,
    errors,
    factories,
    leases,
    listing,
    queue_state,
    review,
    schemas,
    submit,
    sweep,
    weight_registry,
)
from fleet.jobs import PRODUCT_ID, is_product_id, product_of
from fleet.stages import Stage
from shared import config, http, openapi
from shared.config import context as ctx
from shared.stores import probe

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
log = logging.getLogger("fleet")


def _product(value: str | None, name: str = "productId") -> str:
    if not value or not is_product_id(value):
        raise errors.ValidationFailed(f"{name} must match {PRODUCT_ID}", [{"field": name, "message": "invalid"}])
    return value


# Jobs


@app.route(route="fleet/jobs", methods=["POST"])
@http.endpoint
def submit_job(req: func.HttpRequest) -> func.HttpResponse:
    spec = http.body(req, schemas.JobSpec)
    result = dag.submit_composite(ctx(), spec) if spec.children else submit.submit(ctx(), spec)
    return http.ok(result.job.to_doc(), 201 if result.created else 200)


@app.route(route="fleet/jobs", methods=["GET"])
@http.endpoint
def list_jobs(req: func.HttpRequest) -> func.HttpResponse:
    product = req.params.get("productId")
    return http.ok(
        listing.page(
            ctx(),
            stage=http.param(req, "stage", Stage),
            product_id=_product(product) if product else None,
            limit=http.param(req, "limit", int, 50, minimum=1, maximum=500),
            offset=http.param(req, "offset", int, 0, minimum=0, maximum=listing.MAX_OFFSET),
            continuation=http.param(req, "continuation", str),
        )
    )


@app.route(route="fleet/jobs/{id}", methods=["GET"])
@http.endpoint
def get_job(req: func.HttpRequest) -> func.HttpResponse:
    return http.ok(listing.get(ctx(), req.route_params["id"]).to_doc())


@app.route(route="fleet/jobs/{id}", methods=["PATCH"])
@http.endpoint
def patch_job(req: func.HttpRequest) -> func.HttpResponse:
    return http.ok(leases.patch(ctx(), req.route_params["id"], http.body(req, schemas.PatchBody)).to_doc())


@app.route(route="fleet/jobs/{id}/lease/release", methods=["POST"])
@http.endpoint
def release_lease(req: func.HttpRequest) -> func.HttpResponse:
    return http.ok(leases.release(ctx(), req.route_params["id"], http.body(req, schemas.ReleaseBody)).to_doc())


@app.route(route="fleet/jobs/{id}/actions/{action}", methods=["POST"])
@http.endpoint
def job_action(req: func.HttpRequest) -> func.HttpResponse:
    action = http.route_enum(req, "action", actions.Action)
    body = http.body(req, schemas.ActionBody, optional=True)
    return http.ok(actions.apply(ctx(), req.route_params["id"], action, body.reason, body.actor).to_doc())


@app.route(route="fleet/jobs/{id}/children", methods=["POST"])
@http.endpoint
def add_children(req: func.HttpRequest) -> func.HttpResponse:
    body = http.body(req, schemas.ChildrenSpec)
    return http.ok(dag.add_children(ctx(), req.route_params["id"], body.children), 201)


@app.route(route="fleet/jobs/{id}/dag", methods=["GET"])
@http.endpoint
def get_dag(req: func.HttpRequest) -> func.HttpResponse:
    return http.ok(dag.view(ctx(), req.route_params["id"]))


@app.route(route="fleet/jobs/{id}/review/request", methods=["POST"])
@http.endpoint
def request_review(req: func.HttpRequest) -> func.HttpResponse:
    body = http.body(req, schemas.ReviewRequestBody, optional=True)
    job = review.request(ctx(), req.route_params["id"], body.required, body.reviewers, body.actor)
    return http.ok(job.to_doc())


@app.route(route="fleet/jobs/{id}/review", methods=["POST"])
@http.endpoint
def submit_review(req: func.HttpRequest) -> func.HttpResponse:
    body = http.body(req, schemas.ReviewBody)
    job = review.decide(ctx(), req.route_params["id"], body.reviewer, body.decision == "approve", body.comment)
    return http.ok(job.to_doc())


# Claims


@app.route(route="fleet/claim", methods=["POST"])
@http.endpoint
def claim_next(req: func.HttpRequest) -> func.HttpResponse:
    body = http.body(req, schemas.ClaimBody)
    if body.product_id is None:
        raise errors.ValidationFailed("productId is required", [{"field": "productId", "message": "missing"}])
    return http.ok(claims.claim_next(ctx(), _claim_request(body, body.product_id)).to_doc())


@app.route(route="fleet/jobs/{id}/claim", methods=["POST"])
@http.endpoint
def claim_job(req: func.HttpRequest) -> func.HttpResponse:
    id = req.route_params["id"]
    product = product_of(id)
    if product is None:
        raise errors.NotFound(f"no job {id!r}")
    body = http.body(req, schemas.ClaimBody)
    return http.ok(claims.claim_job(ctx(), id, product, _claim_request(body, product)).to_doc())


def _claim_request(body: schemas.ClaimBody, product: str) -> claims.ClaimRequest:
    return claims.ClaimRequest(body.factory_id, product, body.capabilities, body.weights, body.seat_limit)


# Factories


@app.route(route="fleet/factories", methods=["GET"])
@http.endpoint
def list_factories(req: func.HttpRequest) -> func.HttpResponse:
    return http.ok({"items": factories.list_all(ctx())})


@app.route(route="fleet/factories/{id}/heartbeat", methods=["POST"])
@http.endpoint
def heartbeat(req: func.HttpRequest) -> func.HttpResponse:
    factory_id = http.route_name(req, "id")
    body = http.body(req, schemas.HeartbeatBody, optional=True)
    running = [(r.job_id, r.lease_id) for r in body.running]
    renewed = factories.heartbeat(ctx(), factory_id, body.products, body.capabilities, body.seat_limit, running)
    return http.ok({"factoryId": factory_id, "leases": renewed})


# Queue state and weights


@app.route(route="fleet/queue-state", methods=["GET"])
@http.endpoint
def get_queue_state(req: func.HttpRequest) -> func.HttpResponse:
    return http.ok(queue_state.read(ctx(), _product(req.params.get("productId"))))


@app.route(route="fleet/weights/{productId}", methods=["GET"])
@http.endpoint
def get_weights(req: func.HttpRequest) -> func.HttpResponse:
    return http.ok(weight_registry.view(ctx(), _product(req.route_params.get("productId"))))


@app.route(route="fleet/weights/{productId}", methods=["PUT"])
@http.endpoint
def put_weights(req: func.HttpRequest) -> func.HttpResponse:
    product = _product(req.route_params.get("productId"))
    return http.ok(weight_registry.put(ctx(), product, http.body(req, schemas.WeightsBody)))


# Budgets (FLEET_BUDGETS)


def _budgets_on() -> None:
    if not ctx().settings.budgets:
        raise errors.FeatureDisabled("budgets are off on this coordinator (FLEET_BUDGETS)")


@app.route(route="fleet/budgets/{productId}", methods=["GET"])
@http.endpoint
def get_budget(req: func.HttpRequest) -> func.HttpResponse:
    _budgets_on()
    product = _product(req.route_params.get("productId"))
    budget = budgets.find(ctx(), product)
    if budget is None:
        raise errors.NotFound(f"product {product} has no budget")
    return http.ok(budget.public())


@app.route(route="fleet/budgets/{productId}", methods=["PUT"])
@http.endpoint
def put_budget(req: func.HttpRequest) -> func.HttpResponse:
    _budgets_on()
    product = _product(req.route_params.get("productId"))
    body = http.body(req, schemas.BudgetBody)
    return http.ok(budgets.put(ctx(), product, body.ceiling_usd, budget_rules.Window(body.window)).public())


@app.route(route="fleet/budgets/{productId}/pause", methods=["POST"])
@http.endpoint
def pause_budget(req: func.HttpRequest) -> func.HttpResponse:
    _budgets_on()
    product = _product(req.route_params.get("productId"))
    http.no_body(req)
    return http.ok(budgets.pause(ctx(), product).public())


@app.route(route="fleet/budgets/{productId}/resume", methods=["POST"])
@http.endpoint
def resume_budget(req: func.HttpRequest) -> func.HttpResponse:
    _budgets_on()
    product = _product(req.route_params.get("productId"))
    http.no_body(req)
    return http.ok(budgets.resume(ctx(), product).public())


# Service


#: One ping of the store at a time, for every health check (see `shared.stores.probe`).
store_probe = probe.Probe(lambda: ctx().store.ping())


@app.route(route="fleet/health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@http.endpoint
def health(req: func.HttpRequest) -> func.HttpResponse:
    reading = store_probe.check()  # within its own short deadline, however the store fares
    if not reading.reachable:
        log.warning("store not usable: %s (%s)", reading.reason.value, reading.detail)
    context = config.current()  # None while the store could not even be opened
    settings = config.settings()
    return http.ok(
        {
            "status": "ok" if reading.reachable else "degraded",
            "store": {
                "kind": type(getattr(context.store, "inner", context.store)).__name__ if context else None,
                "reachable": reading.reachable,
                "reason": reading.reason.value if reading.reason else None,
            },
            "flags": {"preemption": settings.preemption, "budgets": settings.budgets},
            "version": openapi.VERSION,
        },
        200 if reading.reachable else 503,
    )


@app.route(route="fleet/openapi.json", methods=["GET"])
@http.endpoint
def openapi_document(req: func.HttpRequest) -> func.HttpResponse:
    return http.ok(openapi.document())


# Timers


@app.timer_trigger(schedule="0 */1 * * * *", arg_name="timer", run_on_startup=False)
def sweep_expired_leases(timer: func.TimerRequest) -> None:
    counts = sweep.run(ctx())
    log.info("sweep_expired_leases %s", counts)


@app.timer_trigger(schedule="0 */5 * * * *", arg_name="timer", run_on_startup=False)
def roll_budget_windows(timer: func.TimerRequest) -> None:
    context = ctx()
    if context.settings.budgets:
        log.info("roll_budget_windows rolled=%d", budgets.roll_windows(context))
