"""What a job costs the store: calls and bytes per call, on both stores, and per fleet-day.

    .venv/bin/python bench/store_traffic.py [--jobs 300] [--depths 1000,10000]
        [--cosmos-depths 1000,10000] [--starved-depths 1000,10000] [--cosmos-starved-depths 1000]

(`--depths 100000 --starved-depths '' --no-cosmos` for the claim at 100k queued on SQLite: its
seeding alone takes minutes, so `make bench` leaves it out.)

The workload of issue 12: queued jobs of one product, each with a 4 KB `bodyMd`, two
capabilities, `repo` and `baseBranch`, driven in-process through the use cases. Per call:

- store calls, counted by `fleet.store.CountingStore` at the store port;
- on Cosmos (the local Cosmos-compatible server started here, or the account `COSMOS_ENDPOINT`
  names), the request and response body bytes exchanged with the endpoint, counted by the SDK's
  transport (every HTTP attempt, retries and metadata reads included), and the request units
  those exchanges are estimated to cost (`store_meters.RU_MODEL`; the local server charges a
  flat 1 RU a call);
- on SQLite, which has no wire, the JSON bytes of the documents handed to and returned by the
  store port: a proxy for what Cosmos would move.

Then the "fleet-day" (`fleet_day`): the reference fleet's store calls and estimated request
units per day, from the measured per-call figures.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet import claims, factories, leases, queue_state, schemas, scoring, submit  # noqa: E402
from fleet.clock import FixedClock, truncated  # noqa: E402
from fleet.context import Context, Settings  # noqa: E402
from fleet.jobs import CAP_KEY, cap_key, job_id  # noqa: E402
from fleet.stages import ClaimReason, Priority  # noqa: E402
from fleet.store import clean  # noqa: E402
from shared.stores import local_cosmos  # noqa: E402
from shared.stores.cosmos_store import CosmosStore  # noqa: E402
from shared.stores.sqlite_store import SqliteStore  # noqa: E402

import store_meters  # noqa: E402  (beside this file)

PRODUCT = "traffic"
T0 = "2026-06-01T12:00:00.000Z"
#: What every job of the workload needs, and what a factory that can do them offers.
CAPABILITIES = ["docker", "python"]
#: What 99.9 % of the queue needs in the capability-starved claims; the factory lacks it.
SCARCE = "gpu"
BODY = ("Fix the flaky retry test and add a regression case.\n" * 90)[:4096]
KB = store_meters.KB


# Measuring.


@dataclass
class Cost:
    """A call's cost, averaged over the times it was measured (ms: the median)."""

    calls: float
    #: Body bytes exchanged with the store as Azure answers (no document back where the
    #: request asked for none); on SQLite, the port JSON (a proxy).
    wire_bytes: float
    requests: float
    ru: float
    ms: float
    #: The same on the local Cosmos-compatible server, which answers every write with the
    #: document (it ignores `Prefer: return=minimal`).
    local_bytes: float = 0.0


@dataclass
class Rig:
    """One store under measurement: the use-case context over a `PortMeter`, the raw store for
    seeding unmeasured, and the wire meter when it is Cosmos."""

    name: str
    raw: Any
    wire: store_meters.WireMeter | None
    clock: FixedClock = field(default_factory=lambda: FixedClock(T0))

    def __post_init__(self) -> None:
        self.port = store_meters.PortMeter(self.raw)
        self.ctx = Context(self.port, self.clock, Settings())

    def measure(self, action: Callable[[int], Any], times: int) -> Cost:
        self.port.reset()
        if self.wire:
            self.wire.log.clear()
        laps = []
        for n in range(times):
            began = time.perf_counter()
            action(n)
            laps.append((time.perf_counter() - began) * 1000)
        exchanges = self.wire.log if self.wire else self.port.exchanges()
        return Cost(
            calls=self.port.total() / times,
            wire_bytes=sum(e.billed for e in exchanges) / times,
            local_bytes=sum(e.sent + e.received for e in exchanges) / times,
            requests=len(exchanges) / times,
            ru=sum(store_meters.RU_MODEL.of(e) for e in exchanges) / times,
            ms=statistics.median(laps),
        )


