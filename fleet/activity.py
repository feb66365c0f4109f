"""What the dashboard asks before it re-reads anything: has the fleet changed, and what shipped
and was spent, day by day.

- One fleet-wide **version**, on today's day document (below), bumped by an atomic increment
  after a job write the dashboard must show at once
  (`visible_change`: a new job, a finish, a requeue, parking at review, a review or priority
  change — not a factory's own progress under its lease), after a budget change, and when a
  factory registers or changes what it serves. The views' ETags hold it and the minute, so an
  unchanged view answers 304 after one point read of it, and a factory's progress shows within a
  minute. It starts again from 0 each UTC day, with a new document: the minute in the ETags
  tells the days apart. It is a hint for views, never a fact a decision is made on.
- One **day** document per UTC day (`activity-YYYY-MM-DD`, in the reserved partition of the
  jobs container): the version, and the fleet's jobs shipped and USD their runs cost, counted
  when the write that shipped the job or ended the run is settled, in the same increment as
  that write's version bump. It stays a few hundred bytes however many products the fleet
  serves, so a bump costs the same at 1 product as at 100 (a store's write charge follows the
  size of the document written, and every new job and every finish bumps it).
- One **product day** document per product per UTC day that it finished or spent something
  (`activity-YYYY-MM-DD.<digest>`, same partition, `_day_id`): how many of the product's jobs
  reached each end stage (`finished_<digest>_<stage>`, `finished_field`) and what its runs
  cost (`spent_<digest>`, `spent_field`), counted in one increment before the version's, so a
  finish costs two small store writes besides the job's (and a new job one).

A principal limited to some products is shown the days as its products' counts make them
(`days`), never the fleet's. The days feed the overview's chart and its table of finished work
in one single-partition query of an id range (`days`), so the overview never counts a
product's finished jobs, whose number grows with its history (as would a count query's charge
on Cosmos). They are informational: a follow-up the sweep repeats does not count them again,
and one lost to a crash between the job's write and its follow-ups is not counted at all.
(Days written before the product day documents hold the per-product counts on the day
document itself; `days` adds up whatever a day's documents hold, so they read the same.)

Like every follow-up, a bump the store refuses is logged and skipped (`effects`).
"""
from __future__ import annotations

import hashlib
import logging
from datetime import date, datetime, timedelta

from pydantic import Field

from fleet import clock, errors, store
from fleet.context import Context
from fleet.jobs import Job, Model
from fleet.outage import STATE_PARTITION
from fleet.stages import ACTIVE, TERMINAL, Stage

log = logging.getLogger("fleet.activity")

DAY_PREFIX = "activity-"
#: How many days of rollups the chart shows.
CHART_DAYS = 14
#: How many day documents (the fleet's and its products') a page of `days` reads.
DAYS_PAGE = 500


#: The end stages a day counts entries into, per product, in the order of `Stage`.
ENDS = tuple(stage for stage in Stage if stage in TERMINAL)
#: The prefix of a day's per-product counts of jobs that reached an end stage.
FINISHED_PREFIX = "finished_"
#: The prefix of a day's per-product USD spent.
SPENT_PREFIX = "spent_"


class Day(Model):
    day: date
    shipped: int = 0
    spent_usd: float = 0.0
    #: `finished_field` -> how many jobs reached that end stage that day.
    finished: dict[str, int] = Field(default_factory=dict)
    #: `spent_field` -> USD the product's runs cost that day.
    spent: dict[str, float] = Field(default_factory=dict)

    def of(self, product_ids: tuple[str, ...]) -> "Day":
        """This day as the products' own counts make it: what they shipped and spent."""
        mine = {spent_field(p) for p in product_ids} | {
            finished_field(p, stage) for p in product_ids for stage in ENDS
        }
        return Day(
            day=self.day,
            shipped=sum(self.finished.get(finished_field(p, Stage.SHIPPED), 0) for p in product_ids),
            spent_usd=round(sum(self.spent.get(spent_field(p), 0.0) for p in product_ids), 6),
            finished={k: v for k, v in self.finished.items() if k in mine},
            spent={k: v for k, v in self.spent.items() if k in mine},
        )


def _digest(product_id: str) -> str:
    # A product id may hold characters a field name may not: its fields are named by a digest.
    return hashlib.sha256(product_id.encode()).hexdigest()[:16]


def finished_field(product_id: str, stage: Stage) -> str:
    """The day document's field counting `product_id`'s jobs that reached `stage`."""
    return f"{FINISHED_PREFIX}{_digest(product_id)}_{stage.value}"


def spent_field(product_id: str) -> str:
    """The day document's field adding up what `product_id`'s runs cost."""
    return f"{SPENT_PREFIX}{_digest(product_id)}"


def finished(days: list[Day], product_id: str) -> dict[Stage, int]:
    """How many of the product's jobs reached each end stage over `days`."""
    fields = {stage: finished_field(product_id, stage) for stage in ENDS}
    return {stage: sum(day.finished.get(name, 0) for day in days) for stage, name in fields.items()}


def version(ctx: Context) -> int:
    """The fleet's activity version today, in one point read (0 before anything happened)."""
    try:
        return int(ctx.store.read("jobs", STATE_PARTITION, _day_id(ctx.clock.now())).get("version") or 0)
    except errors.NotFound:
        return 0


