"""Store calls per use case, and how often each use case reads the same document.

    .venv/bin/python bench/use_case_reads.py

Runs each use case once, in-process over SQLite, with budgets and preemption on and a budget
set, and prints per use case: the store calls by kind, the point reads by container, and the
most times one document was point-read in that call (1 is the goal: each use case reads each
document at most once per attempt; no use case here loses a race, so every call is one attempt).
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet import actions, budgets, claims, dag, factories, leases, review, schemas, scoring, submit, sweep  # noqa: E402
from fleet import weight_registry  # noqa: E402
from fleet.budget_rules import Window  # noqa: E402
from fleet.clock import FixedClock  # noqa: E402
from fleet.context import Context, Settings  # noqa: E402
from fleet.store import CountingStore  # noqa: E402
from shared.stores.sqlite_store import SqliteStore  # noqa: E402

PRODUCT = "reads"


class ReadRecorder(CountingStore):
    """Counts calls like `CountingStore`, and point reads per document."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.documents: Counter = Counter()

    def read(self, container, partition_key, id):
        self.documents[f"{container}/{id}"] += 1
        return super().read(container, partition_key, id)

    def reset(self) -> None:
        super().reset()
        self.documents.clear()


def main() -> None:
    store = ReadRecorder(SqliteStore(":memory:"))
    clock = FixedClock("2026-06-01T12:00:00.000Z")
    ctx = Context(store, clock, Settings(lease_seconds=300, budgets=True, preemption=True))
    budgets.put(ctx, PRODUCT, 1000.0, Window.MONTHLY)
    keys = iter(range(10_000))

    def job(**fields):
        spec = schemas.JobSpec(product_id=PRODUCT, idempotency_key=f"k{next(keys)}", **fields)
        return submit.submit(ctx, spec).job

    def claimed(factory="f1", **fields):
        queued = job(**fields)
        request = claims.ClaimRequest(factory, PRODUCT, list(queued.capabilities), None, 4)
        return claims.claim_job(ctx, queued.id, PRODUCT, request).job

    def at_testing(**fields):
        held = claimed(**fields)
        return leases.patch(ctx, held.id, schemas.PatchBody(lease_id=held.lease.lease_id, stage="testing"))

    def release(target, **body):
        return leases.release(ctx, target.id, schemas.ReleaseBody(lease_id=target.lease.lease_id, **body))

    rows: list[tuple[str, CountingStore]] = []

    def measure(name, setup, action):
        subject = setup()
        store.reset()
        action(subject)
        rows.append((name, Counter(store.calls), Counter(store.documents)))

    for _ in range(20):
        job()
    measure("submit (queued)", lambda: None, lambda _: job())
    measure("claim next", lambda: None, lambda _: claims.claim_next(ctx, claims.ClaimRequest("f2", PRODUCT, [], None, 4)))
    measure("claim next (reserves an estimate)", lambda: job(priority="high", estimated_cost_usd=2.0),
            lambda _: claims.claim_next(ctx, claims.ClaimRequest("f3", PRODUCT, [], None, 4)))

    def preempt_setup():
        low = claimed("f9", priority="low")
        factories.heartbeat(ctx, "f9", [PRODUCT], [], 1, [(low.id, low.lease.lease_id)])
        return job(priority="critical")

    measure("claim at the seat limit (preempts)", preempt_setup,
            lambda _: claims.claim_next(ctx, claims.ClaimRequest("f9", PRODUCT, [], None, 1)))
    measure("PATCH building", claimed,
            lambda held: leases.patch(ctx, held.id, schemas.PatchBody(lease_id=held.lease.lease_id, stage="building")))
    measure("release shipped (with cost)", at_testing,
            lambda held: release(held, stage="shipped", insights={"costUsd": 0.5}))
    measure("release retry", claimed, lambda held: release(held, result="retry"))
    measure("release at testing (park)", at_testing, lambda held: release(held, stage="testing"))
    measure("release (give back)", claimed, lambda held: release(held))

    def four_leases():
        return [claimed("f4") for _ in range(4)]

    measure("heartbeat renewing 4 leases", four_leases,
            lambda held: factories.heartbeat(ctx, "f4", [PRODUCT], [], 4, [(j.id, j.lease.lease_id) for j in held]))
    measure("action ship (parked job)", lambda: release(at_testing(), stage="testing"),
            lambda parked: actions.apply(ctx, parked.id, actions.Action.SHIP))
    measure("action requeue", claimed, lambda held: actions.apply(ctx, held.id, actions.Action.REQUEUE))

    def review_setup():
        parked = release(at_testing(), stage="testing")
        review.request(ctx, parked.id, 1, None)
        return parked

    measure("review approve (quorum of 1)", review_setup, lambda parked: review.decide(ctx, parked.id, "ann", True))
    measure("add children", lambda: dag.submit_composite(ctx, schemas.JobSpec(
        product_id=PRODUCT, idempotency_key=f"parent{next(keys)}",
        children=[schemas.ChildSpec(idempotency_key=f"c{next(keys)}")])).job,
        lambda parent: dag.add_children(ctx, parent.id, [schemas.ChildSpec(idempotency_key=f"c{next(keys)}")]))
    measure("submit composite (2 children)", lambda: None, lambda _: dag.submit_composite(ctx, schemas.JobSpec(
        product_id=PRODUCT, idempotency_key=f"parent{next(keys)}",
        children=[schemas.ChildSpec(idempotency_key=f"c{next(keys)}") for _ in range(2)])))
    measure("dag view", lambda: dag.submit_composite(ctx, schemas.JobSpec(
        product_id=PRODUCT, idempotency_key=f"parent{next(keys)}",
        children=[schemas.ChildSpec(idempotency_key=f"c{next(keys)}") for _ in range(2)])).job,
        lambda parent: dag.view(ctx, parent.id))
    measure("action cancel (composite)", lambda: dag.submit_composite(ctx, schemas.JobSpec(
        product_id=PRODUCT, idempotency_key=f"parent{next(keys)}",
        children=[schemas.ChildSpec(idempotency_key=f"c{next(keys)}") for _ in range(2)])).job,
        lambda parent: actions.apply(ctx, parent.id, actions.Action.CANCEL))
    measure("weights put", lambda: None, lambda _: weight_registry.put(ctx, PRODUCT, scoring.WeightsPatch(age=1.5)))
    measure("budget pause", lambda: None, lambda _: budgets.pause(ctx, PRODUCT))
    measure("budget resume", lambda: None, lambda _: budgets.resume(ctx, PRODUCT))
    measure("sweep (nothing expired)", lambda: None, lambda _: sweep.run(ctx))

    def expiring():
        held = [claimed("f7") for _ in range(3)]
        clock.advance(301)
        return held

    measure("sweep (3 leases expired)", expiring, lambda _: sweep.run(ctx))

    print("| use case | store calls | point reads by container | most reads of one document |")
    print("|---|---|---|---|")
    for name, calls, documents in rows:
        total = sum(calls.values())
        reads = Counter()
        for key, n in calls.items():
            op, _, container = key.partition(":")
            if op == "read":
                reads[container] += n
        read_cells = ", ".join(f"{c} {n}" for c, n in sorted(reads.items())) or "–"
        most = max(documents.values(), default=0)
        worst = ", ".join(f"{d} ×{n}" for d, n in documents.items() if n == most and n > 1)
        print(f"| {name} | {total} | {read_cells} | {most}{' (' + worst + ')' if worst else ''} |")


if __name__ == "__main__":
    main()
