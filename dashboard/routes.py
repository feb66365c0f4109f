"""The dashboard's triggers: one HTTP function per page or form, registered on the app as a
blueprint, on the API's port. Each declares the permission it needs (`web.page`); forms call
the same use cases as the API, as the signed-in principal, and answer 303 back to a page that
says what happened.

Routes are anonymous to the Functions host (a browser carries no function key): `web` does
the authentication.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, urlencode

import azure.functions as func

from dashboard import forms, render, views, web
from dashboard.web import Request, Version
from fleet import activity, actions, budgets, errors, listing, review, tokens
from fleet.actions import Action
from fleet.budget_rules import Window
from fleet.jobs import product_of
from fleet.principals import Permission
from fleet.stages import Stage
from shared import auth, config, http
from shared.config import context as ctx
from shared.redaction import redact

bp = func.Blueprint()
ANONYMOUS = func.AuthLevel.ANONYMOUS
STATIC = Path(__file__).resolve().parent / "static"
_STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
#: What a form's use case may refuse that the page it came from shows in place.
REFUSALS = (errors.IllegalTransition, errors.Conflict, errors.NotClaimable, errors.LeaseLost)
#: What a notice code a form's redirect names says.
NOTICES = {"created": "Job created.", "existing": "That idempotency key already names this job."}
#: Live-refresh choices, in seconds.
INTERVALS = (5, 10, 30, 60)


def _common(request: Request, **values) -> dict:
    return {
        **web.header(request.principal, request.csrf),
        "etag": request.etag,
        "intervals": INTERVALS,
        "now": ctx().clock.now(),
        "budgets_on": ctx().settings.budgets,
        "preemption_on": ctx().settings.preemption,
        "notice": NOTICES.get(request.param("notice"), request.param("notice")[:1500]),
        "stages": list(Stage),
        **values,
    }


def _version(*more) -> Version:
    """What a view depends on: the fleet's activity version, and the minute (heartbeat ages and
    a factory's own progress, which bumps no version, show within it)."""
    return Version(activity.version(ctx()), int(ctx().clock.now().timestamp() // 60), *more)


# Sign-in


@bp.route(route="dashboard/signin", methods=["GET"], auth_level=ANONYMOUS)
@web.page(needs=None)
def dashboard_signin(request: Request) -> func.HttpResponse:
    """The sign-in page"""
    return render.page("signin.html", **_common(request, next=_next(request.param("next")), failed=False))


@bp.route(route="dashboard/signin", methods=["POST"], auth_level=ANONYMOUS)
@web.page(needs=None)
def dashboard_signin_post(request: Request) -> func.HttpResponse:
    """Sign in with an API token: it becomes the session cookie"""
    token, target = request.field("token"), _next(request.field("next"))
    if config.auth_mode() == auth.Mode.OFF:
        return web.redirect(target)
    try:
        tokens.authenticate(ctx(), token)
    except errors.Unauthorized:
        return render.page("signin.html", 401, **_common(request, next=target, failed=True))
    return web.redirect(target, web.session_cookie(token, web.is_secure(request.req)))


@bp.route(route="dashboard/signout", methods=["POST"], auth_level=ANONYMOUS)
@web.page(needs=None)
def dashboard_signout(request: Request) -> func.HttpResponse:
    """End the session"""
    return web.redirect(web.SIGN_IN, web.session_cookie(None, web.is_secure(request.req)))


def _next(value: str) -> str:
    return value if web.local(value, "/dashboard/") else "/dashboard/fleet"


# Pages


@bp.route(route="dashboard", methods=["GET"], auth_level=ANONYMOUS)
@web.page(needs=Permission.READ)
def dashboard_home(request: Request) -> func.HttpResponse:
    """The dashboard's front door: the overview"""
    return web.redirect("/dashboard/fleet")


@bp.route(route="dashboard/fleet", methods=["GET"], auth_level=ANONYMOUS)
@web.page(needs=Permission.READ, version=lambda r: _version())
def dashboard_overview(request: Request) -> func.HttpResponse:
    """Overview: factories, jobs by stage, recent jobs, spend, the last days"""
    view = views.overview(ctx())
    return render.page(
        "overview.html",
        **_common(request, view=view, chart=render.chart(view.days), ago=render.ago, counted=views.COUNTED, ended=views.FINISHED),
    )


@bp.route(route="dashboard/fleet/jobs", methods=["GET"], auth_level=ANONYMOUS)
@web.page(needs=Permission.READ, version=lambda r: _version())
def dashboard_jobs(request: Request) -> func.HttpResponse:
    """Jobs: by stage, product and search, with bulk actions"""
    stage = http.param(request.req, "stage", Stage)
    product = http.product_id(request.param("product"), "product") if request.param("product") else None
    offset = http.param(request.req, "offset", int, 0, minimum=0, maximum=listing.MAX_OFFSET)
    view = views.jobs(ctx(), stage, product, request.param("q")[:200], offset)
    def url(stage: Stage | None = stage, offset: int = 0) -> str:
        query = {"stage": stage.value if stage else "", "product": product or "", "q": view.query, "offset": offset or ""}
        return "/dashboard/fleet/jobs?" + urlencode({k: v for k, v in query.items() if v})

    tabs = [("All", url(None), stage is None)] + [(render.stage_label(s), url(s), s == stage) for s in Stage]
    newer = url(offset=max(0, offset - views.PAGE_SIZE)) if offset > 0 else None
    older = url(offset=offset + views.PAGE_SIZE) if view.more else None
    values = _common(request, view=view, tabs=tabs, newer=newer, older=older, here=url(offset=offset))
    return render.page("jobs.html", **values)


@bp.route(route="dashboard/fleet/jobs/new", methods=["GET"], auth_level=ANONYMOUS)
@web.page(needs=Permission.SUBMIT)
def dashboard_new_job(request: Request) -> func.HttpResponse:
    """The New job form"""
    values = _common(request, values={"priority": "normal"}, problems=[], products=views.products(ctx()))
    return render.page("new_job.html", **values)


@bp.route(route="dashboard/fleet/jobs/new", methods=["POST"], auth_level=ANONYMOUS)
@web.page(needs=Permission.SUBMIT)
def dashboard_submit_job(request: Request) -> func.HttpResponse:
    """Submit a job from the form, through the API's use case"""
    values = {name: request.field(name) for name in forms.JOB_FIELDS}
    try:
        submitted = forms.submit(ctx(), values)
    except errors.ValidationFailed as exc:
        problems = [redact(forms.problem(e)) for e in exc.errors] or [redact(exc.detail)]
        again = _common(request, values=values, problems=problems, products=views.products(ctx()))
        return render.page("new_job.html", 400, **again)
    except errors.IdempotencyConflict as exc:  # the key is another job's: the form again, to change it
        problems = [redact(f"idempotencyKey: {exc.detail}")]
        again = _common(request, values=values, problems=problems, products=views.products(ctx()))
        return render.page("new_job.html", 409, **again)
    flag = "created" if submitted.created else "existing"
    return web.redirect(f"/dashboard/fleet/jobs/{quote(submitted.job.id, safe='')}?notice={flag}")


@bp.route(route="dashboard/fleet/jobs/bulk", methods=["POST"], auth_level=ANONYMOUS)
@web.page(needs=Permission.OPERATE)
def dashboard_bulk_action(request: Request) -> func.HttpResponse:
    """Requeue or cancel the selected jobs"""
    action = forms.action(request.field("action"), allowed=(Action.REQUEUE, Action.CANCEL))
    ids = request.fields("ids")
    if not ids or len(ids) > views.PAGE_SIZE * 4:
        most = views.PAGE_SIZE * 4
        raise errors.ValidationFailed(f"select between 1 and {most} jobs", [{"field": "ids", "message": "count"}])
    reason = forms.reason(request.field("reason"))
    done, refused = 0, []
    for id in dict.fromkeys(ids):
        try:
            actions.apply(ctx(), id, action, reason)
            done += 1
        except (*REFUSALS, errors.NotFound, errors.ValidationFailed) as exc:
            refused.append(f"{id}: {exc.detail}")
    back = request.field("back")
    target = (back if web.local(back, "/dashboard/fleet/jobs") else "/dashboard/fleet/jobs").rstrip("?&")
    notice = redact(forms.bulk_notice(action, done, refused))  # it goes into a URL
    return web.redirect(f"{target}{'&' if '?' in target else '?'}{urlencode({'notice': notice})}")


@bp.route(route="dashboard/fleet/jobs/{id}", methods=["GET"], auth_level=ANONYMOUS)
@web.page(needs=Permission.READ, version=lambda r: _version(_job_etag(r)))
def dashboard_job(request: Request) -> func.HttpResponse:
    """Job detail: stage, lease, body, events, runs, review gate, DAG and actions"""
    try:
        detail = views.detail(ctx(), _job_id(request), request.read.get("job"))
    except errors.NotFound as exc:
        return render.error_page(404, "No job", exc.detail, **web.header(request.principal, request.csrf))
    return render.page("job.html", **_common(request, d=detail, job=detail.job, ago=render.ago))


@bp.route(route="dashboard/fleet/jobs/{id}/actions/{action}", methods=["POST"], auth_level=ANONYMOUS)
@web.page(needs=Permission.OPERATE)
def dashboard_job_action(request: Request) -> func.HttpResponse:
    """Ship, requeue, reject or cancel one job"""
    id = _job_id(request)
    action = forms.action(request.req.route_params.get("action", ""), allowed=tuple(Action))
    try:
        job = actions.apply(ctx(), id, action, forms.reason(request.field("reason")))
    except REFUSALS as exc:  # shown in place, on the job's page
        return _back_to(id, f"Not done: {exc.detail}")
    return _back_to(id, f"{forms.DONE[action]} The job is {render.stage_label(job.stage).lower()}.")


@bp.route(route="dashboard/fleet/jobs/{id}/review", methods=["POST"], auth_level=ANONYMOUS)
@web.page(needs=Permission.REVIEW)
def dashboard_review(request: Request) -> func.HttpResponse:
    """Approve or reject at the review gate, as oneself"""
    id = _job_id(request)
    decision = request.field("decision")
    if decision not in ("approve", "reject"):
        raise errors.ValidationFailed("decision must be approve or reject", [{"field": "decision", "message": "invalid"}])
    try:
        job = review.decide(ctx(), id, None, decision == "approve", forms.comment(request.field("comment")))
    except REFUSALS as exc:
        return _back_to(id, f"Not done: {exc.detail}")
    verb = "Approved" if decision == "approve" else "Rejected"
    return _back_to(id, f"{verb}. The job is {render.stage_label(job.stage).lower()}.")


@bp.route(route="dashboard/fleet/budget", methods=["GET"], auth_level=ANONYMOUS)
@web.page(needs=Permission.READ, version=lambda r: _version())
def dashboard_budget(request: Request) -> func.HttpResponse:
    """Budgets: spend, reservations, ceilings, windows and pauses per product"""
    view = views.budget_page(ctx()) if ctx().settings.budgets else None
    known = list(view.budgets) if view else []
    return render.page("budget.html", **_common(request, view=view, windows=list(Window), products=known))


@bp.route(route="dashboard/fleet/budget", methods=["POST"], auth_level=ANONYMOUS)
@web.page(needs=Permission.MANAGE_BUDGETS)
def dashboard_budget_new(request: Request) -> func.HttpResponse:
    """Set a budget for a product named in the form"""
    return _change_budget(request, request.field("product"), "settings", blank_keeps=True)


@bp.route(route="dashboard/fleet/budget/{productId}/{change}", methods=["POST"], auth_level=ANONYMOUS)
@web.page(needs=Permission.MANAGE_BUDGETS)
def dashboard_budget_change(request: Request) -> func.HttpResponse:
    """Pause, resume or set a product's budget"""
    return _change_budget(request, request.req.route_params.get("productId", ""), request.req.route_params.get("change", ""))


def _change_budget(request: Request, product: str, change: str, blank_keeps: bool = False) -> func.HttpResponse:
    """`blank_keeps`: a blank window or default estimate keeps the budget's (the form that names
    a product shows neither, and may name one that has a budget), instead of clearing it."""
    if not ctx().settings.budgets:
        raise errors.FeatureDisabled("budgets are off on this coordinator (FLEET_BUDGETS)")
    http.product_id(product, "product")
    if change == "pause":
        budgets.pause(ctx(), product, forms.reason(request.field("reason")))
        notice = f"Paused {product}."
    elif change == "resume":
        budgets.resume(ctx(), product)
        notice = f"Resumed {product}."
    elif change == "settings":
        ceiling, window = forms.budget_settings(request.field("ceiling"), request.field("window"), blank_keeps)
        given = request.field("defaultEstimate") if "defaultEstimate" in request.form else None
        default = forms.default_estimate(given, blank_keeps)
        saved = budgets.put(ctx(), product, ceiling, window, default)
        estimate = saved.default_estimate_usd
        per_job = f", {render.usd(estimate)} reserved per unestimated job" if estimate is not None else ""
        notice = f"Saved {product}: {render.usd(ceiling)} {saved.window.value}{per_job}."
    else:
        raise errors.NotFound(f"no budget change {change!r}")
    return web.redirect(f"/dashboard/fleet/budget?{urlencode({'notice': notice})}")


@bp.route(route="dashboard/static/{name}", methods=["GET"], auth_level=ANONYMOUS)
@web.page(needs=None)
def dashboard_static(request: Request) -> func.HttpResponse:
    """The dashboard's stylesheet and script"""
    name = request.req.route_params.get("name", "")
    path = STATIC / name
    if "/" in name or name.startswith(".") or path.suffix not in _STATIC_TYPES or not path.is_file():
        raise errors.NotFound(f"no file {name[:80]!r}")
    return func.HttpResponse(
        path.read_bytes(), mimetype=_STATIC_TYPES[path.suffix], headers={"Cache-Control": "public, max-age=300"}
    )


# helpers


def _job_id(request: Request) -> str:
    id = request.req.route_params.get("id", "")
    if product_of(id) is None or len(id) > 200:
        raise errors.NotFound(f"no job {id[:80]!r}")
    return id


def _job_etag(request: Request) -> str | None:
    """The ETag of the job the page shows (None: no such job, or not one the principal sees),
    its document kept in `request.read` for the page to render from."""
    id = request.req.route_params.get("id", "")
    product = product_of(id)
    if product is None or not config.principal().sees(product):
        return None
    try:
        doc = request.read["job"] = ctx().store.read("jobs", product, id)
    except errors.NotFound:
        return None
    return doc.get("_etag")


def _back_to(id: str, notice: str) -> func.HttpResponse:
    return web.redirect(f"/dashboard/fleet/jobs/{quote(id, safe='')}?{urlencode({'notice': redact(notice)})}")