def bump(ctx: Context, counted: dict[str, float] | None = None) -> int:
    """Something a dashboard shows changed: bump the version, and add `counted` (`shipped`,
    `spentUsd`) to today's rollup in the same write. Returns the new version."""
    now = ctx.clock.now()
    day = now.date()
    initial = {"id": _day_id(day), "productId": STATE_PARTITION, "day": day.isoformat()}
    doc = ctx.store.increment(
        "jobs", STATE_PARTITION, _day_id(day), "version", 1, initial, stamp={"updatedAt": clock.format(now)}, also=counted
    )
    return int(doc["version"])


def touch(ctx: Context) -> None:
    """`bump`, after a change that has already been written: a store that refuses it is logged,
    never the caller's failure (the view then refreshes on the next change)."""
    try:
        bump(ctx)
    except errors.FleetError:
        log.warning("activity version not bumped; dashboards see this change with the next one", exc_info=True)


def visible_change(before: Job | None, after: Job) -> bool:
    """Whether a job write changes what the dashboard must show at once: a new job, a review or
    priority change, a lease ending (a finish, a give-back, parking at review: the job's run
    ends, and what it cost joins today's spend), a lost lease's late report of its run (its
    cost joins too), and any move of stage but a factory's own
    progress under its lease (a claim, a PATCH to a work stage), which the views show within a
    minute instead (their ETags hold the minute). A lease renewal, a checkpoint or an event
    alone bumps nothing either, so claims, heartbeats and PATCHes cost the store what they did."""
    if before is None:
        return True
    if before.review != after.review or before.priority != after.priority:
        return True
    if before.lease is not None and after.lease is None:
        return True  # parking at review moves no stage: a job is released at testing
    if _reported_late(before) != _reported_late(after):
        return True  # a lost lease reported its run: the day's spend may grow
    if before.stage == after.stage:
        return False
    return not (after.stage in ACTIVE and after.lease is not None)


def note_write(ctx: Context, before: Job | None, after: Job) -> None:
    """The follow-up of a write that made a `visible_change`: bump the version, counting what
    it shipped, the end stage it reached and what its ended runs cost on today's rollup in the
    same increment."""
    counted: dict[str, float] = {}
    product: dict[str, float] = {}
    if after.stage in TERMINAL and (before is None or before.stage != after.stage):
        product[finished_field(after.product_id, after.stage)] = 1
    if after.stage == Stage.SHIPPED and (before is None or before.stage != Stage.SHIPPED):
        counted["shipped"] = 1
    ended_before = {run.run_id for run in (before.runs if before else []) if run.ended_at is not None}
    cost = sum(
        float(run.insights.get("costUsd") or 0.0)
        for run in after.runs
        if run.ended_at is not None and run.run_id not in ended_before
    )
    late_before = _reported_late(before) if before else frozenset()
    cost += sum(run.late_usd for run in after.runs if run.run_id in _reported_late(after) - late_before)
    if cost > 0:
        counted["spentUsd"] = product[spent_field(after.product_id)] = round(cost, 6)
    if product:
        count(ctx, after.product_id, product)
    bump(ctx, counted)


def count(ctx: Context, product_id: str, counted: dict[str, float]) -> None:
    """Add `counted` (`finished_field`s, `spent_field`) to the product's document of today."""
    now = ctx.clock.now()
    day = now.date()
    initial = {"id": _day_id(day, product_id), "productId": STATE_PARTITION, "day": day.isoformat(), "product": product_id}
    (field, by), *rest = counted.items()
    ctx.store.increment("jobs", STATE_PARTITION, _day_id(day, product_id), field, by, initial, also=dict(rest))


def _reported_late(job: Job) -> frozenset[str]:
    """The ended runs of `job` a lost lease has reported (`leases.report`): a report reaching
    an open run (its lease expired, not yet swept) counts when the sweep ends the run."""
    return frozenset(run.run_id for run in job.runs if run.late_report is not None and run.ended_at is not None)


def days(ctx: Context, count: int = CHART_DAYS) -> list[Day]:
    """The last `count` days' rollups, oldest first, today last (days with nothing are zeros);
    for a principal limited to some products, those products' own (`Day.of`)."""
    today = ctx.clock.now().date()
    first = today - timedelta(days=count - 1)
    # Each day's documents have ids from the day's own up to the next day's (excluded).
    after = (store.Filter("id", ">=", _day_id(first)), store.Filter("id", "<", _day_id(today + timedelta(days=1))))
    found: dict[str, dict[str, float]] = {}
    for doc in store.query_all(ctx.store, store.Query("jobs", STATE_PARTITION, after, limit=DAYS_PAGE)):
        sums = found.setdefault(doc["id"][len(DAY_PREFIX):][:10], {})
        for name, value in doc.items():
            if name in ("shipped", "spentUsd") or name.startswith((FINISHED_PREFIX, SPENT_PREFIX)):
                sums[name] = sums.get(name, 0) + (value or 0)
    out = []
    for offset in range(count):
        day = first + timedelta(days=offset)
        sums = found.get(day.isoformat(), {})
        ended = {k: int(v) for k, v in sums.items() if k.startswith(FINISHED_PREFIX)}
        spent = {k: round(float(v), 6) for k, v in sums.items() if k.startswith(SPENT_PREFIX)}
        whole = Day(
            day=day, shipped=int(sums.get("shipped", 0)), spent_usd=round(float(sums.get("spentUsd", 0.0)), 6),
            finished=ended, spent=spent,
        )
        out.append(whole if ctx.principal.products is None else whole.of(ctx.principal.products))
    return out


def _day_id(day: date | datetime, product_id: str | None = None) -> str:
    """The id of the day's document, or of `product_id`'s that day: after the day's own, before
    the next day's."""
    own = DAY_PREFIX + day.strftime("%Y-%m-%d")
    return own if product_id is None else f"{own}.{_digest(product_id)}"
