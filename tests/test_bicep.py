"""The Azure deployment: `infra/bicep` parses, and agrees with the code about the containers.

There is no Bicep compiler offline, so `pycep-parser` parses every `*.bicep` file (a syntax error
cannot land) and the tests read its syntax tree. `containers.json` is the one definition of the
Cosmos containers: Bicep must deploy them from it (no container spelt out in Bicep), it must
match `fleet.store.PARTITION_KEYS` and what `CosmosStore` loads, and every query shape the use
cases run (`SqliteStore.INDEXES`) must have the composite index a real account needs for it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser

from fleet.store import PARTITION_KEYS, Filter, Query
from shared.stores import cosmos_query
from shared.stores.sqlite_query import INDEXES
from shared.stores.local_cosmos import EMULATOR_KEY

ROOT = Path(__file__).resolve().parents[1]
BICEP_DIR = ROOT / "infra" / "bicep"
BICEP_FILES = sorted(BICEP_DIR.glob("*.bicep"))
CONTAINERS = json.loads((BICEP_DIR / "containers.json").read_text())["containers"]

COSMOS_DATA_CONTRIBUTOR = "00000000-0000-0000-0000-000000000002"
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"


@pytest.fixture(scope="module")
def main() -> dict[str, Any]:
    return BicepParser().parse(file_path=BICEP_DIR / "main.bicep")


def accessor(node: Any) -> tuple[Any, Any]:
    """`a.b` in pycep's tree → (a, b)."""
    operands = node["operator"]["operands"]
    assert node["operator"]["type"] == "property_accessor"
    return operands["operand_1"], operands["operand_2"]


def app_settings(main: dict[str, Any]) -> dict[str, Any]:
    site = main["resources"]["functionApp"]["config"]["properties"]["siteConfig"]
    return {s["name"]: s["value"] for s in site["appSettings"]}


# Every Bicep file parses


def test_there_is_a_bicep_file():
    assert BICEP_DIR / "main.bicep" in BICEP_FILES


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.name)
def test_every_bicep_file_parses(path: Path):
    parsed = BicepParser().parse(file_path=path)

    assert parsed["resources"] or parsed["parameters"] or parsed["variables"]


def test_the_parameters_file_sets_only_declared_parameters(main):
    params = json.loads((BICEP_DIR / "main.parameters.json").read_text())["parameters"]

    assert set(params) <= set(main["parameters"])


# Containers: one definition, read by Bicep and by CosmosStore


def test_bicep_loads_the_container_definitions_from_containers_json(main):
    source, field = accessor(main["variables"]["containerDefinitions"]["value"])

    assert source["function"]["type"] == "load_json_content"
    assert source["function"]["parameters"]["file_path"] == "containers.json"
    assert field == "containers"


def test_bicep_deploys_each_container_exactly_as_containers_json_defines_it(main):
    containers = main["resources"]["containers"]["config"]
    loop = containers["loop_type"]["detail"]
    item = loop["item_name"]
    resource = containers["config"]["properties"]["resource"]

    assert loop["array_name"] == "containerDefinitions"
    assert containers["config"]["parent"] == "database"
    assert accessor(containers["config"]["name"]) == (item, "name")
    assert accessor(resource["id"]) == (item, "name")
    assert [accessor(p) for p in resource["partitionKey"]["paths"]] == [(item, "partitionKey")]
    union = resource["indexingPolicy"]["function"]
    assert union["type"] == "union"
    assert accessor(union["parameters"]["arg_1"]) == (item, "indexingPolicy")
    composite = union["parameters"]["arg_2"]["compositeIndexes"]["function"]
    assert composite["type"] == "map"
    assert accessor(composite["parameters"]["arg_1"]) == (item, "compositeIndexes")
    lambda_ = composite["parameters"]["arg_2"]["detail"]
    assert accessor(lambda_["expression"]) == (lambda_["var_1"], "paths")


def test_containers_json_has_the_containers_and_partition_keys_of_the_store_port():
    assert {c["name"]: c["partitionKey"] for c in CONTAINERS} == {
        name: f"/{field}" for name, field in PARTITION_KEYS.items()
    }


