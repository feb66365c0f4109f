"""Claim latency against queue depth, and store operations per claim, idle poll and heartbeat.

    .venv/bin/python bench/claim_depth.py [--depths 1000,10000,100000] [--claims 200] [--http-claims 100]
        [--mix-depths 1000,10000,50000] [--mix-claims 20] [--mix-only]

For each depth, a fresh SQLite store is seeded with that many queued jobs of one product,
then claims are timed in-process (the use case over the store) and over HTTP (a `fleet serve`
subprocess on the same database). Operations are counted with `CountingStore`. The goal the
issue sets: claim p50 at 100k queued within 1.5x of the p50 at 1k; an idle poll is one read.

The capability mix: for each of `--mix-depths`, N queued jobs needing `gpu` and one (the
youngest, so the last in rank order) needing nothing. A factory with `gpu` claims (an ordinary
claim); a factory without it claims the one job it can do (given back after each timed claim),
then claims again with nothing left for it. Time and store calls of both are printed as ratios
to the ordinary claim's; the goal is at most 2x at any depth.
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
from fleet.clock import FixedClock, truncated  # noqa: E402
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
        created = truncated(start + timedelta(seconds=n * 170_000 / depth))
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
    queue_state.register(ctx, PRODUCT, ["python", ""])  # the sets, as the submits' bumps would have
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


def seed_mix(world: testing.World, depth: int) -> None:
    """`depth` queued jobs needing `gpu` (mixed priorities and ages) and one, the youngest,
    needing nothing; their sets registered as the bumps of their submits would have."""
    weights = scoring.DEFAULTS
    now = world.clock.now()
    start = now - timedelta(days=2)
    for n in range(depth + 1):
        plain = n == depth
        created = now - timedelta(seconds=1) if plain else truncated(start + timedelta(seconds=n * 170_000 / depth))
        priority = Priority.LOW if plain else PRIORITIES[n % 4]
        job = Job(
            id=job_id(PRODUCT, f"mix-{n}"),
            product_id=PRODUCT,
            idempotency_key=f"mix-{n}",
            priority=priority,
            capabilities=[] if plain else ["gpu"],
            rank_key=scoring.rank_key(priority.order, 0, created, weights),
            created_at=created,
            updated_at=created,
        )
        world.store.create("jobs", job.to_doc())
    queue_state.register(world.ctx, PRODUCT, ["gpu", ""])


def timed_claim(world: testing.World, capabilities: list[str], put_back: dict | None = None) -> tuple[float, int, bool]:
    """One claim by a factory offering `capabilities`: ms, store calls, whether it took a job.
    `put_back`: the document of the job it takes, written back as it was afterwards (untimed,
    uncounted), so that every claim meets the same queue."""
    world.store.reset()
    began = time.perf_counter()
    claimed = claims.claim_next(world.ctx, claims.ClaimRequest("mix", PRODUCT, capabilities=capabilities))
    elapsed = (time.perf_counter() - began) * 1000
    calls = world.store.total()
    if claimed.job is not None and put_back is not None:
        world.store.replace("jobs", put_back, claimed.job.etag)
    return elapsed, calls, claimed.job is not None


def p50(samples: list[tuple[float, int, bool]]) -> tuple[float, float]:
    """The median ms and the mean store calls of `samples`."""
    return statistics.median(s[0] for s in samples), sum(s[1] for s in samples) / len(samples)


def capability_mix(tmp: str, depths: list[int], n: int) -> None:
    rows = []
    for depth in depths:
        clock = FixedClock("2026-06-01T12:00:00.000Z")
        world = testing.World(SqliteStore(os.path.join(tmp, f"mix-{depth}.db")), clock, Settings())
        seed_mix(world, depth)
        timed_claim(world, ["gpu"])  # warm up the caches
        plain = world.store.read("jobs", PRODUCT, job_id(PRODUCT, f"mix-{depth}"))
        ordinary, lacking = [], []
        for _ in range(n):  # interleaved, so that both meet the machine alike
            ordinary.append(timed_claim(world, ["gpu"]))
            lacking.append(timed_claim(world, [], put_back=plain))
        assert all(s[2] for s in ordinary + lacking), "each claim must take a job"
        timed_claim(world, [])  # the one job it can do, taken for good
        nothing = [timed_claim(world, []) for _ in range(n)]
        assert not any(s[2] for s in nothing)
        world.store.close()
        rows.append((depth, p50(ordinary), p50(lacking), p50(nothing)))
        print(f"mix depth {depth:>7}: ordinary {rows[-1][1]}, lacking {rows[-1][2]}, nothing {rows[-1][3]}", flush=True)
    print()
    print(f"capability mix, {n} claims each (p50 ms, store calls per claim; ratio to the ordinary claim):")
    print("| queued | ordinary claim | 99.9 % lacking | ratio (time, calls) | nothing for you | ratio (time, calls) |")
    print("|---|---|---|---|---|---|")
    for depth, ordinary, lacking, nothing in rows:
        print(
            f"| {depth:,} | {ordinary[0]:.2f} ms, {ordinary[1]:.1f} | {lacking[0]:.2f} ms, {lacking[1]:.1f} | "
            f"{lacking[0] / ordinary[0]:.2f}x, {lacking[1] / ordinary[1]:.2f}x | {nothing[0]:.2f} ms, {nothing[1]:.1f} | "
            f"{nothing[0] / ordinary[0]:.2f}x, {nothing[1] / ordinary[1]:.2f}x |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="1000,10000,100000")
    parser.add_argument("--claims", type=int, default=200)
    parser.add_argument("--http-claims", type=int, default=100)
    parser.add_argument("--mix-depths", default="1000,10000,50000")
    parser.add_argument("--mix-claims", type=int, default=20)
    parser.add_argument("--mix-only", action="store_true", help="only the capability mix")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.mix_only:
            depth_table(tmp, [int(d) for d in args.depths.split(",")], args.claims, args.http_claims)
            print()
        capability_mix(tmp, [int(d) for d in args.mix_depths.split(",")], args.mix_claims)


def depth_table(tmp: str, depths: list[int], claims_n: int, http_claims: int) -> None:
    results = {}
    for depth in depths:
        db = os.path.join(tmp, f"depth-{depth}.db")
        clock = FixedClock("2026-06-01T12:00:00.000Z")
        began = time.perf_counter()
        seed(SqliteStore(db), depth + claims_n + http_claims, clock)
        seeded = time.perf_counter() - began
        results[depth] = {"in_process": in_process(db, claims_n, clock), "http": over_http(db, http_claims)}
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
