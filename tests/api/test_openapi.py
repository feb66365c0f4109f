"""`GET /fleet/openapi.json`: a valid OpenAPI 3.1 document, made from the bindings, what each
trigger declares and the models, that says what the API really answers."""
from __future__ import annotations

import ast
import inspect
import json

import azure.functions as func
import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from werkzeug.test import Client

import function_app
from fleet import errors, jobs, queue_state, schemas
from fleet.jobs import job_id
from fleet.principals import Permission, Role
from shared import http, openapi
from shared.devhost import hosting

PROBLEM = "application/problem+json"


@pytest.fixture
def doc() -> dict:
    """The document as `GET /fleet/openapi.json` sends it."""
    return json.loads(json.dumps(openapi.document(function_app.app).model_dump(mode="json")))


def _operations(doc: dict):
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def _component(doc: dict, schema: dict) -> dict:
    return doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]] if "$ref" in schema else schema


def _successes(operation: dict) -> dict[str, dict]:
    return {status: r for status, r in operation["responses"].items() if status.startswith("2")}


# The document itself


def test_it_is_served_and_validates_as_openapi_3_1(api, doc):
    response = api.get("/fleet/openapi.json")
    assert (response.status_code, response.json) == (200, doc)
    validate(response.json, cls=OpenAPIV31SpecValidator)
    assert response.json["openapi"] == "3.1.0"


def test_every_success_answer_names_a_schema_with_properties(doc):
    for path, method, operation in _operations(doc):
        assert _successes(operation), f"{method} {path} documents no success"
        for status, response in _successes(operation).items():
            schema = response["content"]["application/json"]["schema"]
            assert "$ref" in schema or "properties" in schema, f"{method} {path} {status}"
            assert _component(doc, schema).get("properties"), f"{method} {path} {status}: {schema}"


def test_every_error_response_is_a_problem_with_its_codes(doc):
    for path, method, operation in _operations(doc):
        errors_ = {s: r for s, r in operation["responses"].items() if s != "default" and int(s) >= 400}
        assert "500" in errors_, f"{method} {path}"
        for status, response in errors_.items():
            problem = response["content"].get(PROBLEM)
            if problem is None:
                assert "application/json" in response["content"], f"{method} {path} {status}"
                continue  # an answer sent with an error status (a degraded health check)
            assert problem["schema"]["allOf"] == [{"$ref": "#/components/schemas/Problem"}]
            assert problem["schema"]["properties"]["code"]["enum"], f"{method} {path} {status}"
        assert PROBLEM in operation["responses"]["default"]["content"]


def test_every_body_and_query_has_its_schema(doc):
    for path, method, operation in _operations(doc):
        if "requestBody" in operation:
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            assert _component(doc, schema).get("properties") is not None, f"{method} {path}"
        names = [p["name"] for p in operation.get("parameters", [])]
        assert len(names) == len(set(names)), f"{method} {path}"
        assert {n for n in names if "{" + n + "}" in path} == {
            p["name"] for p in operation.get("parameters", []) if p["in"] == "path"
        }


def test_a_new_endpoint_is_documented_from_its_binding_and_declaration_alone():
    app = function_app.FleetApp(http_auth_level=func.AuthLevel.FUNCTION)

    @app.route(route="fleet/things/{productId}", methods=["GET"])
    @http.endpoint(
        needs=Permission.READ, answer=queue_state.QueueState, path={"productId": schemas.ProductId}, raises=(errors.NotFound,)
    )
    def get_thing(req: func.HttpRequest) -> func.HttpResponse:
        """A thing of a product"""
        raise errors.NotFound()

    app.get_functions()  # as the Functions worker does when it loads the app, before any request
    operation = openapi.document(app).paths["/fleet/things/{productId}"]["get"]
    assert (operation["operationId"], operation["summary"]) == ("get_thing", "A thing of a product")
    assert operation["parameters"][0]["schema"]["pattern"] == jobs.PRODUCT_ID
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/QueueState"
    }
    assert operation["responses"]["404"]["content"][PROBLEM]["schema"]["properties"]["code"]["enum"] == ["not_found"]
    assert set(operation["responses"]) == {"200", "400", "401", "403", "404", "500", "503", "default"}
    assert operation["security"][0] == {"bearerToken": []}
    assert operation["description"] == "Needs the `read` permission."