def test_cosmos_store_loads_the_same_definitions():
    specs = cosmos_query.load_containers()

    assert {name: spec.partition_key_field for name, spec in specs.items()} == PARTITION_KEYS
    for c in CONTAINERS:
        policy = specs[c["name"]].cosmos_indexing_policy()
        assert policy == {**c["indexingPolicy"], "compositeIndexes": [ix["paths"] for ix in c["compositeIndexes"]]}


@pytest.mark.parametrize("container", CONTAINERS, ids=lambda c: c["name"])
def test_composite_indexes_are_well_formed(container):
    for index in container["compositeIndexes"]:
        paths = index["paths"]
        assert index["query"], "say which query the index serves"
        assert len(paths) >= 2, "a composite index has at least two paths"
        assert all(p["order"] in ("ascending", "descending") for p in paths)
        assert all(p["path"].startswith("/") and not p["path"].endswith("/") for p in paths)
        # The store orders by id last: ascending, but for a query that orders by it itself
        # (a bucket read newest first ties by id descending).
        assert paths[-1]["path"] == "/id", "the store orders by id last"
        assert paths[-1]["order"] == "ascending" or "newest" in index["query"]
    assert "compositeIndexes" not in container["indexingPolicy"], "composite indexes live beside it"


def test_the_claim_query_has_its_composite_index():
    jobs = next(c for c in CONTAINERS if c["name"] == "jobs")

    assert [
        {"path": "/stage", "order": "ascending"},
        {"path": "/rankKey", "order": "descending"},
        {"path": "/createdAt", "order": "ascending"},
        {"path": "/id", "order": "ascending"},
    ] in [ix["paths"] for ix in jobs["compositeIndexes"]]


# The queries the use cases run: each served by a composite index (the SqliteStore indexes
# name them). A new SqliteStore index needs a row here, and usually a composite index.

QUEUED = Filter("stage", "=", "queued")
BLOCKED = Filter("stage", "=", "blocked")
GPU = Filter("capKey", "=", "gpu")
QUERY_SHAPES = {
    "jobs_rank": Query("jobs", "p", (QUEUED,), (("rankKey", True), ("createdAt", False))),
    "jobs_bucket": Query("jobs", "p", (QUEUED,), (("priority", False), ("attempts", False), ("createdAt", False))),
    "jobs_rank_caps": Query("jobs", "p", (QUEUED, GPU), (("rankKey", True), ("createdAt", False))),
    "jobs_bucket_caps": Query(
        "jobs", "p", (QUEUED, GPU, Filter("priority", "=", "high"), Filter("attempts", "=", 0)), (("createdAt", False),)
    ),
    "jobs_id": Query("jobs", None, (Filter("id", "=", "queue-state"),)),
    "jobs_product_created": Query("jobs", "p", (), (("createdAt", True),)),
    "jobs_product_stage_created": Query("jobs", "p", (Filter("stage", "=", "review"),), (("createdAt", True),)),
    "jobs_stage_created": Query("jobs", None, (Filter("stage", "=", "review"),), (("createdAt", True),)),
    "jobs_created": Query("jobs", None, (), (("createdAt", True),)),
    "jobs_stage_updated": Query(
        "jobs", None, (Filter("stage", "=", "done"), Filter("updatedAt", ">=", "2025")), (("updatedAt", False),)
    ),
    "jobs_lease_expiry": Query("jobs", None, (Filter("lease.expiresAt", "<", "2025"),), (("lease.expiresAt", False),)),
    "jobs_lease_factory": Query("jobs", None, (Filter("lease.factoryId", "=", "f1"),)),
    "jobs_parent": Query("jobs", "p", (Filter("parentId", "=", "p:1"),)),
    "jobs_rekeying": Query("jobs", None, (Filter("rekeying", "=", True),)),
    "jobs_accrual": Query("jobs", None, (Filter("accrualPending", "=", True),)),
    "jobs_retry": Query("jobs", None, (Filter("retryAt", "<=", "2026-01-01T00:00:00.000Z"),), (("retryAt", False),)),
}
NEWEST = (("createdAt", True), ("id", True))  # a bucket newest first (SqliteStore: its oldest-first index backwards)
MORE_SHAPES = {
    "one bucket's head, newest first": Query(
        "jobs", "p", (QUEUED, Filter("priority", "=", "high"), Filter("attempts", "=", 0)), NEWEST
    ),
    "one bucket's head of one capability set, newest first": Query(
        "jobs", "p", (QUEUED, GPU, Filter("priority", "=", "high"), Filter("attempts", "=", 0)), NEWEST
    ),
    "bucket heads, newest first": Query(
        "jobs", "p", (QUEUED,), (("priority", False), ("attempts", False), ("createdAt", True), ("id", True))
    ),
    "one bucket's head": Query(
        "jobs", "p", (QUEUED, Filter("priority", "=", "high"), Filter("attempts", "=", 0)), (("createdAt", False),)
    ),
    "one stage, oldest change first": Query("jobs", None, (BLOCKED,), (("updatedAt", False),)),
    "a finished dep's blocked dependents": Query(
        "jobs", "p", (BLOCKED, Filter("deps", "contains", "k1")), (("createdAt", True),), limit=200
    ),
    "held leases": Query("jobs", None, (Filter("lease.factoryId", "!=", None),), (("lease.factoryId", False),)),
    "jobs listed, any stage": Query("jobs", None, (Filter("createdAt", "!=", None),), (("createdAt", True),)),
    "children, oldest first": Query("jobs", "p", (Filter("parentId", "=", "p:1"),), (("createdAt", False),)),
    "factories": Query("factories"),
    "budgets": Query("budgets"),
}
ALL_SHAPES = {**QUERY_SHAPES, **MORE_SHAPES}


