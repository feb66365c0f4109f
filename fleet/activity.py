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
  jobs container): the version, and jobs shipped and USD their runs cost, counted when the
  write that shipped the job or ended the run is settled, in the same increment as that
  write's version bump (so a finish costs one store write besides the job's); and, per
  product, how many jobs reached each end stage (`finished_<digest>_<stage>`, `finished_field`)
  and what its runs cost (`spent_<digest>`, `spent_field`), counted in the same increment. A
  principal limited to some products is shown the days as its products' counts make them
  (`days`), never the fleet's. These feed the overview's chart and its table of finished
  work in one single-partition query, so the overview never counts a product's finished jobs,
  whose number grows with its history (as would a count query's charge on Cosmos). They are
  informational: a follow-up the sweep repeats does not count them again, and one lost to a
  crash between the job's write and its follow-ups is not counted at all.

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
    if after.stage in TERMINAL and (before is None or before.stage != after.stage):
        counted[finished_field(after.product_id, after.stage)] = 1
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
        counted["spentUsd"] = counted[spent_field(after.product_id)] = round(cost, 6)
    bump(ctx, counted)


def _reported_late(job: Job) -> frozenset[str]:
    """The ended runs of `job` a lost lease has reported (`leases.report`): a report reaching
    an open run (its lease expired, not yet swept) counts when the sweep ends the run."""
    return frozenset(run.run_id for run in job.runs if run.late_report is not None and run.ended_at is not None)


def days(ctx: Context, count: int = CHART_DAYS) -> list[Day]:
    """The last `count` days' rollups, oldest first, today last (days with nothing are zeros);
    for a principal limited to some products, those products' own (`Day.of`)."""
    today = ctx.clock.now().date()
    first = today - timedelta(days=count - 1)
    query = store.Query(
        "jobs", STATE_PARTITION, (store.Filter("id", ">=", _day_id(first)), store.Filter("id", "<=", _day_id(today))),
        limit=count,
    )
    found = {doc["id"]: doc for doc in ctx.store.query(query).items}
    out = []
    for offset in range(count):
        day = first + timedelta(days=offset)
        doc = found.get(_day_id(day), {})
        ended = {k: int(v or 0) for k, v in doc.items() if k.startswith(FINISHED_PREFIX)}
        spent = {k: float(v or 0.0) for k, v in doc.items() if k.startswith(SPENT_PREFIX)}
        whole = Day(
            day=day, shipped=int(doc.get("shipped") or 0), spent_usd=float(doc.get("spentUsd") or 0.0),
            finished=ended, spent=spent,
        )
        out.append(whole if ctx.principal.products is None else whole.of(ctx.principal.products))
    return out


def _day_id(day: date | datetime) -> str:
    return DAY_PREFIX + day.strftime("%Y-%m-%d")