def spec(key: str, priority: str = "normal", capabilities: list[str] = CAPABILITIES) -> schemas.JobSpec:
    return schemas.JobSpec(
        product_id=PRODUCT, idempotency_key=key, priority=priority, body_md=BODY,
        capabilities=capabilities, repo="acme/widgets", base_branch="main",
    )


def offer(factory: str, capabilities: list[str] = CAPABILITIES) -> claims.ClaimRequest:
    """A claim as a factory sends it: naming what it offers (so no factory document is read)."""
    return claims.ClaimRequest(factory, PRODUCT, capabilities=capabilities)


def seed(rig: Rig, n: int, capabilities: Callable[[int], list[str]] = lambda i: CAPABILITIES, tag: str = "s") -> None:
    """`n` queued jobs with mixed priorities and ages over the last two days: one submitted
    through the use case, the rest copies of its document written straight to the raw store
    (unmeasured; while a queued job is one document, a copy is what a submit would write)."""
    template = clean(submit.submit(rig.ctx, spec(f"{tag}-template", capabilities=capabilities(n - 1))).job.to_doc())
    start = rig.clock.now() - timedelta(days=2)
    priorities = list(Priority)
    for i in range(n - 1):
        created = truncated(start + timedelta(seconds=i * 170_000 / n))
        rig.raw.create("jobs", _copy(template, f"{tag}-{i}", priorities[i % 3], capabilities(i), created))


def _copy(template: dict, key: str, priority: Priority, capabilities: list[str], created) -> dict:
    at = created.strftime("%Y-%m-%dT%H:%M:%S.") + f"{created.microsecond // 1000:03d}Z"
    return {
        **template,
        "id": job_id(PRODUCT, key),
        "idempotencyKey": key,
        "priority": priority.value,
        "capabilities": sorted(capabilities),
        CAP_KEY: cap_key(capabilities),
        "rankKey": scoring.rank_key(priority.order, 0, created, scoring.DEFAULTS),
        "createdAt": at,
        "updatedAt": at,
        "events": [{**template["events"][0], "at": at}],
    }


def standard(rig: Rig, jobs: int, claims_n: int) -> dict[str, Cost]:
    """The issue's table over `jobs` queued jobs (the claims and the heartbeats' 21 leases take
    some of them)."""
    if jobs < claims_n + 32:
        raise SystemExit(f"--jobs {jobs} is too few for {claims_n} + 10 claims and 21 leases to heartbeat")
    ctx, clock = rig.ctx, rig.clock
    submit.submit(ctx, spec("warm-up"))  # the product's first submit also creates its queue-state

    def submit_one(n: int) -> None:
        submit.submit(ctx, spec(f"j{n}", ["low", "normal", "high"][n % 3]))
        clock.advance(1)

    rows = {"submit": rig.measure(submit_one, jobs - 1)}
    rows["idle poll (queue-state)"] = rig.measure(lambda n: queue_state.read(ctx, PRODUCT), 20)
    held = []
    rows["claim"] = rig.measure(lambda n: held.append(claims.claim_next(ctx, offer(f"c{n}")).job), claims_n)
    wider = [*CAPABILITIES, "gpu"]  # offering more than any queued job needs: the usual fleet host
    rows["claim, the factory offering a capability more"] = rig.measure(
        lambda n: claims.claim_next(ctx, offer(f"w{n}", wider)), 10
    )
    for n_leases in (1, 4, 16):
        factory = f"hb{n_leases}"
        mine = [claims.claim_next(ctx, offer(factory)).job for _ in range(n_leases)]
        pairs = [(j.id, j.lease.lease_id) for j in mine]
        rows[f"heartbeat renewing {n_leases} lease{'s' if n_leases > 1 else ''}"] = rig.measure(
            lambda n: factories.heartbeat(ctx, factory, [PRODUCT], CAPABILITIES, 4, pairs), 5
        )

    def lifecycle(n: int) -> None:
        job = held[n]
        lease = job.lease.lease_id
        leases.patch(ctx, job.id, schemas.PatchBody(lease_id=lease, stage="building"))
        leases.patch(ctx, job.id, schemas.PatchBody(lease_id=lease, stage="testing"))
        leases.release(ctx, job.id, schemas.ReleaseBody(lease_id=lease, stage="shipped"))

    rows["PATCH building + PATCH testing + release shipped"] = rig.measure(lifecycle, min(20, claims_n))
    shipped = rig.raw.read("jobs", PRODUCT, held[0].id)
    rows["(a shipped job's document, bytes)"] = Cost(0, store_meters.json_size(clean(shipped)), 0, 0, 0)
    return rows