def test_every_sqlite_index_has_a_query_shape_here():
    assert {name for name, _, _ in INDEXES} == set(QUERY_SHAPES)


@pytest.mark.parametrize("query", ALL_SHAPES.values(), ids=ALL_SHAPES)
def test_every_query_shape_is_served_by_an_index(query):
    spec = cosmos_query.load_containers()[query.container]
    equal = {f.field for f in query.where if f.op == "=" and f.value is not None}

    order = cosmos_query.index_order(spec, query)  # raises when no composite index serves it

    head = {f for f, _ in order[: len(order) - len(cosmos_query.page_order(query))]}
    assert len(order) == 1 or order in spec.composite_indexes
    assert head <= equal
    # An equality filter must lead the index order, or the service scans the whole order
    # (except one on `id`, the order's own key: the range index finds it).
    assert head or not equal - {"id"}, f"add a composite index led by one of {sorted(equal)}"


def container(name: str) -> dict[str, Any]:
    return next(c for c in CONTAINERS if c["name"] == name)


def excluded(policy: dict[str, Any], path: str) -> bool:
    """Whether `policy` leaves the value at `path` (`/lease/factoryId/?`, `/deps/[]/?`) out of
    the range index. As Cosmos applies a policy, the most precise rule that covers the path
    wins: a `…/?` covers that value, a `…/*` everything under it, and the longer the rule the
    more precise (an exact `…/?` over a `…/*` of the same length)."""
    segments = path.strip("/").split("/")
    best: tuple[int, int, bool] | None = None  # (length, exact, excluded)
    for rules, excluding in ((policy["includedPaths"], False), (policy["excludedPaths"], True)):
        for rule in rules:
            pattern = rule["path"].strip("/").split("/")
            if pattern == [""] or pattern == ["*"]:
                pattern = ["*"]
            covers = (pattern[-1] == "*" and segments[: len(pattern) - 1] == pattern[:-1]) or (
                pattern[-1] == "?" and segments == pattern
            )
            if covers:
                rank = (len(pattern), pattern[-1] == "?", excluding)
                best = rank if best is None or rank[:2] > best[:2] else best
    assert best is not None, f"no rule of the policy covers {path}"
    return best[2]


@pytest.mark.parametrize("query", ALL_SHAPES.values(), ids=ALL_SHAPES)
def test_every_field_a_query_shape_reads_is_indexed(query):
    policy = container(query.container)["indexingPolicy"]
    paths = [
        # `contains` is served by the index on the array's elements.
        cosmos_query.field_path(f.field) + ("/[]/?" if f.op == "contains" else "/?")
        for f in query.where
    ] + [cosmos_query.field_path(field) + "/?" for field, _ in query.order_by]

    assert [p for p in paths if excluded(policy, p)] == []


def test_deps_are_indexed_for_contains():
    assert not excluded(container("jobs")["indexingPolicy"], "/deps/[]/?")


