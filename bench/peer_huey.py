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
(huey as the task's argument).

Two more rows take the project's time apart, so that what a layout change could buy is read off
them rather than guessed:

- "project, database in memory": the same lifecycle on an in-memory SQLite database (no WAL, no
  file, no fsync): what the use cases cost with the disk taken away;
- "project's SQL alone": every statement the project ran on its store in a recorded run (this
  run's first, before the rounds), replayed in order with the same parameters on a fresh file of
  the same layout and pragmas by bare `sqlite3`, no use case or store code: the store's share.
  The project's CPU less this is its Python.
 Reports jobs/s (enqueue to last execute) per round and the median
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
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

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
    return lifecycle(SqliteStore(db), jobs, body, time.perf_counter)


def lifecycle(store: SqliteStore, jobs: int, body: str, mark: Callable[[], float]) -> tuple[float, float]:
    """Submit `jobs` on `store`, then claim and ship them all with one worker, and close it:
    `mark()` before, between and after, answered as (between - before, after - between)."""
    ctx = Context(store, SystemClock(), Settings())
    try:
        began = mark()
        for n in range(jobs):
            submit.submit(ctx, schemas.JobSpec(product_id=PRODUCT, **payload(n, body)))
        submitted = mark()
        shipped = 0
        request = claims.ClaimRequest("worker", PRODUCT, capabilities=CAPABILITIES)
        while (job := claims.claim_next(ctx, request).job) is not None:
            leases.release(ctx, job.id, schemas.ReleaseBody(lease_id=job.lease.lease_id, stage="shipped"))
            shipped += 1
        done = mark()
    finally:
        store.close()
    assert shipped == jobs, shipped
    return submitted - began, done - submitted


def in_memory(db: str, jobs: int, body: str) -> tuple[float, float]:
    """`project` on a private in-memory database named after `db`'s file."""
    return project(f"file:{Path(db).stem}?mode=memory&cache=shared", jobs, body)


class Recording(SqliteStore):
    """A `SqliteStore` whose connections note every statement they run, with its parameters,
    in `log` (a shared list: the store serves one thread here, so they run in that order)."""

    def __init__(self, path: str, log: list[tuple[str, tuple]]) -> None:
        self.log = log
        super().__init__(path)

    def _connect(self):
        return _Noting(super()._connect(), self.log)


class _Noting:
    """A connection that notes what it executes, otherwise itself."""

    def __init__(self, conn, log: list[tuple[str, tuple]]) -> None:
        self._conn, self._log = conn, log

    def execute(self, sql: str, params=()):
        self._log.append((sql, tuple(params)))
        return self._conn.execute(sql, params)

    def __getattr__(self, name: str):
        return getattr(self._conn, name)


def record(db: str, jobs: int, body: str) -> tuple[list[tuple[str, tuple]], int]:
    """The statements `project` runs for `jobs` jobs (after the store's opening), and how many
    of them are the submits'."""
    log: list[tuple[str, tuple]] = []
    store = Recording(db, log)
    log.clear()  # the schema is made: record what the use cases run from here
    submitted, _ = lifecycle(store, jobs, body, lambda: len(log))
    return log, submitted


def replay(log: list[tuple[str, tuple]], submitted: int, db: str, jobs: int, body: str) -> tuple[float, float]:
    """Seconds to run `log`'s submits' statements, then the rest, on a fresh database at `db`
    (made by opening a `SqliteStore` on it: its layout and indexes), on one connection set up as
    the store sets up its own (WAL, `synchronous=NORMAL`, autocommit), fetching every row."""
    SqliteStore(db).close()
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    try:
        began = time.perf_counter()
        for sql, params in log[:submitted]:
            conn.execute(sql, params).fetchall()
        enqueued = time.perf_counter()
        for sql, params in log[submitted:]:
            conn.execute(sql, params).fetchall()
        done = time.perf_counter()
    finally:
        conn.close()
    return enqueued - began, done - enqueued


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
    "project, database in memory": in_memory,
}
PEERS = ["huey", "huey, synchronous=NORMAL"]
#: The rows whose ratio to huey (as it comes) is printed too: where the project's time goes.
PARTS = ["project, database in memory", "project's SQL alone"]


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
        runners = dict(RUNNERS)
        log, submitted = record(os.path.join(tmp, "recorded.db"), args.jobs, body)
        runners["project's SQL alone"] = functools.partial(replay, log, submitted)
        rates.update({name: [] for name in runners})
        phases.update({name: [] for name in runners})
        cpu.update({name: [] for name in runners})
        wrote.update({name: [] for name in runners})
        warm_log, warm_submitted = record(os.path.join(tmp, "warm-recorded.db"), 50, body)
        warm = dict(RUNNERS, replay=functools.partial(replay, warm_log, warm_submitted))
        for i, run in enumerate(warm.values()):  # warm-up: imports, first connections
            run(os.path.join(tmp, f"warm-{i}.db"), 50, body)
        for r in range(args.rounds):
            names = list(runners)
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                began, bytes_before = time.process_time(), written()
                enqueue, drain = runners[name](os.path.join(tmp, f"round-{r}-{names.index(name)}.db"), args.jobs, body)
                cpu[name].append((time.process_time() - began) * 1000 / args.jobs)
                if bytes_before is not None:
                    wrote[name].append((written() - bytes_before) / 1024 / args.jobs)
                rates[name].append(args.jobs / (enqueue + drain))
                phases[name].append((enqueue, drain))
            print(f"round {r + 1}: " + ", ".join(f"{name} {rates[name][-1]:,.0f} jobs/s" for name in order), flush=True)
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}, huey {__import__('huey').__version__}, "
          f"{time.strftime('%Y-%m-%d', time.gmtime())}")
    print(f"{args.rounds} rounds × {args.jobs:,} jobs ({args.body_kb:g} KB bodyMd), one worker, temp-file SQLite; medians:")
    print("| system | jobs/s (enqueue → last execute) | enqueue jobs/s | dequeue + execute jobs/s | CPU ms per job "
          "| KB written per job |")
    print("|---|---|---|---|---|---|")
    for name in runners:
        enqueue = statistics.median(args.jobs / e for e, _ in phases[name])
        drain = statistics.median(args.jobs / d for _, d in phases[name])
        print(f"| {name} | {statistics.median(rates[name]):,.0f} | {enqueue:,.0f} | {drain:,.0f} | "
              f"{statistics.median(cpu[name]):.2f} | {statistics.median(wrote[name]) if wrote[name] else float('nan'):,.0f} |")
    print()
    for part, peer in [("project", peer) for peer in PEERS] + [(part, "huey") for part in PARTS]:
        ratios = [p / h for p, h in zip(rates[part], rates[peer])]
        print(f"{part} / {peer}: {statistics.median(ratios):.2f} (median of the per-round ratios; "
              f"range {min(ratios):.2f}–{max(ratios):.2f})")
    python = [c - s for c, s in zip(cpu["project"], cpu["project's SQL alone"])]
    print(f"project's CPU per job less its SQL's: {statistics.median(python):.2f} ms (its Python); "
          f"huey's whole job: {statistics.median(cpu['huey']):.2f} ms CPU, "
          f"{1000 / statistics.median(rates['huey']):.2f} ms wall")


if __name__ == "__main__":
    main()
