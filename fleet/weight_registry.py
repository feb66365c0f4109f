"""The product weight registry: per-product scoring weights, merged per field over defaults.

One document per product (`id: "weights"` in the jobs container). Queued jobs carry a rank key
computed with their product's weights; a change of weights re-keys them. While that runs
(`rekeying`), claims take the bucket path, which does not depend on rank keys.

A weight change is counted on the product's queue-state document before the new weights are
written, and the weights document names the count it was written under (`change`), so a
writer that queued a job with weights it read earlier learns from the queue-state bump that
follows its write whether they changed since (`ensure_rank`), without reading them again.
A claim has no such bump: it reads the weights, or, with `claim_weights_seconds` set, ranks
with weights this process read that long ago at most and reads them again when a rank key it
reads says they changed (`claims`). It reads them from the copy on the product's queue-state
document (`for_claim`), which it reads anyway for the capability sets: the weights of the last
change whose re-keying finished, stamped after it finished (`_finish`), and used only while no
change was counted since; otherwise (a change under way, or a stamp lost or overtaken) from this
document, a second point read. The sweep stamps a copy that fell behind (`restamp`).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import Field

from fleet import batch, errors, memory, queue_state, scoring, store, writes
from fleet.capability_sets import RANKED
from fleet.context import Context
from fleet.jobs import Job, Model
from fleet.stages import Stage

DOC_ID = "weights"
#: The weights document's field naming the weight change its weights were written under.
CHANGE = "change"
#: How often a PUT takes a newer count after a concurrent PUT wrote under a higher one.
PUT_ATTEMPTS = 10
#: Products whose weights a process remembers (`cached`); past this, it forgets them all.
MAX_CACHED = 1024

#: The snapshots read from the store (with when, by the reader's clock), by product.
_cached: memory.Memory[tuple["Snapshot", datetime]] = memory.Memory(MAX_CACHED)


@dataclass(frozen=True)
class Snapshot:
    """A product's weights as one read of its registry entry found them."""

    product_id: str
    patch: scoring.WeightsPatch
    #: `patch` resolved over the defaults.
    weights: scoring.Weights
    #: A weight change is still re-keying the queued jobs.
    rekeying: bool
    #: The weight change they were written under (0: none counted yet).
    change: int


class ProductWeights(Model):
    """`GET/PUT /fleet/weights/{productId}`: the product's weights and what claims use."""

    product_id: str
    #: What the product sets; the rest come from the defaults.
    weights: dict[str, float] = Field(default_factory=dict)
    #: The weights claims use: the product's merged over the defaults (every field of `scoring.Weights`).
    resolved: dict[str, float] = Field(default_factory=dict)
    #: True while queued jobs are being re-keyed after a change (claims take the bucket path).
    rekeying: bool = False


def read_doc(ctx: Context, product_id: str) -> dict[str, Any]:
    try:
        return ctx.store.read("jobs", product_id, DOC_ID)
    except errors.NotFound:
        return _empty(product_id)


def _empty(product_id: str) -> dict[str, Any]:
    """A product's registry entry before any weights were set."""
    return {"id": DOC_ID, "productId": product_id, "weights": {}, "rekeying": False}


def product_patch(doc: dict[str, Any]) -> scoring.WeightsPatch:
    return scoring.WeightsPatch(**doc.get("weights", {}))


def snapshot(ctx: Context, product_id: str) -> Snapshot:
    """The product's weights, in one point read (remembered for `cached`)."""
    found = snapshot_of(product_id, read_doc(ctx, product_id))
    _remember(ctx, found)
    return found


def cached(ctx: Context, product_id: str) -> Snapshot:
    """The product's weights as this process last read them; one point read if it has not.

    Only for keying a job its writer then queues, and so checks with `ensure_rank` after its
    own queue-state bump: a snapshot older than the product's last weight change was written
    under an older count than the bump shows, so the weights are read again there and the job
    re-keyed. A process that queues jobs under unchanged weights reads them once."""
    found = _recalled(ctx, product_id)
    return found[0] if found is not None else snapshot(ctx, product_id)