def test_budget_reservations_and_accruals_are_not_indexed():
    # Budgets are only listed whole, never filtered, and every claim and accrual writes one:
    # indexing more than the partition key only costs RUs (a reservation is a field of its own).
    policy = container("budgets")["indexingPolicy"]

    assert excluded(policy, "/accruals/[]/?")
    assert excluded(policy, "/ledger/2026-12-08/?")
    assert excluded(policy, "/r_0123abcd/amountUsd/?")
    assert excluded(policy, "/spentUsd/?")
    assert not excluded(policy, "/productId/?")


# The rest of the deployment


def test_the_function_app_runs_python_3_11_on_flex_consumption_with_its_own_identity(main):
    plan = main["resources"]["plan"]["config"]
    app = main["resources"]["functionApp"]["config"]

    assert plan["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    assert app["identity"] == {"type": "SystemAssigned"}
    assert app["properties"]["functionAppConfig"]["runtime"] == {"name": "python", "version": "3.11"}
    assert app["properties"]["functionAppConfig"]["deployment"]["storage"]["authentication"] == {
        "type": "SystemAssignedIdentity"
    }


def test_the_app_settings_select_cosmos_by_identity(main):
    settings = app_settings(main)

    assert settings["FLEET_STORE"] == "cosmos"
    assert accessor(settings["COSMOS_ENDPOINT"])[0] == "cosmos"
    assert settings["COSMOS_DATABASE"] == "databaseName"
    assert accessor(settings["AzureWebJobsStorage__accountName"]) == ("storage", "name")
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" in settings
    assert not {"COSMOS_KEY", "AzureWebJobsStorage", "FUNCTIONS_WORKER_RUNTIME"} & set(settings)


@pytest.mark.parametrize("flag, param", [("FLEET_PREEMPTION", "preemption"), ("FLEET_BUDGETS", "budgets")])
def test_feature_flags_are_parameters_that_default_off(main, flag, param):
    assert main["parameters"][param]["type"] == "bool"
    assert main["parameters"][param]["default"] is False
    assert flag in app_settings(main)


def test_cosmos_is_serverless_with_local_auth_disabled(main):
    cosmos = main["resources"]["cosmos"]["config"]["properties"]

    assert cosmos["disableLocalAuth"] is True
    assert {"name": "EnableServerless"} in cosmos["capabilities"]


def test_the_app_gets_cosmos_data_contributor_and_storage_blob_data_owner(main):
    variables = {name: v["value"] for name, v in main["variables"].items()}
    cosmos_role = main["resources"]["cosmosDataContributor"]
    storage_role = main["resources"]["storageBlobDataOwner"]

    assert cosmos_role["type"] == "Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments"
    assert variables["cosmosDataContributorRoleId"] == COSMOS_DATA_CONTRIBUTOR
    assert "cosmosDataContributorRoleId" in cosmos_role["config"]["properties"]["roleDefinitionId"]
    assert accessor(cosmos_role["config"]["properties"]["principalId"])[0] == "functionApp"
    assert storage_role["type"] == "Microsoft.Authorization/roleAssignments"
    assert variables["storageBlobDataOwnerRoleId"] == STORAGE_BLOB_DATA_OWNER
    assert storage_role["config"]["scope"] == "storage"


# local.settings.sample.json


def test_the_local_settings_sample_runs_func_start_against_azurite_and_the_emulator():
    values = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]

    assert values["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert values["FLEET_STORE"] in ("cosmos", "sqlite")
    assert values["COSMOS_ENDPOINT"] == "https://localhost:8081"
    assert values["COSMOS_KEY"] == EMULATOR_KEY
    assert values["COSMOS_VERIFY_TLS"] == "false" and values["COSMOS_CREATE"] == "1"
    assert values["FLEET_PREEMPTION"] == values["FLEET_BUDGETS"] == "false"


def test_auth_is_tokens_unless_an_entra_app_registration_turns_on_easy_auth(main):
    setting = app_settings(main)["FLEET_AUTH"]
    assert "easyAuth" in str(setting) and "easyauth" in str(setting) and "tokens" in str(setting)
    assert main["parameters"]["entraClientId"]["default"] == ""
    auth = main["resources"]["easyAuthSettings"]["config"]
    assert auth["condition"] == "easyAuth"
    properties = auth["config"]["properties"]
    assert properties["globalValidation"]["unauthenticatedClientAction"] == "AllowAnonymous"
    assert properties["identityProviders"]["azureActiveDirectory"]["enabled"] is True
