"""How the `fleet` CLI shows the coordinator's answers to a person (`--json` shows them as sent)."""
from __future__ import annotations

from collections.abc import Iterable

from fleet import budget_rules, dag, factories, listing, queue_state, weight_registry
from fleet.jobs import Job
from fleetclient.tables import cell, fields, table, usd, when

#: Events `fleet jobs show` lists (the newest).
SHOWN_EVENTS = 10


def job_list(page: listing.JobPage) -> str:
    if not page.items:
        return "no jobs"
    text = table(
        ["ID", "STAGE", "PRIORITY", "ATTEMPTS", "FACTORY", "UPDATED", "TITLE"],
        [
            [job.id, job.stage, job.priority, f"{job.attempts}/{job.max_attempts}",
             job.lease.factory_id if job.lease else None, when(job.updated_at), job.title or job.idempotency_key]
            for job in page.items
        ],
    )
    if page.continuation:
        text += f"\nmore: --continuation {page.continuation}"
    elif page.next_offset is not None:
        text += f"\nmore: --offset {page.next_offset}"
    return text


def job_line(job: Job, verb: str = "") -> str:
    """`web:abc… building  Fix the login page` (one line, after an action or a submit)."""
    head = f"{verb} " if verb else ""
    return f"{head}{job.id}  {job.stage.value}  {cell(job.title or '-')}"


def reported(job: Job, lease_id: str) -> str:
    """`reported run 2, $0.42: web:abc…  queued  Fix the login page`: the run a late report
    was for, with the cost it now has (the job alone if the answer does not show which run
    held `lease_id`)."""
    run = next((run for run in job.runs if run.lease_id == lease_id), None)
    if run is None:
        return job_line(job, "reported:")
    cost = usd(run.cost_usd) if run.cost_usd is not None else "no cost"
    return job_line(job, f"reported run {run.run_id.rpartition('#')[2]}, {cost}:")


def job_detail(job: Job) -> str:
    pairs: list[tuple[str, object]] = [
        ("id", job.id),
        ("title", job.title or None),
        ("product", job.product_id),
        ("idempotency key", job.idempotency_key),
        ("kind", job.kind),
        ("stage", job.stage),
        ("priority", job.priority),
        ("attempts", f"{job.attempts}/{job.max_attempts}"),
        ("capabilities", job.capabilities),
    ]
    if job.deps:
        pairs.append(("deps", job.deps))
    if job.blocked_on:
        pairs.append(("blocked on", [f"{b.idempotency_key} ({b.stage.value if b.stage else 'missing'})"
                                     for b in job.blocked_on]))
    if job.parent_id:
        pairs.append(("parent", job.parent_id))
    if job.children:
        pairs.append(("children", job.children))
    if job.repo:
        pairs.append(("repo", f"{job.repo} ({job.base_branch or 'default branch'})"))
    if job.lease:
        lease = job.lease
        pairs.append(("lease", f"{lease.factory_id}, epoch {lease.epoch}, expires {when(lease.expires_at)}"))
    if job.review:
        review = job.review
        pairs.append(("review", f"{len(review.get('approvals', []))}/{review.get('required')} approvals"
                                f"{', reviewers ' + ','.join(review['reviewers']) if review.get('reviewers') else ''}"))
    if job.checkpoint is not None:
        pairs.append(("checkpoint", "yes"))
    pairs += [("created", when(job.created_at)), ("updated", when(job.updated_at))]
    parts = [fields(pairs)]
    if job.body_md.strip():
        parts.append(job.body_md.strip())
    if job.runs:
        # The lease each ended run was held under, where this reader may see it (its factory, an
        # admin): what `fleet jobs report` names for a run whose lease was taken.
        leased = any(run.lease_id for run in job.runs)
        parts.append("runs:\n" + table(
            ["RUN", "FACTORY", "STARTED", "ENDED", "RESULT", "COST", "PR", *(["LEASE"] if leased else [])],
            [[run.run_id, run.factory_id, when(run.started_at), when(run.ended_at) if run.ended_at else None,
              run.result, _run_cost(run), run.pr_link, *([run.lease_id] if leased else [])]
             for run in job.runs],
        ))
    if job.events:
        events = job.events[-SHOWN_EVENTS:]
        older = len(job.events) - len(events) + job.events_dropped
        heading = f"events (latest {len(events)}{f', {older} older' if older else ''}):"
        parts.append(heading + "\n" + table(
            ["AT", "EVENT", "BY", "DETAIL"],
            [[when(e.at), e.type, e.actor, " ".join(f"{k}={cell(v, None)}" for k, v in e.detail.items())]
             for e in events],
        ))
    return "\n\n".join(parts)


