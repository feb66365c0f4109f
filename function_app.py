"""The routing table: one HTTP function per endpoint, and the timers.

Each trigger parses, calls one use case, and serialises its answer model. Its binding and its
`http.endpoint` declaration are the API table: `GET /fleet/openapi.json` is made from them.
"""
from __future__ import annotations

import logging
from datetime import timedelta

import azure.functions as func

from fleet import (
    actions,
    budget_rules,
    budgets,
    claims,
    dag,
    errors,
    factories,
    health,
    jobs,
    leases,
    listing,
    queue_state,
    review,
    schemas,
    submit,
    sweep,
    tokens,
    weight_registry,
)
from fleet.jobs import product_of
from fleet.principals import Permission
from fleet.stages import Stage
from dashboard import routes as dashboard_routes
from shared import auth, config, http, openapi
from shared.config import context as ctx
from shared.stores import probe


class FleetApp(func.FunctionApp):
    """The app, indexed once however often it is asked: the Functions worker indexes it when it
    loads this module, and `GET /fleet/openapi.json` reads the same functions again later (a
    plain `FunctionApp` refuses a second `get_functions()`)."""

    def get_functions(self) -> list:
        if not hasattr(self, "_indexed"):
            self._indexed = super().get_functions()
        return self._indexed

    def authorize_admin(self, headers: dict[str, str]) -> func.HttpResponse | None:
        """The dev host's question before `POST /admin/functions/{name}` runs a timer: None
        when the caller's principal may (`run_timers`), else the problem to answer."""
        try:
            auth.principal_of(ctx(), config.auth_mode(), headers).require(Permission.RUN_TIMERS)
        except errors.FleetError as exc:
            return http.from_error(exc)
        return None


app = FleetApp(http_auth_level=func.AuthLevel.FUNCTION)
log = logging.getLogger("fleet")
#: The operator dashboard's pages and forms (`dashboard.routes`), on the same port.
app.register_functions(dashboard_routes.bp)


#: The path parameter of the per-product endpoints.
PRODUCT = {"productId": schemas.ProductId}


# Jobs

#: What every lease holder's and operator's write of a job may be refused with.
JOB_WRITE = (errors.NotFound, errors.IllegalTransition, errors.TooLarge)


@app.route(route="fleet/jobs", methods=["POST"])
@http.endpoint(
    needs=Permission.SUBMIT,
    answer=jobs.Job, status=(201, 200), body=schemas.JobSpec, raises=(errors.IdempotencyConflict,),
)
def submit_job(req: func.HttpRequest) -> func.HttpResponse:
    """Submit a job (idempotent by idempotencyKey: 200 with the same job on a repeat)"""
    spec = http.body(req, schemas.JobSpec)
    result = dag.submit_composite(ctx(), spec) if spec.children else submit.submit(ctx(), spec)
    return http.ok(result.job, 201 if result.created else 200)


@app.route(route="fleet/jobs", methods=["GET"])
@http.endpoint(needs=Permission.READ, answer=listing.JobPage, query=schemas.JobsQuery)
def list_jobs(req: func.HttpRequest) -> func.HttpResponse:
    """List jobs, newest first"""
    product = req.params.get("productId")
    return http.ok(
        listing.page(
            ctx(),
            stage=http.param(req, "stage", Stage),
            product_id=http.product_id(product) if product else None,
            limit=http.param(req, "limit", int, 50, minimum=1, maximum=listing.MAX_LIMIT),
            offset=http.param(req, "offset", int, 0, minimum=0, maximum=listing.MAX_OFFSET),
            continuation=http.param(req, "continuation", str),
        )
    )


@app.route(route="fleet/jobs/{id}", methods=["GET"])
@http.endpoint(needs=Permission.READ, answer=jobs.Job, raises=(errors.NotFound,))
def get_job(req: func.HttpRequest) -> func.HttpResponse:
    """A job with its runs and events"""
    return http.ok(listing.get(ctx(), req.route_params["id"]))


@app.route(route="fleet/jobs/{id}", methods=["PATCH"])
@http.endpoint(needs=Permission.WORK, answer=jobs.Job, body=schemas.PatchBody, raises=(*JOB_WRITE, errors.LeaseLost))
def patch_job(req: func.HttpRequest) -> func.HttpResponse:
    """The lease holder moves its job (fenced)"""
    return http.ok(leases.patch(ctx(), req.route_params["id"], http.body(req, schemas.PatchBody)))


