"""The routing table itself. The bindings in `function_app.py` are the one table: these tests hold
the OpenAPI document and the client to it, and pin the rules every binding keeps."""
from __future__ import annotations

import ast
import functools
import inspect
import json

import pytest

import function_app
from dashboard import web
from fleetclient import client as client_module
from shared import http, openapi
from shared.devhost import hosting, routes

EXPECTED_TIMERS = {
    "sweep_expired_leases": "0 */1 * * * *",
    "roll_budget_windows": "0 */5 * * * *",
}


def _functions():
    return {f.get_function_name(): f for f in hosting.functions_of(function_app.app)}


def _http_functions():
    return {name: f for name, f in _functions().items() if f.is_http_function()}


def _methods(function) -> set[str]:
    return {str(getattr(m, "value", m)) for m in function.get_trigger().methods}


def _auth_level(function) -> str:
    trigger = next(b for b in map(json.loads, function.get_raw_bindings()) if b["direction"] == "IN")
    return trigger["authLevel"]


@functools.cache
def _document() -> dict:
    return openapi.document(function_app.app).model_dump(mode="json")


def _operations() -> dict[tuple[str, str], dict]:
    """(path, METHOD) → operation, as the document has them."""
    return {
        (path, method.upper()): operation
        for path, item in _document()["paths"].items()
        for method, operation in item.items()
    }


# The rules every binding keeps


def test_every_http_function_is_under_fleet_with_one_method_and_a_declaration():
    for name, function in _http_functions().items():
        assert len(_methods(function)) == 1, f"{name}: one function per endpoint"
        if web.declared(function.get_user_function()) is not None:  # a dashboard page or form
            assert function.get_trigger().route.startswith("dashboard"), name
            continue
        assert function.get_trigger().route.startswith("fleet/"), name
        assert http.declared(function.get_user_function()) is not None, f"{name}: declare it with http.endpoint"


def test_no_two_functions_share_a_route_and_method():
    bound = [(f.get_trigger().route.lower(), method) for f in _http_functions().values() for method in _methods(f)]
    assert len(bound) == len(set(bound))


def test_only_health_and_the_dashboard_are_anonymous_to_the_host():
    """A browser carries no function key: the dashboard authenticates its sessions itself."""
    for name, function in _http_functions().items():
        anonymous = name == "health" or name.startswith("dashboard_")
        assert _auth_level(function) == ("ANONYMOUS" if anonymous else "FUNCTION"), name


def test_timers_and_their_schedules():
    timers = {n: f.get_trigger() for n, f in _functions().items() if f.get_trigger().type == "timerTrigger"}
    assert {name: t.schedule for name, t in timers.items()} == EXPECTED_TIMERS
    assert not any(t.run_on_startup for t in timers.values())


def test_the_app_may_be_indexed_again():
    """The Functions worker indexes the app when it loads it; the OpenAPI document, made later,
    reads the same functions."""
    assert function_app.app.get_functions() is hosting.functions_of(function_app.app)


def test_host_json_route_prefix_is_empty():
    assert hosting.read_route_prefix("host.json") == ""


# The OpenAPI document: every binding, and nothing else


def test_every_binding_is_documented_with_its_route_methods_and_auth_level():
    operations = _operations()
    for name, function in _http_functions().items():
        if web.declared(function.get_user_function()) is not None:
            assert not any(path.startswith("/dashboard") for path, _ in operations), "pages are not API operations"
            continue
        for method in _methods(function):
            operation = operations.get(("/" + function.get_trigger().route, method))
            assert operation is not None, f"{method} /{function.get_trigger().route} ({name}) is not documented"
            assert operation["operationId"] == name
            keyed = _auth_level(function) != "ANONYMOUS"
            assert bool(operation["security"]) == keyed, name
            assert ("401" in operation["responses"]) == keyed, name


def test_every_documented_operation_is_a_binding():
    bound = {("/" + f.get_trigger().route, m) for f in _http_functions().values() for m in _methods(f)}
    assert set(_operations()) <= bound


# The client: every path it calls is a binding


def _client_calls() -> list[tuple[str, str, str]]:
    """(client method, HTTP method, a path it calls) for every `self._http.call(...)` in
    `fleetclient/client.py`; a path built with an f-string gets `x` for each placeholder."""
    tree = ast.parse(inspect.getsource(client_module))
    client_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "FleetClient")
    calls = []
    for method in (n for n in client_class.body if isinstance(n, ast.FunctionDef)):
        paths = {t.id: a.value for a in ast.walk(method) if isinstance(a, ast.Assign) for t in a.targets
                 if isinstance(t, ast.Name)}
        for node in ast.walk(method):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "call":
                verb, path = node.args[0], node.args[1]
                path = paths.get(path.id, path) if isinstance(path, ast.Name) else path
                calls.append((method.name, verb.value, _sample(path)))
    return calls


def _sample(node: ast.expr) -> str:
    if isinstance(node, ast.Constant):
        return node.value
    assert isinstance(node, ast.JoinedStr), ast.dump(node)
    return "".join(part.value if isinstance(part, ast.Constant) else "x" for part in node.values)


@functools.cache
def _routes() -> routes.RouteTable:
    """The app's routes as the host resolves them."""
    return hosting.DevHost(function_app.app, route_prefix="", keys=()).routes


#: The host's own admin API (run a timer now): not a function of the app.
ADMIN = "/admin/functions/"


@pytest.mark.parametrize("name, verb, path", _client_calls())
def test_each_client_path_is_a_binding(name, verb, path):
    if path.startswith(ADMIN):
        return
    try:
        _routes().resolve(verb, path)
    except (routes.RouteNotFound, routes.MethodNotAllowed):
        pytest.fail(f"FleetClient.{name} calls {verb} {path}, which no function is bound to")


#: An admin's own operations: tokens are managed with `fleet tokens` against the store, or
#: over HTTP by an admin's tools, not by the factory client.
ADMINS_OWN = {"create_token", "list_tokens", "get_token", "revoke_token"}


def test_the_client_calls_every_operation():
    reached = {
        _routes().resolve(verb, path)[0].target.get_function_name()
        for _, verb, path in _client_calls()
        if not path.startswith(ADMIN)
    }
    api = {name for name, f in _http_functions().items() if web.declared(f.get_user_function()) is None}
    assert reached - ADMINS_OWN == api - ADMINS_OWN  # the dashboard's pages are the browser's
