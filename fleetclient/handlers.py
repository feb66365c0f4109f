"""What each operator command of the `fleet` CLI does: one function per command, given the
parsed arguments and a client, answering `(text for a person, JSON document for --json)`.

The parsers live in `fleetclient.commands`, which imports this module only when a command runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import uuid
from typing import Any

from pydantic.alias_generators import to_camel

from fleet import errors, listing, schemas
from fleetclient import views
from fleetclient.client import FleetClient
from fleetclient.report import Report
from shared import strict_json

Shown = tuple[str, Any]


class Usage(Exception):
    """A usage error found after parsing (exit 2)."""


def submit(args: argparse.Namespace, client: FleetClient) -> Shown:
    spec: dict[str, Any] = read_json(args.spec_file) if args.spec_file else {}
    if not isinstance(spec, dict):
        raise Usage("--file must hold a JSON object (a job body)")
    options = {
        "productId": args.product, "idempotencyKey": args.idempotency_key, "title": args.title,
        "bodyMd": read_text(args.body_file) if args.body_file else args.body,
        "priority": args.priority, "capabilities": args.capabilities, "deps": args.deps,
        "maxAttempts": args.max_attempts, "repo": args.repo, "baseBranch": args.base_branch,
        "estimatedCostUsd": args.estimated_cost_usd, "kind": args.kind,
    }
    spec.update({k: v for k, v in options.items() if v is not None})
    if "productId" not in spec:
        raise Usage("a product is required (--product or productId in --file)")
    spec.setdefault("idempotencyKey", f"cli-{uuid.uuid4().hex}")
    submitted = client.submit_job(spec)
    verb = "submitted" if submitted.created else "already submitted:"
    return views.job_line(submitted.job, verb), submitted.job.to_doc()


def list_jobs(args: argparse.Namespace, client: FleetClient) -> Shown:
    if args.all:
        page = listing.JobPage(items=list(client.iter_jobs(args.product, args.stage, page_size=min(args.limit, 500))))
    else:
        page = client.list_jobs(args.product, args.stage, args.limit, args.offset, args.continuation)
    return views.job_list(page), page.to_doc()


def show(args: argparse.Namespace, client: FleetClient) -> Shown:
    job = client.get_job(args.job_id)
    return views.job_detail(job), job.to_doc()


def dag(args: argparse.Namespace, client: FleetClient) -> Shown:
    node = client.get_dag(args.job_id)
    return views.dag_tree(node), node.to_doc()


def action(args: argparse.Namespace, client: FleetClient) -> Shown:
    job = client.action(args.job_id, args.action, reason=args.reason, actor=args.actor)
    return views.job_line(job, f"{args.action}:"), job.to_doc()


def add_children(args: argparse.Namespace, client: FleetClient) -> Shown:
    spec = read_json(args.spec_file)
    children = spec.get("children") if isinstance(spec, dict) else spec
    if not isinstance(children, list) or not children:
        raise Usage('--file must hold a non-empty JSON list of children, or {"children": [...]}')
    result = client.add_children(args.job_id, children)
    lines = [views.job_line(result.parent, "parent:"), *(views.job_line(c, "  child:") for c in result.children)]
    return "\n".join(lines), result.to_doc()


def request_review(args: argparse.Namespace, client: FleetClient) -> Shown:
    job = client.request_review(args.job_id, args.required, args.reviewers)
    return views.job_line(job, "review requested:"), job.to_doc()


def review(args: argparse.Namespace, client: FleetClient) -> Shown:
    job = client.review(args.job_id, args.reviewer, args.decision, args.comment)
    if args.decision == "approve":
        # An approval repeated counts once: the tally says whether this one counted.
        review = job.review or {}
        done = f"approved ({len(review.get('approvals', []))}/{review.get('required')}):"
    else:
        done = {"reject": "rejected:"}.get(args.decision, f"{args.decision}:")
    return views.job_line(job, done), job.to_doc()


#: What a run report holds (`fleetclient.report.Report`, as JSON names it), and the insights
#: the coordinator reads (`fleet.schemas.Insights`).
REPORT_FIELDS = tuple(to_camel(field.name) for field in dataclasses.fields(Report))
KNOWN_INSIGHTS = tuple(schemas.Insights.model_fields)


def report(args: argparse.Namespace, client: FleetClient) -> Shown:
    spec = read_json(args.spec_file) if args.spec_file else {}
    if not isinstance(spec, dict):
        raise Usage(f"--file must hold a JSON object (a run report: {', '.join(REPORT_FIELDS)})")
    # A run is reported once: a misspelt field would be lost, and the right one refused after it.
    misspelt = [f"{k} is spelt {known}" for k, known in _lookalikes(spec, REPORT_FIELDS)]
    insights, artifacts = spec.get("insights", {}), spec.get("artifacts")
    if not isinstance(insights, dict) or not isinstance(artifacts, list | None):
        raise Usage("in --file, insights must be a JSON object and artifacts a list")
    misspelt += [f"insights.{k} is spelt {known}" for k, known in _lookalikes(insights, KNOWN_INSIGHTS)]
    if misspelt:
        raise Usage("in --file, " + ", ".join(misspelt))
    ignored = sorted(set(spec) - set(REPORT_FIELDS))
    if ignored:  # as the runner reads a command's report line: anything else is not a report's
        print(f"fleet: ignoring in --file what a run report does not hold: {', '.join(ignored)}", file=sys.stderr)
    given = {"costUsd": args.cost_usd, "tokensIn": args.tokens_in, "tokensOut": args.tokens_out}
    insights = {**insights, **{name: value for name, value in given.items() if value is not None}}
    pr_url = args.pr_url if args.pr_url is not None else spec.get("prUrl")
    branch = args.branch if args.branch is not None else spec.get("branch")
    if not (insights or pr_url or branch or artifacts):
        raise Usage("nothing to report: give --cost-usd, --tokens-in, --tokens-out, --pr-url, --branch or --file")
    job = client.report_run(
        args.job_id, args.lease_id, insights=insights or None, pr_url=pr_url, branch=branch, artifacts=artifacts
    )
    return views.reported(job, args.lease_id), job.to_doc()


def _lookalikes(given: dict[str, Any], known: tuple[str, ...]) -> list[tuple[str, str]]:
    """The keys of `given` that name one of `known` spelt otherwise (`cost_usd`, `CostUSD`)."""
    def plain(name: str) -> str:
        return re.sub(r"[-_ ]", "", name).casefold()

    meant = {plain(name): name for name in known}
    return [(key, meant[plain(key)]) for key in given if meant.get(plain(key), key) != key]


def budget(args: argparse.Namespace, client: FleetClient) -> Shown:
    if args.budgets_command == "set" and args.ceiling is None and args.window is None and args.default_estimate is ...:
        raise Usage("give at least one of --ceiling, --window, --default-estimate, --no-default-estimate")
    calls = {
        "show": lambda: client.get_budget(args.product),
        "set": lambda: client.put_budget(args.product, args.ceiling, args.window, args.default_estimate),
        "pause": lambda: client.pause_budget(args.product, args.reason),
        "resume": lambda: client.resume_budget(args.product),
    }
    result = calls[args.budgets_command]()
    return views.budget(result), result.to_doc()


def weights_show(args: argparse.Namespace, client: FleetClient) -> Shown:
    view = client.get_weights(args.product)
    return views.weights(view), view.to_doc()


def weights_set(args: argparse.Namespace, client: FleetClient) -> Shown:
    names = ("age", "priority", "retries", "capabilities")
    given = {name: getattr(args, name) for name in names}
    reset = args.reset or []
    unknown = sorted(set(reset) - set(names))
    if unknown:
        raise Usage(f"--reset names weights ({', '.join(names)}), not {', '.join(unknown)}")
    both = sorted(name for name in reset if given[name] is not None)
    if both:
        raise Usage(f"{', '.join(both)}: set a weight or --reset it, not both")
    if all(value is None for value in given.values()) and not reset:
        raise Usage("give at least one of --age, --priority, --retries, --capabilities, --reset")
    view = client.put_weights(args.product, reset=reset, **given)
    return views.weights(view), view.to_doc()


def factories(args: argparse.Namespace, client: FleetClient) -> Shown:
    items = client.list_factories()
    return views.factory_table(items), {"items": [f.to_doc() for f in items]}


def queue_state(args: argparse.Namespace, client: FleetClient) -> Shown:
    state = client.queue_state(args.product)
    return views.queue_version(state), state.to_doc()


def read_text(path: str) -> str:
    """A file's text; `-` is stdin."""
    if path == "-":
        return sys.stdin.read()
    with open(path, encoding="utf-8") as file:
        return file.read()


def read_json(path: str) -> Any:
    """The JSON in a file (`-`: stdin), read as strictly as the coordinator reads a body
    (`shared.strict_json`: no NaN, infinities or unsafe integers, which Python's parser takes
    and no request may carry; no key twice)."""
    text = read_text(path)
    try:
        return strict_json.loads(text, subject="file")
    except errors.ValidationFailed as exc:
        raise Usage(f"{path}: {exc.detail}") from None
