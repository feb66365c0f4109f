"""What the dashboard's activity counts cost a job, against how many products the fleet serves.

    .venv/bin/python bench/activity_products.py [--products 1,10,100] [--jobs 20] [--no-cosmos]

A submit and a finish each bump the fleet's activity version, and a finish also counts what
the job's product finished and spent today (`fleet.activity`). Where those counts live decides
what every bump costs: a store's write charge follows the size of the document it writes.
Here, on both stores (Cosmos: the local Cosmos-compatible server started here, or the account
`COSMOS_ENDPOINT` names), with `--products` products that have each submitted, shipped and
spent today (seeded through the use cases, unmeasured), per call:

- a submit and a claim + release shipped of a product's job (the issue-12 workload's job:
  4 KB `bodyMd`, two capabilities, `repo`, `baseBranch`);
- the dashboard's version read (what an unchanged view costs: `activity.version`);
- the overview's days (`activity.days`: the chart and the finished counts, fleet-wide);

in store calls, bytes exchanged with the store (Cosmos: request and response bodies as Azure
answers; SQLite: the port JSON, a proxy) and estimated request units (`store_meters.RU_MODEL`).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet import activity, claims, leases, schemas, submit  # noqa: E402

import store_traffic  # noqa: E402  (beside this file)
from store_traffic import Cost, Rig, kb  # noqa: E402


def product(n: int) -> str:
    return f"product-{n:03d}"


def spec(product_id: str, key: str) -> schemas.JobSpec:
    return store_traffic.spec(key).model_copy(update={"product_id": product_id})


def ship(rig: Rig, product_id: str, key: str, cost: float = 0.25) -> None:
    """Submit a job of `product_id`, claim it and release it shipped, reporting `cost` USD."""
    submit.submit(rig.ctx, spec(product_id, key))
    job = claims.claim_next(rig.ctx, claims.ClaimRequest(f"f-{key}", product_id, capabilities=store_traffic.CAPABILITIES)).job
    assert job is not None and job.product_id == product_id, job
    leases.release(rig.ctx, job.id, schemas.ReleaseBody(
        lease_id=job.lease.lease_id, stage="shipped", insights={"costUsd": cost},
    ))


def measured(rig: Rig, products: int, jobs: int) -> dict[str, Cost]:
    for n in range(products):  # every product has shipped and spent today
        ship(rig, product(n), "seed")
    target = product(products // 2)
    rows = {"submit": rig.measure(lambda n: submit.submit(rig.ctx, spec(target, f"s{n}")), jobs)}
    queued = [f"s{n}" for n in range(jobs)]

    def finish(n: int) -> None:
        job = claims.claim_next(rig.ctx, claims.ClaimRequest(f"w{n}", target, capabilities=store_traffic.CAPABILITIES)).job
        assert job is not None and job.idempotency_key in queued, job
        leases.release(rig.ctx, job.id, schemas.ReleaseBody(lease_id=job.lease.lease_id, stage="shipped",
                                                            insights={"costUsd": 0.5}))

    rows["claim + release shipped"] = rig.measure(finish, jobs)
    rows["dashboard version read"] = rig.measure(lambda n: activity.version(rig.ctx), jobs)
    days: list[activity.Day] = []
    rows["overview's days (14)"] = rig.measure(lambda n: days.append(activity.days(rig.ctx)[-1]), 3)
    today = days[-1]
    assert today.shipped == products + jobs, (today.shipped, products, jobs)
    assert abs(today.spent_usd - (products * 0.25 + jobs * 0.5)) < 1e-6, today.spent_usd
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", default="1,10,100")
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--no-cosmos", action="store_true")
    args = parser.parse_args()
    counts = [int(p) for p in args.products.split(",") if p]
    results: dict[tuple[str, int], dict[str, Cost]] = {}
    with store_traffic.fresh_rigs(cosmos=not args.no_cosmos) as stores:
        for name, opener in stores():
            for p in counts:
                with opener() as rig:
                    results[(name, p)] = measured(rig, p, args.jobs)
                print(f"{name}, {p} products: done", flush=True)
    print(f"\nmachine: {platform.machine()}, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"per call, {args.jobs} of each (the days: 3), products that each shipped a job today; "
          "calls / bytes (Cosmos: as Azure answers) / estimated RU")
    calls = list(next(iter(results.values())))
    print("| call | " + " | ".join(f"{name}, {p} products" for name, p in results) + " |")
    print("|---|" + "---|" * len(results))
    for call in calls:
        cells = [results[key][call] for key in results]
        print(f"| {call} | " + " | ".join(f"{c.calls:.1f} / {kb(c.wire_bytes)} / {c.ru:.0f} RU" for c in cells) + " |")


if __name__ == "__main__":
    main()