def at_depth(rig: Rig, depth: int, claims_n: int = 20) -> Cost:
    """An ordinary claim with `depth` jobs queued."""
    seed(rig, depth + claims_n)
    return rig.measure(lambda n: claims.claim_next(rig.ctx, offer(f"d{n}")), claims_n)


def starved(rig: Rig, depth: int, times: int = 3) -> dict[str, Cost]:
    """`depth` queued jobs needing `gpu` and, below all of them, one that needs nothing: what a
    factory without `gpu` pays to find that one, and to learn that nothing is left for it; and
    an ordinary claim (a factory with `gpu`) on the same queue."""
    seed(rig, depth + times, capabilities=lambda i: [SCARCE, *CAPABILITIES], tag="g")
    rows = {"ordinary": rig.measure(lambda n: claims.claim_next(rig.ctx, offer(f"o{n}", [SCARCE, *CAPABILITIES])), times)}
    newest = rig.clock.now()

    def easy(n: int) -> None:
        # The lowest-ranked job of the queue: low priority and the newest; replaced after each
        # claim takes it, unmeasured.
        rig.raw.create("jobs", _copy(_template(rig), f"easy-{n}", Priority.LOW, [], newest))
        queue_state.bump(rig.ctx, PRODUCT, [cap_key([])])  # as the write path registers its set

    def take_easy(n: int) -> None:
        claimed = claims.claim_next(rig.ctx, offer(f"e{n}"))
        assert claimed.job is not None and claimed.job.idempotency_key == f"easy-{n}", claimed.reason

    costs = []
    for n in range(times):
        easy(n)
        costs.append(rig.measure(lambda _: take_easy(n), 1))
    rows["the one it can do"] = _median_cost(costs)

    def nothing(n: int) -> None:
        assert claims.claim_next(rig.ctx, offer(f"e{n}")).reason == ClaimReason.NO_JOB

    rows["nothing for you"] = rig.measure(nothing, times)
    return rows


def _template(rig: Rig) -> dict:
    return clean(rig.raw.read("jobs", PRODUCT, job_id(PRODUCT, "g-template")))


def _median_cost(costs: list[Cost]) -> Cost:
    return Cost(
        calls=statistics.median(c.calls for c in costs),
        wire_bytes=statistics.median(c.wire_bytes for c in costs),
        requests=statistics.median(c.requests for c in costs),
        ru=statistics.median(c.ru for c in costs),
        ms=statistics.median(c.ms for c in costs),
        local_bytes=statistics.median(c.local_bytes for c in costs),
    )


# The fleet-day.


@dataclass(frozen=True)
class Fleet:
    """The reference fleet of issue 12."""

    factories: int = 100
    seats: int = 4
    jobs_per_day: int = 10_000
    #: Every factory polls the queue-state this often, all day (an upper bound: a busy factory
    #: that claims on its own schedule polls less).
    idle_poll_seconds: float = 10.0
    #: The lease term (`Settings().lease_seconds`, `FLEET_LEASE_SECONDS`); a factory heartbeats
    #: every third of it, renewing a lease per seat (every seat busy).
    lease_seconds: int = Settings().lease_seconds

    @property
    def heartbeat_seconds(self) -> float:
        return self.lease_seconds / 3


DAY = 86_400


