"""The whole job lifecycle in-process, against huey's `SqliteHuey` on the same machine, same run.

    .venv/bin/python bench/peer_huey.py [--rounds 5] [--jobs 1000] [--body-kb 4]

Each round runs both, alternating which goes first, each on a fresh temp-file SQLite database:

- the project: `jobs` submits (the use case over `SqliteStore`), then one worker that claims the
  best job and releases it shipped until a claim finds nothing;
- huey: `jobs` enqueues of a task, then one worker that dequeues and executes each (the task
  returns a small result, which huey stores, as a release stores its outcome); as it comes
  (SQLite's default `synchronous=FULL`: an fsync per commit), and at the durability
  `SqliteStore` runs with (`synchronous=NORMAL` in WAL mode: no fsync per commit), like for like.

Both carry the same job: a `bodyMd` of `--body-kb` KB, two capabilities, `repo` and `baseBranch`
(huey as the task's argument). Reports jobs/s (enqueue to last execute) per round and the median
over rounds of each, and of the per-round ratios project / huey, with the CPU time of this
process per job (what a loaded machine's wall clock blurs) and the bytes it wrote per job
(`wchar` of `/proc/self/io`, Linux only: WAL frames, checkpoints, huey's journal; what the disk
must take). The order rotates each round.
huey is a bench-only dependency (`pip install -e '.[bench]'`).
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from huey import SqliteHuey

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet import claims, leases, schemas, submit  # noqa: E402
from fleet.clock import SystemClock  # noqa: E402
from fleet.context import Context, Settings  # noqa: E402
from shared.stores.sqlite_store import SqliteStore  # noqa: E402

PRODUCT = "peer"
CAPABILITIES = ["docker", "python"]


def payload(n: int, body: str) -> dict:
    return {"idempotency_key": f"job-{n}", "body_md": body, "capabilities": CAPABILITIES,
            "repo": "acme/widgets", "base_branch": "main"}


def project(db: str, jobs: int, body: str) -> tuple[float, float]:
    """Seconds to submit `jobs`, and to claim and ship them all with one worker."""
    store = SqliteStore(db)
    ctx = Context(store, SystemClock(), Settings())
    try:
        began = time.perf_counter()
        for n in range(jobs):
            submit.submit(ctx, schemas.JobSpec(product_id=PRODUCT, **payload(n, body)))
        submitted = time.perf_counter()
        shipped = 0
        request = claims.ClaimRequest("worker", PRODUCT, capabilities=CAPABILITIES)
        while (job := claims.claim_next(ctx, request).job) is not None:
            leases.release(ctx, job.id, schemas.ReleaseBody(lease_id=job.lease.lease_id, stage="shipped"))
            shipped += 1
        done = time.perf_counter()
    finally:
        store.close()
    assert shipped == jobs, shipped
    return submitted - began, done - submitted


def huey(db: str, jobs: int, body: str, synchronous: str | None = None) -> tuple[float, float]:
    """Seconds to enqueue `jobs` tasks, and to dequeue and execute them all with one worker;
    `synchronous`: the SQLite pragma, set on huey's one connection (None: huey's default)."""
    queue = SqliteHuey(filename=db)
    if synchronous is not None:
        queue.storage.conn.execute(f"PRAGMA synchronous = {synchronous}")

    @queue.task()
    def ship(job: dict) -> dict:
        return {"shipped": job["idempotency_key"]}

    began = time.perf_counter()
    results = [ship(payload(n, body)) for n in range(jobs)]
    enqueued = time.perf_counter()
    executed = 0
    while (task := queue.dequeue()) is not None:
        queue.execute(task)
        executed += 1
    done = time.perf_counter()
    assert executed == jobs and results[-1].get() == {"shipped": f"job-{jobs - 1}"}, executed
    queue.storage.close()
    return enqueued - began, done - enqueued


RUNNERS = {
    "project": project,
    "huey": huey,
    "huey, synchronous=NORMAL": functools.partial(huey, synchronous="NORMAL"),
}
PEERS = [name for name in RUNNERS if name != "project"]


def written() -> int | None:
    """The bytes this process has written so far (`write` and `pwrite` calls), None off Linux."""
    try:
        with open("/proc/self/io") as io:
            return next(int(line.split()[1]) for line in io if line.startswith("wchar:"))
    except (OSError, StopIteration):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--body-kb", type=float, default=4)
    args = parser.parse_args()
    body = ("Fix the flaky retry test and add a regression case.\n" * 2000)[: int(args.body_kb * 1024)]
    rates: dict[str, list[float]] = {name: [] for name in RUNNERS}
    phases: dict[str, list[tuple[float, float]]] = {name: [] for name in RUNNERS}
    cpu: dict[str, list[float]] = {name: [] for name in RUNNERS}
    wrote: dict[str, list[float]] = {name: [] for name in RUNNERS}
    with tempfile.TemporaryDirectory() as tmp:
        for i, run in enumerate(RUNNERS.values()):  # warm-up: imports, first connections
            run(os.path.join(tmp, f"warm-{i}.db"), 50, body)
        for r in range(args.rounds):
            names = list(RUNNERS)
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                began, bytes_before = time.process_time(), written()
                enqueue, drain = RUNNERS[name](os.path.join(tmp, f"round-{r}-{names.index(name)}.db"), args.jobs, body)
                cpu[name].append((time.process_time() - began) * 1000 / args.jobs)
                if bytes_before is not None:
                    wrote[name].append((written() - bytes_before) / 1024 / args.jobs)
                rates[name].append(args.jobs / (enqueue + drain))
                phases[name].append((enqueue, drain))
            print(f"round {r + 1}: " + ", ".join(f"{name} {rates[name][-1]:,.0f} jobs/s" for name in order), flush=True)
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"SQLite {__import__('sqlite3').sqlite_version}, huey {__import__('huey').__version__}, "
          f"{time.strftime('%Y-%m-%d', time.gmtime())}")
    print(f"{args.rounds} rounds × {args.jobs:,} jobs ({args.body_kb:g} KB bodyMd), one worker, temp-file SQLite; medians:")
    print("| system | jobs/s (enqueue → last execute) | enqueue jobs/s | dequeue + execute jobs/s | CPU ms per job "
          "| KB written per job |")
    print("|---|---|---|---|---|---|")
    for name in RUNNERS:
        enqueue = statistics.median(args.jobs / e for e, _ in phases[name])
        drain = statistics.median(args.jobs / d for _, d in phases[name])
        print(f"| {name} | {statistics.median(rates[name]):,.0f} | {enqueue:,.0f} | {drain:,.0f} | "
              f"{statistics.median(cpu[name]):.2f} | {statistics.median(wrote[name]) if wrote[name] else float('nan'):,.0f} |")
    print()
    for peer in PEERS:
        ratios = [p / h for p, h in zip(rates["project"], rates[peer])]
        print(f"project / {peer}: {statistics.median(ratios):.2f} (median of the per-round ratios; "
              f"range {min(ratios):.2f}–{max(ratios):.2f})")


if __name__ == "__main__":
    main()