# The document against the triggers


def _body_parsed(function) -> tuple[str | None, bool]:
    """The model the trigger's `http.body(req, Model, optional=...)` call names, and whether
    the body is required; (None, True) if it reads no body."""
    tree = ast.parse(inspect.getsource(function.get_user_function().__wrapped__).lstrip())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "http.body":
            optional = any(k.arg == "optional" and ast.literal_eval(k.value) for k in node.keywords)
            return ast.unparse(node.args[1]).rsplit(".", 1)[-1], not optional
    return None, True


@pytest.mark.parametrize(
    "function",
    [f for f in hosting.functions_of(function_app.app) if f.is_http_function() and http.declared(f.get_user_function())],
    ids=lambda f: f.get_function_name(),
)
def test_each_trigger_reads_the_body_it_declares(function):
    declared = http.declared(function.get_user_function())
    model = declared.body.__name__ if declared.body is not None else None
    assert _body_parsed(function) == (model, declared.body_required)


def test_query_parameters_are_read_as_documented(api, doc):
    """Each query parameter's bounds, members and requiredness, as documented, are what the
    trigger accepts and refuses."""
    checked = 0
    for path, method, operation in _operations(doc):
        query = [p for p in operation.get("parameters", []) if p["in"] == "query"]
        required = {p["name"]: "p" for p in query if p["required"]}
        for parameter in query:
            name, schema = parameter["name"], _value_schema(doc, parameter["schema"])
            tries: list[tuple[object, bool]] = []
            if "minimum" in schema:
                tries += [(schema["minimum"], True), (schema["minimum"] - 1, False)]
            if "maximum" in schema:
                tries += [(schema["maximum"], True), (schema["maximum"] + 1, False)]
            if "enum" in schema:
                tries += [(schema["enum"][0], True), ("no-such-member", False)]
            if "pattern" in schema:
                tries += [("p", True), ("not a name", False)]
            for value, accepted in tries:
                response = api.call(method.upper(), path, query_string={**required, name: value})
                refused = response.status_code == 400 and [e["field"] for e in response.json["errors"]] == [name]
                assert refused != accepted, f"{method} {path}?{name}={value}: {response.status_code} {response.json}"
                checked += 1
            if parameter["required"]:
                response = api.call(method.upper(), path, query_string={k: v for k, v in required.items() if k != name})
                assert response.status_code == 400 and response.json["errors"][0]["field"] == name
                checked += 1
    assert checked >= 15


def _value_schema(doc: dict, schema: dict) -> dict:
    """The schema of a parameter's value: an optional one's non-null branch, resolved."""
    branches = [b for b in schema.get("anyOf", [schema]) if b.get("type") != "null"]
    return _component(doc, branches[0])


# The document against real answers


class Checked:
    """Calls the API and checks every answer against the document: its status is documented
    for the operation, its body validates against that status's schema, and a problem's code
    is one the document lists for that status."""

    def __init__(self, api, doc: dict) -> None:
        self.api, self.doc = api, doc
        self.routes = hosting.DevHost(function_app.app, route_prefix="", keys=()).routes
        self.by_id = {op["operationId"]: op for _, _, op in _operations(doc)}
        self.answered: set[str] = set()

    def __call__(self, method: str, path: str, body=None, *, status: int, **kw):
        response = self.api.call(method, path, body, **kw)
        assert response.status_code == status, (method, path, response.json)
        self.check(method, path, response)
        return response.json

    def check(self, method: str, path: str, response) -> None:
        name = self.routes.resolve(method, path.split("?")[0])[0].target.get_function_name()
        documented = self.by_id[name]["responses"].get(str(response.status_code))
        assert documented is not None, f"{name} answered an undocumented {response.status_code}"
        media = response.headers["content-type"].split(";")[0]
        schema = documented["content"][media]["schema"]
        OAS31Validator({**schema, "components": self.doc["components"]}).validate(response.json)
        if media == PROBLEM:
            assert response.json["code"] in schema["properties"]["code"]["enum"], (name, response.json)
        elif response.status_code < 300:
            self.answered.add(name)