@dataclass(frozen=True)
class ForClaim:
    """A claim's weights (`for_claim`), and the queue-state document read for them."""

    snapshot: Snapshot
    #: Read by this claim, not recalled.
    read_now: bool
    #: `(doc,)` when the product's queue-state document was read for them (`doc` None for a
    #: product never seen), else `()`.
    queue_state: tuple[dict[str, Any] | None, ...] = ()


def for_claim(ctx: Context, product_id: str, within: float) -> ForClaim:
    """The product's weights as this process read them at most `within` seconds ago
    (`_recent`), else read now: from the queue-state document's copy
    when it is of the last change counted, else from the registry (one more point read).
    The queue-state document comes with them when it was read, for the capability sets."""
    found = _recent(ctx, product_id, within)
    if found is not None:
        return ForClaim(found, read_now=False)
    doc = queue_state.read_doc(ctx, product_id)
    copied = queue_state.claim_weights(doc)
    if copied is None:  # a change under way, a copy behind (the sweep restamps it), no document
        return ForClaim(snapshot(ctx, product_id), read_now=True, queue_state=(doc,))
    patch = scoring.WeightsPatch(**copied[0])
    entry = Snapshot(product_id, patch, scoring.resolve(patch), rekeying=False, change=copied[1])
    _remember(ctx, entry)
    return ForClaim(entry, read_now=True, queue_state=(doc,))


def _recent(ctx: Context, product_id: str, within: float) -> Snapshot | None:
    """The snapshot this process read at most `within` seconds ago (by the context's clock),
    if any; None when `within <= 0`.

    For a claim, which has no bump to validate them with: a claim that uses these is exact
    (ranks as it would with weights read now) unless another process wrote a weight change
    in the last `within` seconds. A change made in this process replaces the snapshot at once
    (`put`, `rekey` and the end of a re-keying remember what they write), and a read that
    answers older weights than the snapshot's never replaces it (`_remember`), so outside that
    window the snapshot is the registry's current entry."""
    found = _recalled(ctx, product_id)
    if found is not None and within > 0:
        entry, read_at = found
        age = (ctx.clock.now() - read_at).total_seconds()
        if 0 <= age <= within:
            return entry
    return None


def _recalled(ctx: Context, product_id: str) -> tuple[Snapshot, datetime] | None:
    return _cached.recall(ctx.store, product_id)[0]


def _remember(ctx: Context, found: Snapshot) -> None:
    """Remember `found`, read now, unless the snapshot remembered is of a later weight change
    or of its end (a read that began before a write of this process may answer after it)."""
    newer = lambda known: _order(known[0]) <= _order(found)  # noqa: E731
    _cached.remember(ctx.store, found.product_id, (found, ctx.clock.now()), over=newer)


def _order(entry: Snapshot) -> tuple[int, bool]:
    """Snapshots of one product in the order they were written: by weight change, and within
    one, re-keying before done."""
    return entry.change, not entry.rekeying


def snapshot_of(product_id: str, doc: dict[str, Any]) -> Snapshot:
    patch = product_patch(doc)
    return Snapshot(product_id, patch, scoring.resolve(patch), bool(doc.get("rekeying")), int(doc.get(CHANGE) or 0))


def for_product(ctx: Context, product_id: str) -> scoring.Weights:
    return snapshot(ctx, product_id).weights


def view(ctx: Context, product_id: str, doc: dict[str, Any] | None = None) -> ProductWeights:
    """The registry entry as answered; from `doc` when the caller has it."""
    ctx.principal.reach(product_id, f"no product {product_id!r}")
    entry = snapshot_of(product_id, read_doc(ctx, product_id) if doc is None else doc)
    return ProductWeights(
        product_id=product_id,
        weights=entry.patch.model_dump(exclude_none=True),
        resolved=entry.weights.model_dump(),
        rekeying=entry.rekeying,
    )