@app.route(route="fleet/jobs/{id}/lease/release", methods=["POST"])
@http.endpoint(needs=Permission.WORK, answer=jobs.Job, body=schemas.ReleaseBody, raises=(*JOB_WRITE, errors.LeaseLost))
def release_lease(req: func.HttpRequest) -> func.HttpResponse:
    """End the lease (fenced)"""
    return http.ok(leases.release(ctx(), req.route_params["id"], http.body(req, schemas.ReleaseBody)))


@app.route(route="fleet/jobs/{id}/lease/report", methods=["POST"])
@http.endpoint(
    needs=Permission.WORK,
    answer=jobs.Job, body=schemas.ReportBody, raises=(*JOB_WRITE, errors.IdempotencyConflict, errors.Forbidden)
)
def report_run(req: func.HttpRequest) -> func.HttpResponse:
    """A lease taken from its holder reports its run's cost and results, once"""
    return http.ok(leases.report(ctx(), req.route_params["id"], http.body(req, schemas.ReportBody)))


@app.route(route="fleet/jobs/{id}/actions/{action}", methods=["POST"])
@http.endpoint(
    needs=Permission.OPERATE,
    answer=jobs.Job, body=schemas.ActionBody, body_required=False, path={"action": actions.Action}, raises=JOB_WRITE
)
def job_action(req: func.HttpRequest) -> func.HttpResponse:
    """Operator action: requeue, reject, cancel or ship"""
    action = http.route_enum(req, "action", actions.Action)
    body = http.body(req, schemas.ActionBody, optional=True)
    return http.ok(actions.apply(ctx(), req.route_params["id"], action, body.reason, body.actor))


@app.route(route="fleet/jobs/{id}/children", methods=["POST"])
@http.endpoint(
    needs=Permission.SUBMIT,
    answer=dag.ChildrenAdded, status=201, body=schemas.ChildrenSpec, raises=(*JOB_WRITE, errors.IdempotencyConflict)
)
def add_children(req: func.HttpRequest) -> func.HttpResponse:
    """Add children to a waiting composite job"""
    body = http.body(req, schemas.ChildrenSpec)
    return http.ok(dag.add_children(ctx(), req.route_params["id"], body.children), 201)


@app.route(route="fleet/jobs/{id}/dag", methods=["GET"])
@http.endpoint(needs=Permission.READ, answer=dag.DagNode, raises=(errors.NotFound,))
def get_dag(req: func.HttpRequest) -> func.HttpResponse:
    """The nested DAG subtree under a job"""
    return http.ok(dag.view(ctx(), req.route_params["id"]))


@app.route(route="fleet/jobs/{id}/review/request", methods=["POST"])
@http.endpoint(
    needs=Permission.REQUEST_REVIEW,
    answer=jobs.Job, body=schemas.ReviewRequestBody, body_required=False, raises=JOB_WRITE,
)
def request_review(req: func.HttpRequest) -> func.HttpResponse:
    """Open the review gate on a testing job"""
    body = http.body(req, schemas.ReviewRequestBody, optional=True)
    return http.ok(review.request(ctx(), req.route_params["id"], body.required, body.reviewers, body.actor))


@app.route(route="fleet/jobs/{id}/review", methods=["POST"])
@http.endpoint(needs=Permission.REVIEW, answer=jobs.Job, body=schemas.ReviewBody, raises=(*JOB_WRITE, errors.Forbidden))
def submit_review(req: func.HttpRequest) -> func.HttpResponse:
    """A reviewer approves or rejects"""
    body = http.body(req, schemas.ReviewBody)
    approved = body.decision == schemas.Decision.APPROVE
    return http.ok(review.decide(ctx(), req.route_params["id"], body.reviewer, approved, body.comment))


# Claims


@app.route(route="fleet/claim", methods=["POST"])
@http.endpoint(needs=Permission.WORK, answer=claims.Claimed, body=schemas.ClaimBody)
def claim_next(req: func.HttpRequest) -> func.HttpResponse:
    """Claim the best queued job of a product"""
    body = http.body(req, schemas.ClaimBody)
    if body.product_id is None:
        raise errors.ValidationFailed("productId is required", [{"field": "productId", "message": "missing"}])
    return http.ok(claims.claim_next(ctx(), _claim_request(body, body.product_id)))


@app.route(route="fleet/jobs/{id}/claim", methods=["POST"])
@http.endpoint(
    needs=Permission.WORK,
    answer=claims.Claimed, body=schemas.ClaimBody, raises=(errors.NotFound, errors.NotClaimable),
)
def claim_job(req: func.HttpRequest) -> func.HttpResponse:
    """Claim one named job"""
    id = req.route_params["id"]
    product = product_of(id)
    if product is None:
        raise errors.NotFound(f"no job {id!r}")
    body = http.body(req, schemas.ClaimBody)
    if body.product_id is not None and body.product_id != product:
        detail = f"job {id} is in product {product}, not {body.product_id} (leave productId out: the job names it)"
        raise errors.ValidationFailed(detail, [{"field": "productId", "message": "not the job's product"}])
    return http.ok(claims.claim_job(ctx(), id, product, _claim_request(body, product)))


