"""The routing table itself: every function's route, methods, auth level and schedule."""
from __future__ import annotations

import json

import function_app
from shared import openapi
from shared.devhost import hosting

EXPECTED_HTTP = {
    "submit_job": ("fleet/jobs", {"POST"}),
    "list_jobs": ("fleet/jobs", {"GET"}),
    "get_job": ("fleet/jobs/{id}", {"GET"}),
    "patch_job": ("fleet/jobs/{id}", {"PATCH"}),
    "release_lease": ("fleet/jobs/{id}/lease/release", {"POST"}),
    "job_action": ("fleet/jobs/{id}/actions/{action}", {"POST"}),
    "add_children": ("fleet/jobs/{id}/children", {"POST"}),
    "get_dag": ("fleet/jobs/{id}/dag", {"GET"}),
    "request_review": ("fleet/jobs/{id}/review/request", {"POST"}),
    "submit_review": ("fleet/jobs/{id}/review", {"POST"}),
    "claim_next": ("fleet/claim", {"POST"}),
    "claim_job": ("fleet/jobs/{id}/claim", {"POST"}),
    "list_factories": ("fleet/factories", {"GET"}),
    "heartbeat": ("fleet/factories/{id}/heartbeat", {"POST"}),
    "get_queue_state": ("fleet/queue-state", {"GET"}),
    "get_weights": ("fleet/weights/{productId}", {"GET"}),
    "put_weights": ("fleet/weights/{productId}", {"PUT"}),
    "get_budget": ("fleet/budgets/{productId}", {"GET"}),
    "put_budget": ("fleet/budgets/{productId}", {"PUT"}),
    "pause_budget": ("fleet/budgets/{productId}/pause", {"POST"}),
    "resume_budget": ("fleet/budgets/{productId}/resume", {"POST"}),
    "health": ("fleet/health", {"GET"}),
    "openapi_document": ("fleet/openapi.json", {"GET"}),
}

EXPECTED_TIMERS = {
    "sweep_expired_leases": "0 */1 * * * *",
    "roll_budget_windows": "0 */5 * * * *",
}


def _functions():
    return {f.get_function_name(): f for f in hosting.functions_of(function_app.app)}


def test_every_http_function_is_bound_as_the_api_table_says():
    functions = _functions()
    http = {name: f for name, f in functions.items() if f.get_trigger().type == "httpTrigger"}
    assert set(http) == set(EXPECTED_HTTP)
    for name, (route, methods) in EXPECTED_HTTP.items():
        trigger = http[name].get_trigger()
        assert trigger.route == route, name
        assert {str(getattr(m, "value", m)) for m in trigger.methods} == methods, name


def test_only_health_is_anonymous():
    for name, function in _functions().items():
        bindings = [json.loads(b) for b in function.get_raw_bindings()]
        trigger = next(b for b in bindings if b["direction"] == "IN")
        if trigger["type"] != "httpTrigger":
            continue
        assert trigger["authLevel"] == ("ANONYMOUS" if name == "health" else "FUNCTION"), name


def test_timers_and_their_schedules():
    timers = {n: f.get_trigger() for n, f in _functions().items() if f.get_trigger().type == "timerTrigger"}
    assert {name: t.schedule for name, t in timers.items()} == EXPECTED_TIMERS
    assert not any(t.run_on_startup for t in timers.values())


def test_openapi_documents_every_route():
    documented = {(path, method.upper()) for method, path, *_ in openapi.ENDPOINTS}
    bound = {("/" + route, method) for route, methods in EXPECTED_HTTP.values() for method in methods}
    assert documented == bound


def test_host_json_route_prefix_is_empty():
    assert hosting.read_route_prefix("host.json") == ""
