"""Claim latency against queue depth, and store operations per claim, idle poll and heartbeat.

    .venv/bin/python bench/claim_depth.py [--depths 1000,10000,100000] [--claims 200] [--http-claims 100]

For each depth, a fresh SQLite store is seeded with that many queued jobs of one product,
then claims are timed in-process (the use case over the store) and over HTTP (a `fleet serve`
subprocess on the same database). Operations are counted with `CountingStore`. The goal the
issue sets: claim p50 at 100k queued within 1.5x of the p50 at 1k; an idle poll is one read.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet import claims, factories, queue_state, scoring, testing  # noqa: E402
from fleet.clock import FixedClock  # noqa: E402
from fleet.context import Settings  # noqa: E402
from fleet.jobs import Job, job_id  # noqa: E402
from fleet.stages import Priority  # noqa: E402
from shared.devhost.process import running_server  # noqa: E402
from shared.stores.sqlite_store import SqliteStore  # noqa: E402

PRODUCT = "bench"
PRIORITIES = list(Priority)


def seed(store: SqliteStore, depth: int, clock: FixedClock) -> None:
    """`depth` queued jobs, mixed priorities and ages, written straight to the store."""
    weights = scoring.DEFAULTS
    start = clock.now() - timedelta(days=2)
    for n in range(depth):
        created = start + timedelta(seconds=n * 170_000 / depth)
        priority = PRIORITIES[n % 4]
        job = Job(
            id=job_id(PRODUCT, f"job-{n}"),
            product_id=PRODUCT,
            idempotency_key=f"job-{n}",
            priority=priority,
            capabilities=["python"] if n % 3 == 0 else [],
            rank_key=scoring.rank_key(priority.order, 0, created, weights),
            created_at=created,
            updated_at=created,
        )
        store.create("jobs", job.to_doc())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def in_process(db: str, claims_n: int, clock: FixedClock) -> dict:
    world = testing.World(SqliteStore(db), clock, Settings())
    store, ctx = world.store, world.ctx  # store counts calls per primitive
    latencies = []
    for n in range(claims_n):
        request = claims.ClaimRequest(f"f{n % 8}", PRODUCT, capabilities=["python"] if n % 2 else [])
        began = time.perf_counter()
        claimed = claims.claim_next(ctx, request)
        latencies.append((time.perf_counter() - began) * 1000)
        assert claimed.job is not None
    ops_per_claim = store.total() / claims_n
    store.reset()
    queue_state.read(ctx, PRODUCT)
    idle_poll = dict(store.calls)
    store.reset()
    factories.heartbeat(ctx, "f0", [PRODUCT], ["python"], 4, [])
    heartbeat = dict(store.calls)
    store.close()
    return {
        "p50_ms": statistics.median(latencies),
        "p95_ms": percentile(latencies, 0.95),
        "ops_per_claim": ops_per_claim,
        "idle_poll_ops": idle_poll,
        "heartbeat_ops": heartbeat,
    }


def over_http(db: str, claims_n: int) -> dict:
    with running_server(db=db) as server:
        session = requests.Session()
        # auth is on, as deployed: the admin token `fleet serve` minted beside its database
        token = (Path(db).parent / "admin-token").read_text().strip()
        session.headers["Authorization"] = f"Bearer {token}"
        latencies = []
        for n in range(claims_n):
            began = time.perf_counter()
            response = session.post(f"{server.url}/fleet/claim", json={"factoryId": f"h{n % 8}", "productId": PRODUCT})
            latencies.append((time.perf_counter() - began) * 1000)
            assert response.status_code == 200 and response.json()["job"], response.text
        polls = []
        for _ in range(claims_n):
            began = time.perf_counter()
            session.get(f"{server.url}/fleet/queue-state", params={"productId": PRODUCT})
            polls.append((time.perf_counter() - began) * 1000)
        session.close()
    return {"p50_ms": statistics.median(latencies), "p95_ms": percentile(latencies, 0.95),
            "idle_poll_p50_ms": statistics.median(polls)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="1000,10000,100000")
    parser.add_argument("--claims", type=int, default=200)
    parser.add_argument("--http-claims", type=int, default=100)
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for depth in depths:
            db = os.path.join(tmp, f"depth-{depth}.db")
            clock = FixedClock("2026-06-01T12:00:00.000Z")
            began = time.perf_counter()
            seed(SqliteStore(db), depth + args.claims + args.http_claims, clock)
            seeded = time.perf_counter() - began
            results[depth] = {"in_process": in_process(db, args.claims, clock), "http": over_http(db, args.http_claims)}
            print(f"depth {depth:>7}: seeded in {seeded:.1f}s  " + json.dumps(results[depth]), flush=True)
    base = results[depths[0]]
    print()
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"SQLite {__import__('sqlite3').sqlite_version}")
    print("| queued | in-process p50 (ms) | p95 | ratio to first | HTTP p50 (ms) | p95 | ratio to first | store ops / claim |")
    print("|---|---|---|---|---|---|---|---|")
    for depth in depths:
        r = results[depth]
        print(
            f"| {depth:,} | {r['in_process']['p50_ms']:.2f} | {r['in_process']['p95_ms']:.2f} | "
            f"{r['in_process']['p50_ms'] / base['in_process']['p50_ms']:.2f}x | {r['http']['p50_ms']:.2f} | "
            f"{r['http']['p95_ms']:.2f} | {r['http']['p50_ms'] / base['http']['p50_ms']:.2f}x | "
            f"{r['in_process']['ops_per_claim']:.1f} |"
        )
    last = results[depths[-1]]["in_process"]
    print(f"\nidle queue-state poll: {last['idle_poll_ops']} (HTTP p50 {results[depths[-1]]['http']['idle_poll_p50_ms']:.2f} ms)")
    print(f"heartbeat with no running jobs: {last['heartbeat_ops']}")


if __name__ == "__main__":
    main()
