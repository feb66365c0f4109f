"""Factories racing for one budgeted product's jobs: what each job costs the budget document.

    .venv/bin/python bench/budget_contention.py [--factories 1,4,8] [--jobs 120] [--held 0,100]
        [--no-cosmos]

A product with a budget (a high ceiling, a default estimate of 1 USD, so every claim reserves)
and `--jobs` queued jobs; `F` factories, each a thread with its own context, claim the best
job, release it shipped at 0.5 USD and claim again until the queue is empty. Every claim's
reservation and every release's accrual writes the product's one budget document, so factories
racing for the same head job race on that document too. `--held N`: N more runs of the product
are in flight throughout (claimed first, by other factories, never released), so the document
holds N reservations, as a busy product's does.

Per shipped job: the store calls on the budget document (by kind) and in all, the bytes
exchanged with it (Cosmos: request and response bodies at the SDK's transport, retries
included; SQLite: the JSON of the documents handed to and returned by the store port), and the
claims that failed for a busy store (`store_busy`, `too_many_retries`: a 503 over HTTP). At the
end, once the accruals that ran out of attempts are finished as the sweep finishes them (counted
as "left to the sweep"), the budget must agree with the runs (spend = shipped x 0.5, nothing
reserved but the held runs' estimates): the bench
says so, and exits 1 if not.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet import budgets, claims, errors, leases, schemas, spend, submit  # noqa: E402
from fleet.budget_rules import Window  # noqa: E402
from fleet.clock import SystemClock  # noqa: E402
from fleet.context import Context, Settings  # noqa: E402
from fleet.store import CountingStore, clean  # noqa: E402
from shared.stores import local_cosmos  # noqa: E402
from shared.stores.cosmos_store import CosmosStore  # noqa: E402
from shared.stores.sqlite_store import SqliteStore  # noqa: E402

import store_meters  # noqa: E402  (beside this file)

PRODUCT = "contended"
COST = 0.5
KB = store_meters.KB


class ByContainer(CountingStore):
    """Counts calls per primitive and container, and (SQLite) the port JSON of budget calls."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.lock = threading.Lock()
        self.budget_bytes = 0

    def _sized(self, container: str, *docs) -> None:
        if container == "budgets":
            with self.lock:
                self.budget_bytes += sum(store_meters.json_size(clean(d)) for d in docs if isinstance(d, dict))

    def read(self, container, partition_key, id):
        doc = super().read(container, partition_key, id)
        self._sized(container, doc)
        return doc

    def replace(self, container, doc, etag):
        written = super().replace(container, doc, etag)
        self._sized(container, doc, written)
        return written

    def patch(self, container, partition_key, id, ops, etag, answer=False):
        if container == "budgets":
            with self.lock:
                self.budget_bytes += store_meters.json_size([{"op": o.kind, "path": o.field, "value": o.value} for o in ops])
        return super().patch(container, partition_key, id, ops, etag, answer)

    def create(self, container, doc):
        written = super().create(container, doc)
        self._sized(container, doc, written)
        return written


