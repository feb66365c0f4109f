"""What jobs waiting to retry cost the claims that pass over them, on both stores.

    .venv/bin/python bench/retry_waits.py [--depth 1000] [--waiting 0,4,100] [--no-cosmos]

A job released with `result: retry` waits, queued, until the sweep moves it back (`README.md`,
"Retries wait"). Here the worst case: `--waiting` critical jobs wait to retry, ranked above
every one of `--depth` queued jobs of the issue-12 workload (4 KB `bodyMd`, two capabilities,
`repo`, `baseBranch`), so every claim's first page meets them first. Per claim (10 of them):
store calls, bytes exchanged with the store (Cosmos: as Azure answers; SQLite: the port JSON,
a proxy), estimated request units (`store_meters.RU_MODEL`) and the median milliseconds.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet import claims, clock  # noqa: E402
from fleet.jobs import WAITING, job_id  # noqa: E402
from fleet.store import clean  # noqa: E402

import store_traffic  # noqa: E402  (beside this file)
from store_traffic import Cost, Rig, kb  # noqa: E402


def measured(rig: Rig, depth: int, waiting: int) -> Cost:
    store_traffic.seed(rig, depth)
    template = clean(rig.raw.read("jobs", store_traffic.PRODUCT, job_id(store_traffic.PRODUCT, "s-0")))
    until = clock.format(rig.clock.now() + timedelta(minutes=5))
    for n in range(waiting):  # as a retry release leaves them, ranked above the whole queue
        key = f"waiting-{n}"
        rig.raw.create("jobs", {
            **template, "id": job_id(store_traffic.PRODUCT, key), "idempotencyKey": key, "priority": "critical",
            "attempts": 1, "rankKey": template["rankKey"] + 1000, "retryAt": until, "capKey": WAITING,
        })
    def claim(n: int) -> None:
        job = claims.claim_next(rig.ctx, store_traffic.offer(f"c{n}")).job
        assert job is not None and job.retry_at is None and not job.idempotency_key.startswith("waiting-"), job

    return rig.measure(claim, 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--waiting", default="0,4,100")
    parser.add_argument("--no-cosmos", action="store_true")
    args = parser.parse_args()
    counts = [int(w) for w in args.waiting.split(",") if w]
    rows: dict[tuple[str, int], Cost] = {}
    with store_traffic.fresh_rigs(cosmos=not args.no_cosmos) as stores:
        for name, opener in stores():
            for waiting in counts:
                with opener() as rig:
                    rows[(name, waiting)] = measured(rig, args.depth, waiting)
    print(f"\nmachine: {platform.machine()}, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"a claim over {args.depth:,} queued jobs, with jobs waiting to retry ranked above them all (10 claims):")
    print("| store | jobs waiting | calls | bytes | est. RU | ms |")
    print("|---|---|---|---|---|---|")
    for (name, waiting), cost in rows.items():
        print(f"| {name} | {waiting} | {cost.calls:.1f} | {kb(cost.wire_bytes)} | {cost.ru:.1f} | {cost.ms:.1f} |")


if __name__ == "__main__":
    main()