def _claim_request(body: schemas.ClaimBody, product: str) -> claims.ClaimRequest:
    return claims.ClaimRequest(body.factory_id, product, body.capabilities, body.weights, body.seat_limit)


# Factories


@app.route(route="fleet/factories", methods=["GET"])
@http.endpoint(needs=Permission.READ, answer=factories.FactoryList)
def list_factories(req: func.HttpRequest) -> func.HttpResponse:
    """Factories with health and seats"""
    return http.ok(factories.list_all(ctx()))


@app.route(route="fleet/factories/{id}/heartbeat", methods=["POST"])
@http.endpoint(
    needs=Permission.WORK,
    answer=factories.Heartbeat, body=schemas.HeartbeatBody, body_required=False, path={"id": schemas.FactoryId},
)
def heartbeat(req: func.HttpRequest) -> func.HttpResponse:
    """Register a factory and renew its leases"""
    factory_id = http.route_name(req, "id")
    body = http.body(req, schemas.HeartbeatBody, optional=True)
    running = [(r.job_id, r.lease_id) for r in body.running]
    return http.ok(factories.heartbeat(ctx(), factory_id, body.products, body.capabilities, body.seat_limit, running))


# Queue state and weights


@app.route(route="fleet/queue-state", methods=["GET"])
@http.endpoint(needs=Permission.READ, answer=queue_state.QueueState, query=schemas.QueueStateQuery)
def get_queue_state(req: func.HttpRequest) -> func.HttpResponse:
    """The product's queue version (one point read)"""
    return http.ok(queue_state.read(ctx(), http.product_id(req.params.get("productId"))))


@app.route(route="fleet/weights/{productId}", methods=["GET"])
@http.endpoint(needs=Permission.READ, answer=weight_registry.ProductWeights, path=PRODUCT)
def get_weights(req: func.HttpRequest) -> func.HttpResponse:
    """The product's scoring weights"""
    return http.ok(weight_registry.view(ctx(), http.product_id(req.route_params.get("productId"))))


@app.route(route="fleet/weights/{productId}", methods=["PUT"])
@http.endpoint(
    needs=Permission.SET_WEIGHTS,
    answer=weight_registry.ProductWeights, body=schemas.WeightsBody, path=PRODUCT,
)
def put_weights(req: func.HttpRequest) -> func.HttpResponse:
    """Set the product's scoring weights (per-field merge)"""
    product = http.product_id(req.route_params.get("productId"))
    return http.ok(weight_registry.put(ctx(), product, http.body(req, schemas.WeightsBody)))


# Budgets (FLEET_BUDGETS)

#: What every budget endpoint may be refused with.
BUDGET = (errors.FeatureDisabled, errors.NotFound)


def _budgets_on() -> None:
    if not ctx().settings.budgets:
        raise errors.FeatureDisabled("budgets are off on this coordinator (FLEET_BUDGETS)")


@app.route(route="fleet/budgets/{productId}", methods=["GET"])
@http.endpoint(needs=Permission.READ, answer=budget_rules.BudgetView, path=PRODUCT, raises=BUDGET)
def get_budget(req: func.HttpRequest) -> func.HttpResponse:
    """The product's budget (FLEET_BUDGETS)"""
    _budgets_on()
    product = http.product_id(req.route_params.get("productId"))
    budget = budgets.find(ctx(), product)
    if budget is None:
        raise errors.NotFound(f"product {product} has no budget")
    return http.ok(budget.public())


@app.route(route="fleet/budgets/{productId}", methods=["PUT"])
@http.endpoint(
    needs=Permission.MANAGE_BUDGETS,
    answer=budget_rules.BudgetView, body=schemas.BudgetBody, path=PRODUCT, raises=(errors.FeatureDisabled,),
)
def put_budget(req: func.HttpRequest) -> func.HttpResponse:
    """Set the ceiling, window and default estimate (FLEET_BUDGETS)"""
    _budgets_on()
    product = http.product_id(req.route_params.get("productId"))
    body = http.body(req, schemas.BudgetBody)
    given = body.model_fields_set
    ceiling = body.ceiling_usd if "ceiling_usd" in given else budgets.KEEP
    default = body.default_estimate_usd if "default_estimate_usd" in given else budgets.KEEP
    return http.ok(budgets.put(ctx(), product, ceiling, body.window, default).public())