def fleet_day(costs: dict[str, Cost], fleet: Fleet = Fleet()) -> list[tuple[str, float, float, float, float]]:
    """`(what, per day, store calls a day, GB a day, estimated RU a day)` for `fleet`, from the
    measured per-call `costs` (the keys `standard` measures), and the total. A claim per job
    (claims that find nothing are not counted); the lifecycle's writes are PATCH building, PATCH
    testing and release shipped."""
    heartbeat = costs[f"heartbeat renewing {fleet.seats} leases"]
    volumes = [
        ("submits", fleet.jobs_per_day, costs["submit"]),
        ("idle polls", fleet.factories * DAY / fleet.idle_poll_seconds, costs["idle poll (queue-state)"]),
        ("claims", fleet.jobs_per_day, costs["claim"]),
        (f"heartbeats ({fleet.seats} leases each)", fleet.factories * DAY / fleet.heartbeat_seconds, heartbeat),
        ("lifecycle writes", fleet.jobs_per_day, costs["PATCH building + PATCH testing + release shipped"]),
    ]
    rows = [(what, n, n * c.calls, n * c.wire_bytes / 1e9, n * c.ru) for what, n, c in volumes]
    rows.append(("total", 0, *(sum(r[i] for r in rows) for i in (2, 3, 4))))
    return rows


# Stores and printing.


@contextlib.contextmanager
def sqlite_rig(tmp: str, name: str) -> Iterator[Rig]:
    store = SqliteStore(os.path.join(tmp, f"{name}.db"))
    try:
        yield Rig("SQLite", store, None)
    finally:
        store.close()


@contextlib.contextmanager
def cosmos_server() -> Iterator[Callable[[], contextlib.AbstractContextManager[Rig]]]:
    """Yields an opener of rigs on fresh databases of one Cosmos account (the local server,
    started here, unless `COSMOS_ENDPOINT` names one)."""
    account = local_cosmos.account_from_env()
    with contextlib.ExitStack() as stack:
        if account is None:
            account = stack.enter_context(local_cosmos.running_cosmos_server())

        @contextlib.contextmanager
        def open_rig() -> Iterator[Rig]:
            wire = store_meters.WireMeter()
            store = CosmosStore(account.endpoint, key=account.key, database=f"traffic-{uuid.uuid4().hex[:8]}",
                                verify_tls=account.verify_tls, create=True, transport=wire)
            try:
                yield Rig("Cosmos", store, wire)
            finally:
                store.close()

        yield open_rig