def put(ctx: Context, product_id: str, patch: scoring.WeightsPatch) -> ProductWeights:
    """Merge `patch` into the product's registry entry (a weight given as null drops its
    override), then re-key its queued jobs.

    One pass over the queued jobs suffices unless another weight change began meanwhile (the
    queue-state bump that announces this one tells): a job queued after that pass's query was
    queued by a writer whose own bump comes after this change was counted, so that writer
    re-keys it (`ensure_rank`). With a concurrent change, the passes repeat until one changes
    nothing, each with the weights read afresh (`rekey`)."""
    ctx.principal.reach(product_id, f"no product {product_id!r}")
    doc = _merge(ctx, product_id, patch)
    entry = snapshot_of(product_id, doc)
    _remember(ctx, entry)
    _, failed = _rekey_pass(ctx, product_id, entry.weights)
    bumped = queue_state.bump(ctx, product_id)
    if failed or queue_state.weight_changes(bumped) != entry.change:
        rekey(ctx, product_id)
        return view(ctx, product_id)
    return view(ctx, product_id, _finish(ctx, product_id, entry.weights, doc))


class _Overtaken(Exception):
    """A concurrent PUT wrote the weights under a later count than this one's."""


def _merge(ctx: Context, product_id: str, patch: scoring.WeightsPatch) -> dict[str, Any]:
    """Count the change, then write the merged weights under that count. The count a
    document carries only ever grows: a PUT overtaken by a later-counted one counts again."""
    for attempt in range(PUT_ATTEMPTS):
        count = queue_state.count_weight_change(ctx, product_id)

        def merge(doc: dict[str, Any], count: int = count) -> dict[str, Any]:
            if int(doc.get(CHANGE) or 0) >= count:
                raise _Overtaken()
            # A weight sent as null is no longer overridden: the default applies again.
            cleared = {name for name in patch.model_fields_set if getattr(patch, name) is None}
            merged = {**doc.get("weights", {}), **patch.model_dump(exclude_none=True)}
            weights = {name: value for name, value in merged.items() if name not in cleared}
            return {**doc, "weights": weights, "rekeying": True, CHANGE: count}

        try:
            return store.update(ctx.store, "jobs", product_id, DOC_ID, merge, initial=_empty(product_id), sleep=ctx.clock.sleep)
        except _Overtaken:
            store.backoff(attempt, ctx.clock.sleep)
    raise errors.TooManyRetries()


def rekey(ctx: Context, product_id: str) -> int:
    """Give every queued job of the product the rank key of the current weights; clear
    `rekeying` when a pass changed nothing. Idempotent: the sweep re-runs it if a process died."""
    changed_total = 0
    while True:
        weights = for_product(ctx, product_id)
        changed, failed = _rekey_pass(ctx, product_id, weights)
        changed_total += changed
        if changed == 0:
            break
    if failed:
        return changed_total  # leave `rekeying` set: the sweep tries the failed jobs again
    doc = read_doc(ctx, product_id)
    if doc.get("rekeying"):
        _finish(ctx, product_id, weights, doc)
    return changed_total


def _rekey_pass(ctx: Context, product_id: str, weights: scoring.Weights) -> tuple[int, int]:
    """Re-key the queued jobs whose rank key is not `weights`'s: (how many, how many failed)."""
    # In claim order: the claims' index serves it, and no index of its own re-keys with every write.
    query = store.Query("jobs", product_id, (store.Filter("stage", "=", Stage.QUEUED.value),), RANKED, limit=200)
    queued = [Job.from_doc(doc) for doc in store.query_all(ctx.store, query)]
    stale = [job for job in queued if _key(job, weights) != job.rank_key]
    changed = 0

    def rekey_one(job: Job) -> None:
        nonlocal changed
        writes.change(ctx, job.id, _rekeyed, weights, current=job, request=False)
        changed += 1

    failed = batch.each(stale, rekey_one)
    return changed, failed


def _finish(ctx: Context, product_id: str, weights: scoring.Weights, doc: dict[str, Any]) -> dict[str, Any]:
    """Clear `rekeying`, unless the weights changed again since `weights` (the writer that
    changed them clears it)."""

    def done(current: dict[str, Any]) -> dict[str, Any] | None:
        if not current.get("rekeying") or scoring.resolve(product_patch(current)) != weights:
            return None
        return {**current, "rekeying": False}

    finished = store.update(ctx.store, "jobs", product_id, DOC_ID, done, current=doc, sleep=ctx.clock.sleep)
    entry = snapshot_of(product_id, finished)
    _remember(ctx, entry)
    if not entry.rekeying:
        _stamp(ctx, entry)
    return finished


