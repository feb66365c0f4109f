"""What a dashboard refresh costs the store: an unchanged view (304) against a full render, and
against an idle factory's poll.

    .venv/bin/python bench/dashboard_refresh.py [--jobs 900] [--stores sqlite,cosmos]

In-process, with auth on (a signed-in admin's session cookie) and budgets on: 3 products with
`--jobs` jobs between them, 10 factories, a budget per product. Each page is requested once to
get its ETag, then again with `If-None-Match`; every store call is counted by kind
(`CountingStore`). The idle poll is `GET /fleet/queue-state` with a bearer token.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import azure.functions as func  # noqa: E402

import function_app  # noqa: E402
from dashboard import routes  # noqa: E402
from fleet import budgets, factories, schemas, submit, tokens  # noqa: E402
from fleet.budget_rules import Window  # noqa: E402
from fleet.clock import SystemClock  # noqa: E402
from fleet.context import Context, Settings  # noqa: E402
from fleet.jobs import job_id  # noqa: E402
from fleet.principals import Role  # noqa: E402
from fleet.store import CountingStore  # noqa: E402
from shared import auth, config  # noqa: E402
from shared.stores import local_cosmos  # noqa: E402
from shared.stores.cosmos_store import CosmosStore  # noqa: E402
from shared.stores.sqlite_store import SqliteStore  # noqa: E402

PRODUCTS = ("alpha", "beta", "gamma")


def seed(ctx: Context, jobs: int) -> str:
    for i in range(jobs):
        product = PRODUCTS[i % len(PRODUCTS)]
        submit.submit(ctx, schemas.JobSpec(product_id=product, idempotency_key=f"job-{i}", title=f"Job {i}", body_md="x" * 2000))
    for n in range(10):
        factories.heartbeat(ctx, f"factory-{n}", list(PRODUCTS), ["python"], 4, [])
    for product in PRODUCTS:
        budgets.put(ctx, product, 500.0, Window.MONTHLY)
    return tokens.create(ctx, Role.ADMIN, name="bench").token


def request(path: str, token: str, etag: str | None = None, route_params: dict | None = None) -> func.HttpRequest:
    headers = {"cookie": f"fleet_session={token}"}
    if etag:
        headers["if-none-match"] = etag
    return func.HttpRequest("GET", "http://127.0.0.1:7071" + path, headers=headers, body=b"", route_params=route_params or {})


def measure(store: CountingStore, token: str) -> list[tuple[str, str, int, dict]]:
    pages = [
        ("overview", "/dashboard/fleet", routes.dashboard_overview, {}),
        ("jobs", "/dashboard/fleet/jobs", routes.dashboard_jobs, {}),
        ("job detail", "/dashboard/fleet/jobs/" + job_id("alpha", "job-0"), routes.dashboard_job, {"id": job_id("alpha", "job-0")}),
        ("budgets", "/dashboard/fleet/budget", routes.dashboard_budget, {}),
    ]
    rows = []
    for name, path, trigger, params in pages:
        store.reset()
        first = trigger(request(path, token, route_params=params))
        assert first.status_code == 200, (name, first.status_code)
        rows.append((name, "full render", first.status_code, dict(store.calls)))
        store.reset()
        again = trigger(request(path, token, first.headers["ETag"], params))
        rows.append((name, "refresh, unchanged", again.status_code, dict(store.calls)))
    store.reset()
    poll = func.HttpRequest(
        "GET", "http://127.0.0.1:7071/fleet/queue-state?productId=alpha", headers={"authorization": f"Bearer {token}"},
        body=b"", params={"productId": "alpha"},
    )
    answer = function_app.get_queue_state(poll)
    rows.append(("idle factory poll", "GET /fleet/queue-state", answer.status_code, dict(store.calls)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=900)
    parser.add_argument("--stores", default="sqlite,cosmos")
    args = parser.parse_args()
    config.use_auth(auth.Mode.TOKENS)
    for label, inner in _each(args.stores.split(",")):
        counting = CountingStore(inner)
        ctx = Context(counting, SystemClock(), Settings(budgets=True))
        token = seed(ctx, args.jobs)
        config.use(ctx)
        print(f"\n{label}, {args.jobs} jobs in {len(PRODUCTS)} products, 10 factories")
        print(f"{'page':<18} {'request':<24} {'status':>6} {'calls':>6}  by kind")
        for name, kind, status, calls in measure(counting, token):
            total = sum(calls.values())
            by_kind = ", ".join(f"{k} {n}" for k, n in sorted(calls.items()))
            print(f"{name:<18} {kind:<24} {status:>6} {total:>6}  {by_kind}")
        config.use(None)


def _each(names: list[str]):
    """Each store asked for, fresh and empty, in turn."""
    if "sqlite" in names:
        with tempfile.TemporaryDirectory() as folder:
            store = SqliteStore(str(Path(folder) / "bench.db"))
            yield "SQLite", store
            store.close()
    if "cosmos" in names:
        with local_cosmos.running_cosmos_server() as server:
            store = CosmosStore(
                server.endpoint, key=server.key, database=f"bench-{uuid.uuid4().hex[:8]}", verify_tls=False, create=True
            )
            yield "Cosmos (local server)", store
            store.close()


if __name__ == "__main__":
    main()
