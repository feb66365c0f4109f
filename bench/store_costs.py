"""Store operations and request charge per claim, idle poll and heartbeat, for each store.

    .venv/bin/python bench/store_costs.py [--jobs 300] [--claims 50]

Runs the use cases in-process over SQLite and over Cosmos: the local Cosmos-compatible server
(started here; it charges a flat 1 RU per call, so its RU column counts calls), or the real
account named by `COSMOS_ENDPOINT` (+ `COSMOS_KEY`, or your Azure credentials), whose charges
are the ones to plan capacity with.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet import claims, factories, queue_state, schemas, submit, testing  # noqa: E402
from fleet.clock import FixedClock  # noqa: E402
from fleet.context import Settings  # noqa: E402
from shared.stores import charge, local_cosmos  # noqa: E402
from shared.stores.cosmos_store import CosmosStore  # noqa: E402
from shared.stores.sqlite_store import SqliteStore  # noqa: E402

PRODUCT = "costs"


def measure(store, jobs: int, claims_n: int) -> dict[str, tuple[float, float, float]]:
    """{what: (store ops, RU, ms)} averaged per call."""
    world = testing.World(store, FixedClock("2026-06-01T12:00:00.000Z"), Settings())
    counting, clock, ctx = world.store, world.clock, world.ctx  # `counting` counts calls per primitive
    for n in range(jobs):
        submit.submit(ctx, schemas.JobSpec(product_id=PRODUCT, idempotency_key=f"j{n}", priority=["low", "normal", "high"][n % 3]))
        clock.advance(1)

    def per_call(action, times: int) -> tuple[float, float, float]:
        counting.reset()
        with charge.metered() as meter:
            began = time.perf_counter()
            for n in range(times):
                action(n)
            elapsed = (time.perf_counter() - began) * 1000
        return counting.total() / times, meter.total / times, elapsed / times

    leases: list[tuple[str, str]] = []

    def claim(n: int) -> None:
        claimed = claims.claim_next(ctx, claims.ClaimRequest(f"f{n % 4}", PRODUCT, capabilities=[]))
        leases.append((claimed.job.id, claimed.job.lease.lease_id))

    results = {"submit (queued, no deps)": per_call(
        lambda n: submit.submit(ctx, schemas.JobSpec(product_id=PRODUCT, idempotency_key=f"extra{n}")), 10)}
    results["claim"] = per_call(claim, claims_n)
    results["idle poll (queue-state)"] = per_call(lambda n: queue_state.read(ctx, PRODUCT), 20)
    results["heartbeat, no leases"] = per_call(lambda n: factories.heartbeat(ctx, "idle", [PRODUCT], [], 4, []), 10)
    held = leases[0::4][:4]  # claims rotate over f0..f3: these four are f0's
    results["heartbeat, 4 leases"] = per_call(lambda n: factories.heartbeat(ctx, "f0", [PRODUCT], [], 4, held), 10)
    return results


@contextlib.contextmanager
def cosmos_store():
    account = local_cosmos.account_from_env()
    if account is not None:
        yield "Cosmos (COSMOS_ENDPOINT)", CosmosStore(account.endpoint, key=account.key, database="fleet")
        return
    with local_cosmos.running_cosmos_server() as server:
        store = CosmosStore(server.endpoint, key=server.key, database=f"bench-{uuid.uuid4().hex[:8]}",
                            verify_tls=False, create=True)
        yield "Cosmos (local server, flat 1 RU/call)", store
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--claims", type=int, default=50)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = SqliteStore(os.path.join(tmp, "costs.db"))
        rows.append(("SQLite", measure(sqlite, args.jobs, args.claims)))
        sqlite.close()
    with cosmos_store() as (name, store):
        rows.append((name, measure(store, args.jobs, args.claims)))
    print(f"{args.jobs} queued jobs, {args.claims} claims; per call: store operations / request units / ms")
    print("| call | " + " | ".join(name for name, _ in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for what in rows[0][1]:
        cells = [f"{r[what][0]:.1f} ops / {r[what][1]:.1f} RU / {r[what][2]:.1f} ms" for _, r in rows]
        print(f"| {what} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