@app.route(route="fleet/budgets/{productId}/pause", methods=["POST"])
@http.endpoint(
    needs=Permission.MANAGE_BUDGETS, answer=budget_rules.BudgetView, body=schemas.PauseBody, body_required=False,
    path=PRODUCT, raises=BUDGET,
)
def pause_budget(req: func.HttpRequest) -> func.HttpResponse:
    """Pause the product's spending (FLEET_BUDGETS), optionally saying why"""
    _budgets_on()
    product = http.product_id(req.route_params.get("productId"))
    body = http.body(req, schemas.PauseBody, optional=True)
    return http.ok(budgets.pause(ctx(), product, body.reason).public())


@app.route(route="fleet/budgets/{productId}/resume", methods=["POST"])
@http.endpoint(needs=Permission.MANAGE_BUDGETS, answer=budget_rules.BudgetView, path=PRODUCT, raises=BUDGET)
def resume_budget(req: func.HttpRequest) -> func.HttpResponse:
    """Resume the product's spending (FLEET_BUDGETS)"""
    _budgets_on()
    product = http.product_id(req.route_params.get("productId"))
    http.no_body(req)
    return http.ok(budgets.resume(ctx(), product).public())


# Tokens (admins)


@app.route(route="fleet/tokens", methods=["POST"])
@http.endpoint(needs=Permission.MANAGE_TOKENS, answer=tokens.Created, status=201, body=schemas.TokenBody)
def create_token(req: func.HttpRequest) -> func.HttpResponse:
    """Mint an API token (the token is in this answer only)"""
    body = http.body(req, schemas.TokenBody)
    expires_in = timedelta(seconds=body.expires_in_seconds) if body.expires_in_seconds else None
    created = tokens.create(
        ctx(), body.role, name=body.name, products=body.products, factory_id=body.factory_id, expires_in=expires_in
    )
    log.info("token %s created (role %s)", created.id, created.role.value)
    return http.ok(created, 201)


@app.route(route="fleet/tokens", methods=["GET"])
@http.endpoint(needs=Permission.MANAGE_TOKENS, answer=tokens.TokenList)
def list_tokens(req: func.HttpRequest) -> func.HttpResponse:
    """Every API token's record (never a token itself)"""
    return http.ok(tokens.TokenList(items=tokens.list_all(ctx())))


@app.route(route="fleet/tokens/{id}", methods=["GET"])
@http.endpoint(needs=Permission.MANAGE_TOKENS, answer=tokens.Token, raises=(errors.NotFound,))
def get_token(req: func.HttpRequest) -> func.HttpResponse:
    """One API token's record (never the token itself)"""
    return http.ok(tokens.find(ctx(), req.route_params["id"]))


@app.route(route="fleet/tokens/{id}", methods=["DELETE"])
@http.endpoint(needs=Permission.MANAGE_TOKENS, answer=tokens.Token, raises=(errors.NotFound,))
def revoke_token(req: func.HttpRequest) -> func.HttpResponse:
    """Revoke an API token: the next request that presents it is refused"""
    revoked = tokens.revoke(ctx(), req.route_params["id"])
    log.info("token %s revoked", revoked.id)
    return http.ok(revoked)


# Service


#: One ping of the store at a time, for every health check (see `shared.stores.probe`).
store_probe = probe.Probe(lambda: ctx().store.ping())


@app.function_name("health")
@app.route(route="fleet/health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@http.endpoint(needs=None, answer=health.Health, status=(200, 503), store=False)
def get_health(req: func.HttpRequest) -> func.HttpResponse:
    """Store reachability, flags, version (503 when the store does not answer)"""
    reading = store_probe.check()  # within its own short deadline, however the store fares
    if not reading.reachable:
        log.warning("store not usable: %s (%s)", reading.reason.value, reading.detail)
    context = config.current()  # None while the store could not even be opened
    store = health.StoreHealth(
        kind=type(getattr(context.store, "inner", context.store)).__name__ if context else None,
        reachable=reading.reachable,
        reason=reading.reason.value if reading.reason else None,
    )
    answer = health.report(store, config.settings(), openapi.VERSION)
    return http.ok(answer, 200 if answer.status == health.HealthStatus.OK else 503)


@app.route(route="fleet/openapi.json", methods=["GET"])
@http.endpoint(needs=None, answer=openapi.Document, store=False)
def openapi_document(req: func.HttpRequest) -> func.HttpResponse:
    """This document"""
    return http.ok(openapi.document(app))


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