def _stamp(ctx: Context, entry: Snapshot) -> None:
    """Copy finished weights to the queue-state document for claims: a fact that stays true
    (change `entry.change` set these weights and finished), used only while it is the last
    change counted, so a stamp landing late or twice does no harm."""
    queue_state.stamp_claim_weights(ctx, entry.product_id, entry.patch.model_dump(exclude_none=True), entry.change)


def _finished(entry: Snapshot, queue_doc: dict[str, Any]) -> bool:
    """Whether `entry`, read after `queue_doc`, is of the last change that document counts,
    re-keyed: what a copy may say."""
    return not entry.rekeying and entry.change == queue_state.weight_changes(queue_doc)


def restamp(ctx: Context) -> int:
    """Stamp the copy of every product whose queue-state document's copy is not of its last
    counted change while its weights are not re-keying (a process stopped between finishing a
    change and stamping it, a late stamp of an older change, a document from before the copy),
    or whose copy is the one the document was created with, not checked yet against a weights
    document that may predate it.

    A change counted whose weights were never written (its PUT stopped between the two, or
    gave up) would hold every copy off for good: the weights document is moved to that count
    with its weights as they are (conditionally, and only while not re-keying), as if a change
    to the same weights had finished; a PUT still on its way to writing under that count then
    finds itself overtaken and counts again (`_merge`). Returns how many were stamped."""
    behind = [doc for doc in queue_state.every_doc(ctx) if queue_state.claim_weights(doc) is None or queue_state.unchecked(doc)]
    stamped = 0

    def stamp(doc: dict[str, Any]) -> None:
        nonlocal stamped
        product_id, count = doc["productId"], queue_state.weight_changes(doc)
        entry = snapshot_of(product_id, read_doc(ctx, product_id))
        if not entry.rekeying and entry.change < count:
            entry = snapshot_of(product_id, _close(ctx, product_id, count))
        if _finished(entry, doc):
            _remember(ctx, entry)
            _stamp(ctx, entry)
            stamped += 1

    batch.each(behind, stamp)
    return stamped


def _close(ctx: Context, product_id: str, count: int) -> dict[str, Any]:
    """The weights document written under `count` with its weights unchanged, unless it is
    re-keying or already at `count` or later; the document as it then stands."""

    def close(doc: dict[str, Any]) -> dict[str, Any] | None:
        if doc.get("rekeying") or int(doc.get(CHANGE) or 0) >= count:
            return None
        return {**doc, CHANGE: count}

    return store.update(ctx.store, "jobs", product_id, DOC_ID, close, initial=_empty(product_id), sleep=ctx.clock.sleep)


def _key(job: Job, weights: scoring.Weights) -> float:
    return scoring.rank_key(job.priority.order, job.attempts, job.created_at, weights)


def _rekeyed(job: Job, weights: scoring.Weights, now: datetime) -> Job | None:
    if job.stage != Stage.QUEUED:
        return None
    key = _key(job, weights)
    return None if key == job.rank_key else job.model_copy(update={"rank_key": key})


def ensure_rank(ctx: Context, job: Job, keyed_with: Snapshot | None = None, bumped: dict[str, Any] | None = None) -> Job:
    """Re-key a job just written to the queue if the product's weights changed since its
    writer read them (`keyed_with`). A weight change re-keys the queued jobs it finds after
    writing the new weights; this check, made after the job's own write, covers the jobs it
    could not find yet.

    `bumped` is the queue-state document as the bump after the job's write left it. If its
    count of weight changes equals the one `keyed_with` was written under, no weight change
    began before that bump — and every weight change is counted before its weights are
    written, and written under a count that only grows — so none was written between the
    writer's read and its job write; a later one finds the job itself. Nothing is read then.
    Otherwise (or without both), the weights are read again.
    """
    if (
        keyed_with is not None
        and bumped is not None
        and keyed_with.product_id == job.product_id
        and queue_state.weight_changes(bumped) == keyed_with.change
    ):
        return job
    weights = for_product(ctx, job.product_id)
    if _key(job, weights) == job.rank_key:
        return job
    try:
        return writes.change(ctx, job.id, _rekeyed, weights, current=job, request=False).job
    except errors.NotFound:
        return job