def dag_tree(node: dag.DagNode) -> str:
    lines = [_dag_label(node)]
    _dag_children(node.children, "", lines)
    return "\n".join(lines)


def _dag_children(children: Iterable[dag.DagNode], indent: str, lines: list[str]) -> None:
    children = list(children)
    for i, child in enumerate(children):
        last = i == len(children) - 1
        lines.append(f"{indent}{'└─ ' if last else '├─ '}{_dag_label(child)}")
        _dag_children(child.children, indent + ("   " if last else "│  "), lines)


def _dag_label(node: dag.DagNode) -> str:
    stage = node.stage.value if node.stage else "?"
    return "  ".join(part for part in (node.id, stage, cell(node.title) if node.title else "") if part)


def factory_table(items: list[factories.Factory]) -> str:
    if not items:
        return "no factories have sent a heartbeat yet"
    return table(
        ["ID", "HEALTH", "SEATS", "PRODUCTS", "CAPABILITIES", "LAST HEARTBEAT"],
        [[f.id, f.health, f"{f.seats_used}/{f.seat_limit if f.seat_limit is not None else '-'}", f.products,
          f.capabilities, when(f.last_heartbeat_at)] for f in items],
    )


def queue_version(state: queue_state.QueueState) -> str:
    return fields([("product", state.product_id), ("version", state.version), ("updated", when(state.updated_at))])


def weights(view: weight_registry.ProductWeights) -> str:
    names = list(view.resolved) or list(view.weights)
    body = table(
        ["WEIGHT", "PRODUCT", "RESOLVED"],
        [[name, view.weights.get(name), view.resolved.get(name)] for name in names],
    )
    head = f"weights of {view.product_id}" + (" (re-keying queued jobs)" if view.rekeying else "")
    return f"{head}\n{body}"


def budget(b: budget_rules.BudgetView) -> str:
    paused = f"yes ({b.paused_by.value})" if b.paused and b.paused_by else b.paused
    return fields([
        ("product", b.product_id),
        ("ceiling", usd(b.ceiling_usd) if b.ceiling_usd is not None else "none"),
        ("window", f"{b.window.value} from {when(b.window_start)}, "
                   f"rolls at {when(budget_rules.window_end(b.window, b.window_start))}"),
        ("default estimate", usd(b.default_estimate_usd) if b.default_estimate_usd is not None else "none"),
        ("spent", usd(b.spent_usd)),
        ("reserved", usd(b.reserved_usd)),
        ("remaining", usd(b.remaining_usd) if b.remaining_usd is not None else None),
        ("paused", paused),
        ("claims", f"refused ({b.refusal.value})" if b.refusal else _open(b)),
    ])


def _open(b: budget_rules.BudgetView) -> str:
    if b.unestimated_wait:
        return (f"open, but jobs that name no cost wait: {usd(b.remaining_usd)} left, "
                f"under the default estimate {usd(b.default_estimate_usd)}")
    return "open"


def _run_cost(run) -> str | None:
    """A run's cost (`Run.cost_usd`), marked when its lost lease reported it late."""
    if run.cost_usd is None:
        return None
    return usd(run.cost_usd) + (" (late)" if run.late_report else "")