class BudgetWire(store_meters.WireMeter):
    """The SDK's transport, also summing the body bytes of requests to the budgets container."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.budget_bytes = 0

    def send(self, request, **kwargs):
        response = super().send(request, **kwargs)
        if "/colls/budgets/" in urlsplit(request.url).path + "/":
            self.budget_bytes += self.log[-1].sent + self.log[-1].received
        return response


@dataclass
class Outcome:
    shipped: int
    seconds: float
    budget_calls: Counter
    all_calls: int
    budget_bytes: int
    busy: int
    agrees: bool
    #: Accruals left to the sweep (out of attempts), finished before the budget is compared.
    swept: int


def race(store_factory, factories: int, jobs: int, held: int = 0) -> Outcome:
    with store_factory() as (store, wire):
        counting = ByContainer(store)
        ctx = Context(counting, SystemClock(), Settings(lease_seconds=300, budgets=True))
        budgets.put(ctx, PRODUCT, 1e6, Window.MONTHLY, default_estimate_usd=1.0)
        for n in range(held):
            submit.submit(ctx, schemas.JobSpec(product_id=PRODUCT, idempotency_key=f"held{n}", body_md="x" * 200))
            assert claims.claim_next(ctx, claims.ClaimRequest(f"holder{n}", PRODUCT, [], None, 4)).job is not None
        for n in range(jobs):
            submit.submit(ctx, schemas.JobSpec(product_id=PRODUCT, idempotency_key=f"k{n}", body_md="x" * 200))
        counting.calls.clear()
        counting.budget_bytes = 0
        wire_before = wire.budget_bytes if wire else 0
        shipped, busy = Counter(), Counter()

        def factory(name: str) -> None:
            mine = Context(counting, SystemClock(), ctx.settings)
            idle = 0
            while idle < 3:
                try:
                    claimed = claims.claim_next(mine, claims.ClaimRequest(name, PRODUCT, [], None, 4))
                except (errors.StoreBusy, errors.TooManyRetries, errors.StoreUnavailable):
                    busy[name] += 1
                    continue
                if claimed.job is None:
                    idle += 1
                    time.sleep(0.01)
                    continue
                idle = 0
                body = schemas.ReleaseBody(lease_id=claimed.lease.lease_id, stage="shipped",
                                           insights=schemas.Insights(costUsd=COST))
                while True:
                    try:
                        leases.release(mine, claimed.job.id, body)
                        break
                    except (errors.StoreBusy, errors.TooManyRetries, errors.StoreUnavailable):
                        busy[name] += 1
                shipped[name] += 1

        threads = [threading.Thread(target=factory, args=(f"f{n}",)) for n in range(factories)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - started
        calls = Counter({k: v for k, v in counting.calls.items() if k.endswith(":budgets")})
        total = sum(counting.calls.values())
        moved = (wire.budget_bytes - wire_before) if wire else counting.budget_bytes
        # An accrual that ran out of attempts is left to the sweep (its job keeps
        # `accrualPending`): finish those as the sweep would, then compare.
        swept = spend.replay_pending(ctx)
        budget = budgets.find(ctx, PRODUCT)
        done = sum(shipped.values())
        agrees = abs(budget.spent_usd - done * COST) < 1e-6 and len(budget.reservations) == held and done == jobs
        return Outcome(done, seconds, calls, total, moved, sum(busy.values()), agrees, swept)


@contextlib.contextmanager
def sqlite_store(tmp: str) -> Iterator[tuple]:
    store = SqliteStore(os.path.join(tmp, f"{uuid.uuid4().hex[:8]}.db"))
    try:
        yield store, None
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factories", default="1,4,8")
    parser.add_argument("--jobs", type=int, default=120)
    parser.add_argument("--held", default="0,100", help="runs in flight throughout, per table")
    parser.add_argument("--no-cosmos", action="store_true")
    args = parser.parse_args()
    counts = [int(n) for n in args.factories.split(",")]
    print(f"# {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; {args.jobs} jobs a run")
    print("| store | factories | held | jobs/s | budget calls per job (by kind) | all store calls per job |"
          " budget KB per job | busy claims and releases | accruals left to the sweep | budget agrees |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    ok = True

    held_counts = [int(n) for n in args.held.split(",")]

    def row(store_name: str, opener, n: int, held: int) -> None:
        nonlocal ok
        out = race(opener, n, args.jobs, held)
        ok = ok and out.agrees
        per = ", ".join(f"{k.split(':')[0]} {v / max(out.shipped, 1):.1f}" for k, v in sorted(out.budget_calls.items()))
        print(f"| {store_name} | {n} | {held} | {out.shipped / out.seconds:.0f} | {per} | {out.all_calls / max(out.shipped, 1):.1f} |"
              f" {out.budget_bytes / max(out.shipped, 1) / KB:.1f} | {out.busy} | {out.swept} | {'yes' if out.agrees else 'NO'} |", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        for held in held_counts:
            for n in counts:
                row("SQLite", lambda: sqlite_store(tmp), n, held)
    if not args.no_cosmos:
        account = local_cosmos.account_from_env()
        with contextlib.ExitStack() as stack:
            if account is None:
                account = stack.enter_context(local_cosmos.running_cosmos_server())

            @contextlib.contextmanager
            def cosmos_store() -> Iterator[tuple]:
                wire = BudgetWire()
                store = CosmosStore(account.endpoint, key=account.key, database=f"contention-{uuid.uuid4().hex[:8]}",
                                    verify_tls=account.verify_tls, create=True, transport=wire)
                try:
                    yield store, wire
                finally:
                    store.close()

            for held in held_counts:
                for n in counts:
                    row("Cosmos", cosmos_store, n, held)
    if not ok:
        print("the budget does not agree with the runs", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