def test_every_answer_is_what_the_document_says(flagged_api, doc):
    # Given a coordinator with budgets and preemption on
    call = Checked(flagged_api, doc)
    job = lambda key, **fields: {"productId": "p", "idempotencyKey": key, **fields}  # noqa: E731
    call("GET", "/fleet/health", status=200)
    call("GET", "/fleet/openapi.json", status=200)
    # When every operation is called, and refused where it can be
    a = call("POST", "/fleet/jobs", job("a", estimatedCostUsd=1.0), status=201)
    call("POST", "/fleet/jobs", job("a", estimatedCostUsd=1.0), status=200)
    call("POST", "/fleet/jobs", job("a", title="other"), status=409)
    call("POST", "/fleet/jobs", {"productId": "p"}, status=400)
    call("POST", "/fleet/jobs", data=b'{"x": "' + b"a" * (http.MAX_BODY + 1) + b'"}', status=413,
         content_type="application/json")
    b = call("POST", "/fleet/jobs", job("b", deps=["a"]), status=201)
    comp = call("POST", "/fleet/jobs", job("comp", kind="composite", children=[{"idempotencyKey": "c1"}]), status=201)
    call("GET", "/fleet/jobs?productId=p&limit=2", status=200)
    call("GET", "/fleet/jobs?limit=0", status=400)
    call("GET", f"/fleet/jobs/{a['id']}", status=200)
    call("GET", f"/fleet/jobs/{job_id('p', 'never')}", status=404)
    call("GET", "/fleet/queue-state?productId=p", status=200)
    call("GET", "/fleet/queue-state", status=400)
    call("GET", "/fleet/weights/p", status=200)
    call("PUT", "/fleet/weights/p", {"age": 2}, status=200)
    call("PUT", "/fleet/weights/p", {"age": "old"}, status=400)
    call("GET", "/fleet/budgets/p", status=404)
    call("PUT", "/fleet/budgets/p", {"ceilingUsd": 10, "window": "daily"}, status=200)
    call("GET", "/fleet/budgets/p", status=200)
    call("POST", "/fleet/factories/f1/heartbeat", {"products": ["p"], "seatLimit": 1}, status=200)
    claimed = call("POST", "/fleet/claim", {"factoryId": "f1", "productId": "p"}, status=200)
    call("POST", "/fleet/claim", {"factoryId": "f1", "productId": "p"}, status=200)  # at its seat limit
    held, lease = claimed["job"]["id"], claimed["lease"]["leaseId"]
    running = [{"jobId": held, "leaseId": lease}, {"jobId": "junk", "leaseId": "x"}]
    call("POST", "/fleet/factories/f1/heartbeat", {"running": running}, status=200)
    call("GET", "/fleet/factories", status=200)
    call("PATCH", f"/fleet/jobs/{held}", {"leaseId": lease, "stage": "building"}, status=200)
    call("PATCH", f"/fleet/jobs/{held}", {"leaseId": "not-mine", "stage": "review"}, status=409)
    call("PATCH", f"/fleet/jobs/{held}", {"leaseId": lease, "stage": "assigned"}, status=409)
    release = {"leaseId": lease, "stage": "testing", "insights": {"costUsd": 0.5}}
    call("POST", f"/fleet/jobs/{held}/lease/release", release, status=200)
    call("POST", f"/fleet/jobs/{held}/review/request", {"reviewers": ["ana"]}, status=200)
    ana, bob = flagged_api.mint(Role.REVIEWER, name="ana"), flagged_api.mint(Role.REVIEWER, name="bob")
    call("POST", f"/fleet/jobs/{held}/review", {"decision": "approve"}, status=403, token=bob)
    call("POST", f"/fleet/jobs/{held}/review", {"reviewer": "bob", "decision": "approve"}, status=403, token=ana)
    call("POST", f"/fleet/jobs/{held}/review", {"decision": "approve"}, status=401, token="fleet_nope")
    call("POST", f"/fleet/jobs/{held}/review", {"decision": "approve"}, status=200, token=ana)
    call("POST", f"/fleet/jobs/{held}/actions/requeue", {"reason": "again"}, status=200)
    call("POST", f"/fleet/jobs/{held}/actions/explode", status=400)
    call("POST", f"/fleet/jobs/{held}/claim", {"factoryId": "f2"}, status=200)
    call("POST", f"/fleet/jobs/{b['id']}/claim", {"factoryId": "f2"}, status=409)
    call("POST", f"/fleet/jobs/{comp['id']}/children", {"children": [{"idempotencyKey": "c2"}]}, status=201)
    call("POST", f"/fleet/jobs/{a['id']}/children", {"children": [{"idempotencyKey": "c3"}]}, status=201)
    _add_a_child_never_submitted(flagged_api, comp["id"])
    call("GET", f"/fleet/jobs/{comp['id']}/dag", status=200)
    call("POST", "/fleet/budgets/p/pause", status=200)
    call("POST", "/fleet/claim", {"factoryId": "f3", "productId": "p"}, status=200)  # paused
    call("POST", "/fleet/budgets/p/resume", status=200)
    call("POST", "/fleet/budgets/other/pause", status=404)
    # a critical job preempts the low one its factory holds at its seat limit
    call("POST", "/fleet/jobs", {"productId": "q", "idempotencyKey": "low", "priority": "low"}, status=201)
    low = call("POST", "/fleet/claim", {"factoryId": "g", "productId": "q", "seatLimit": 1}, status=200)
    call("POST", "/fleet/jobs", {"productId": "q", "idempotencyKey": "crit", "priority": "critical"}, status=201)
    preempting = call("POST", "/fleet/claim", {"factoryId": "g", "productId": "q", "seatLimit": 1}, status=200)
    assert preempting["preempted"]
    # and the lease it lost reports what its run cost, once
    late = {"leaseId": low["lease"]["leaseId"], "insights": {"costUsd": 0.25}}
    call("POST", f"/fleet/jobs/{low['job']['id']}/lease/report", late, status=200)
    call("POST", f"/fleet/jobs/{low['job']['id']}/lease/report", {**late, "insights": {"costUsd": 1}}, status=409)
    call("POST", f"/fleet/jobs/{low['job']['id']}/lease/report", {"leaseId": "never"}, status=400)
    call("POST", f"/fleet/jobs/{low['job']['id']}/lease/report", {**late, "leaseId": "never"}, status=404)
    viewer = call("POST", "/fleet/tokens", {"role": "viewer", "products": ["p"]}, status=201)
    call("POST", "/fleet/tokens", {"role": "factory"}, status=400)
    call("POST", "/fleet/tokens", {"role": "viewer", "products": []}, status=400)  # not every product
    call("POST", "/fleet/tokens", {"role": "viewer"}, status=403, token=viewer["token"])
    call("GET", "/fleet/tokens", status=200)
    call("GET", f"/fleet/tokens/{viewer['id']}", status=200)
    call("GET", "/fleet/tokens/0000000000000000", status=404)
    call("DELETE", f"/fleet/tokens/{viewer['id']}", status=200)
    call("DELETE", "/fleet/tokens/0000000000000000", status=404)
    # Then every operation answered, each as documented
    assert call.answered == set(call.by_id)


def _add_a_child_never_submitted(api, parent_id: str) -> None:
    """What a crash between writing a parent and its new child leaves behind."""
    store = api.ctx.store
    doc = store.read("jobs", "p", parent_id)
    changed = {k: v for k, v in doc.items() if not k.startswith("_")}
    store.replace("jobs", {**changed, "children": [*doc["children"], job_id("p", "ghost")]}, doc["_etag"])


def test_a_call_without_a_key_is_a_documented_problem(doc):
    host = hosting.DevHost(function_app.app, route_prefix="", keys=("secret",))
    response = Client(host.wsgi).get("/fleet/factories")
    assert response.status_code == 401
    problem = doc["paths"]["/fleet/factories"]["get"]["responses"]["401"]["content"][PROBLEM]
    assert json.loads(response.get_data())["code"] in problem["schema"]["properties"]["code"]["enum"]