@contextlib.contextmanager
def fresh_rigs(cosmos: bool = True) -> Iterator[Callable[[], Iterator[tuple[str, Callable[[], contextlib.AbstractContextManager[Rig]]]]]]:
    """Yields a function giving, per store (SQLite, then Cosmos unless `cosmos` is False), its
    name and an opener of rigs on a fresh database of it: for benchmarks that measure one
    setting per fresh store."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        opened = stack.enter_context(cosmos_server()) if cosmos else None
        numbered = iter(range(1_000_000))

        def stores() -> Iterator[tuple[str, Callable[[], contextlib.AbstractContextManager[Rig]]]]:
            yield "SQLite", lambda: sqlite_rig(tmp, f"rig-{next(numbered)}")
            if opened is not None:
                yield "Cosmos", opened

        yield stores


def kb(n: float) -> str:
    return f"{n / KB:.1f} KB"


def print_table(title: str, rows: dict[str, dict[str, Cost]]) -> None:
    """`rows`: {call: {store name: cost}}."""
    print(f"\n{title}")
    print("| call | SQLite calls | SQLite port JSON (proxy) | SQLite ms | Cosmos calls | Cosmos HTTP requests "
          "| Cosmos bytes on the wire | (local server) | Cosmos est. RU | Cosmos ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for what, by_store in rows.items():
        s, c = by_store.get("SQLite"), by_store.get("Cosmos")
        left = f"{s.calls:.1f} | {kb(s.wire_bytes)} | {s.ms:.1f}" if s else "– | – | –"
        right = (f"{c.calls:.1f} | {c.requests:.1f} | {kb(c.wire_bytes)} | {kb(c.local_bytes)} | {c.ru:.1f} | {c.ms:.1f}"
                 if c else "– | – | – | – | – | –")
        print(f"| {what} | {left} | {right} |")


def print_fleet_day(costs: dict[str, Cost], source: str, fleet: Fleet = Fleet()) -> None:
    print(f"\nFleet-day ({fleet.factories} factories × {fleet.seats} seats, {fleet.jobs_per_day:,} jobs a day, "
          f"an idle poll every {fleet.idle_poll_seconds:g} s, a heartbeat every {fleet.heartbeat_seconds:g} s), "
          f"from the {source} figures:")
    print("| what | per day | store calls a day | GB a day | est. RU a day | share of RU |")
    print("|---|---|---|---|---|---|")
    rows = fleet_day(costs, fleet)
    total_ru = rows[-1][4] or 1
    for what, n, calls, gb, ru in rows:
        per_day = f"{n:,.0f}" if n else "–"
        print(f"| {what} | {per_day} | {calls:,.0f} | {gb:.2f} | {ru:,.0f} | {ru / total_ru:.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--claims", type=int, default=50)
    parser.add_argument("--depths", default="1000,10000", help="SQLite queue depths for the claim")
    parser.add_argument("--cosmos-depths", default="1000,10000", help="Cosmos queue depths for the claim")
    parser.add_argument("--starved-depths", default="1000,10000", help="SQLite depths of the gpu-starved claims")
    parser.add_argument("--cosmos-starved-depths", default="1000", help="Cosmos depths of the gpu-starved claims")
    parser.add_argument("--no-cosmos", action="store_true", help="SQLite only")
    args = parser.parse_args()
    depths = lambda text: [int(d) for d in text.split(",") if d]  # noqa: E731
    table: dict[str, dict[str, Cost]] = {}
    deep: dict[str, dict[str, Cost]] = {}
    hungry: dict[str, dict[str, Cost]] = {}

    def run(open_rig: Callable[[str], contextlib.AbstractContextManager[Rig]], depth_list, starved_list) -> None:
        with open_rig("standard") as rig:
            for what, cost in standard(rig, args.jobs, args.claims).items():
                table.setdefault(what, {})[rig.name] = cost
        for depth in depth_list:
            began = time.perf_counter()
            with open_rig(f"depth-{depth}") as rig:
                deep.setdefault(f"claim at {depth:,} queued", {})[rig.name] = at_depth(rig, depth)
            print(f"  {rig.name} claim at {depth:,}: {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
        for depth in starved_list:
            began = time.perf_counter()
            with open_rig(f"starved-{depth}") as rig:
                # Deeper than 1k a starved claim takes a minute here: one of each, not three.
                for what, cost in starved(rig, depth, times=3 if depth <= 1000 else 1).items():
                    hungry.setdefault(f"{depth:,} need gpu: {what}", {})[rig.name] = cost
            print(f"  {rig.name} starved at {depth:,}: {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        run(lambda name: sqlite_rig(tmp, name), depths(args.depths), depths(args.starved_depths))
    if not args.no_cosmos:
        with cosmos_server() as open_cosmos:
            run(lambda name: open_cosmos(), depths(args.cosmos_depths), depths(args.cosmos_starved_depths))

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"SQLite {__import__('sqlite3').sqlite_version}, {time.strftime('%Y-%m-%d', time.gmtime())}")
    print_table(f"{args.jobs} queued jobs of one product (4 KB bodyMd, 2 capabilities, repo, baseBranch); per call:", table)
    print_table("Claim against queue depth (same jobs):", deep)
    print_table("Capability-starved claims: N queued jobs need gpu, the factory lacks it; one job below them "
                "needs nothing (medians of 3 at 1k, one claim each deeper):", hungry)
    cosmos = {what: c["Cosmos"] for what, c in table.items() if "Cosmos" in c}
    if cosmos:
        print_fleet_day(cosmos, "Cosmos wire")
    else:
        print_fleet_day({what: c["SQLite"] for what, c in table.items()}, "SQLite port (proxy)")
    print(f"\nRU model: {store_meters.RU_MODEL}")


if __name__ == "__main__":
    main()
