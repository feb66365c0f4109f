"""The `fleet` CLI's operator and factory commands (registered in `shared/devhost/cli.py`).

    fleet jobs submit|list|show|dag|action|add-children|request-review|review|report
    fleet budgets show|set|pause|resume
    fleet weights show|set
    fleet factories
    fleet queue-state --product P
    fleet factory run --factory-id F --product P [...] -- COMMAND…

Every command talks to `--url` (default `FLEET_URL`, else http://127.0.0.1:7071) with `--token`
(default `FLEET_TOKEN`, sent as `Authorization: Bearer`) and `--key` (default `FLEET_KEY`),
prints a table (or `--json`: the coordinator's answer as sent), and exits 0 on success, 1 when
the coordinator refuses (its code and detail on stderr; with `--json` the problem document on
stdout too), 3 when it cannot be reached, 2 on a usage error.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from enum import Enum

from fleet import actions, budget_rules, jobs, principals, schemas, stages

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3



def _values(kind: type[Enum]) -> list[str]:
    """The members of one of the coordinator's closed sets, as the CLI takes them."""
    return [member.value for member in kind]


def add_global(parser: argparse.ArgumentParser) -> None:
    """The connection options before the command too (`fleet --url U jobs list`); given after
    it as well, the command's win."""
    _connection_options(parser, {"url": None, "token": None, "key": None, "timeout": 30.0})


def _connection_options(parser: argparse.ArgumentParser, defaults: dict[str, object]) -> None:
    """`--url`, `--token`, `--key`, `--timeout`, defaulting as `defaults` says (a command's
    parsers leave them unset when not given, so that the options before the command hold)."""
    parser.add_argument("--url", default=defaults["url"],
                        help="coordinator base URL (default: $FLEET_URL, else http://127.0.0.1:7071)")
    parser.add_argument("--token", default=defaults["token"],
                        help="API token, sent as Authorization: Bearer (default: $FLEET_TOKEN)")
    parser.add_argument("--key", default=defaults["key"], help="function key, sent as x-functions-key (default: $FLEET_KEY)")
    parser.add_argument("--timeout", type=_positive_seconds, default=defaults["timeout"],
                        help="seconds to wait for an answer (default 30)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    connection = argparse.ArgumentParser(add_help=False)
    _connection_options(connection, dict.fromkeys(("url", "token", "key", "timeout"), argparse.SUPPRESS))
    common = argparse.ArgumentParser(add_help=False, parents=[connection])
    common.add_argument("--json", action="store_true", help="print the coordinator's JSON answer")
    _add_jobs(subparsers, common)
    _add_budgets(subparsers, common)
    _add_weights(subparsers, common)
    parser = subparsers.add_parser("factories", parents=[common], help="list factories with health and seats")
    parser.set_defaults(run=_command("factories"))
    parser = subparsers.add_parser("queue-state", parents=[common], help="a product's queue-state version")
    parser.add_argument("--product", "-p", required=True, help="product id")
    parser.set_defaults(run=_command("queue_state"))
    _add_factory(subparsers, connection)


# Parsers


def _add_jobs(subparsers, common) -> None:
    job_commands = subparsers.add_parser("jobs", help="submit, list, show and act on jobs").add_subparsers(
        dest="jobs_command", required=True, metavar="SUBCOMMAND")

    p = job_commands.add_parser("submit", parents=[common], help="submit a job (idempotent by --idempotency-key)",
                                description="Submit a job. Fields come from --file (the API's JSON body) and the "
                                            "options, options winning. Submitting the same --idempotency-key again "
                                            "returns the existing job; without one a random key is used.")
    p.add_argument("--product", "-p", help="product id")
    p.add_argument("--idempotency-key", "-k", help="idempotency key (unique per product)")
    p.add_argument("--title", "-t")
    body = p.add_mutually_exclusive_group()
    body.add_argument("--body", help="Markdown body")
    body.add_argument("--body-file", help="read the Markdown body from a file ('-': stdin)")
    p.add_argument("--priority", choices=_values(stages.Priority))
    p.add_argument("--capabilities", "-c", type=_csv, help="required capabilities, comma-separated")
    p.add_argument("--deps", type=_csv, help="idempotency keys of jobs this one waits for, comma-separated")
    p.add_argument("--max-attempts", type=int)
    p.add_argument("--repo", help="owner/name or a clone URL (PR mode)")
    p.add_argument("--base-branch")
    p.add_argument("--estimated-cost", type=_amount, dest="estimated_cost_usd", help="USD")
    p.add_argument("--kind", choices=_values(jobs.Kind))
    p.add_argument("--file", "-f", dest="spec_file", help="a JSON job body (with children, ...); '-': stdin")
    p.set_defaults(run=_command("submit"))

    p = job_commands.add_parser("list", parents=[common], help="list jobs, newest first")
    p.add_argument("--product", "-p")
    p.add_argument("--stage", "-s", choices=_values(stages.Stage))
    p.add_argument("--limit", "-n", type=int, default=50)
    pages = p.add_mutually_exclusive_group()
    pages.add_argument("--offset", type=int)
    pages.add_argument("--continuation")
    pages.add_argument("--all", action="store_true", help="follow every page")
    p.set_defaults(run=_command("list_jobs"))

    p = job_commands.add_parser("show", parents=[common], help="a job with its runs and events")
    p.add_argument("job_id", metavar="ID", type=_job_id)
    p.set_defaults(run=_command("show"))

    p = job_commands.add_parser("dag", parents=[common], help="a job and its descendants as a tree")
    p.add_argument("job_id", metavar="ID", type=_job_id)
    p.set_defaults(run=_command("dag"))

    p = job_commands.add_parser("action", parents=[common], help="requeue, reject, cancel or ship a job")
    p.add_argument("job_id", metavar="ID", type=_job_id)
    p.add_argument("action", choices=_values(actions.Action))
    p.add_argument("--reason", "-r")
    p.add_argument("--actor", default=_default_actor(), help="who acts (default: $USER)")
    p.set_defaults(run=_command("action"))

    p = job_commands.add_parser("add-children", parents=[common], help="add child jobs to a job")
    p.add_argument("job_id", metavar="ID", type=_job_id)
    p.add_argument("--file", "-f", dest="spec_file", required=True,
                   help="JSON: a list of child bodies, or {\"children\": [...]}; '-': stdin")
    p.set_defaults(run=_command("add_children"))

    p = job_commands.add_parser("request-review", parents=[common], help="open the review gate on a testing job")
    p.add_argument("job_id", metavar="ID", type=_job_id)
    p.add_argument("--required", type=int, default=1, help="approvals needed (default 1)")
    p.add_argument("--reviewers", type=_csv, help="only these may review, comma-separated")
    p.set_defaults(run=_command("request_review"))

    p = job_commands.add_parser("review", parents=[common], help="approve or reject a job under review")
    p.add_argument("job_id", metavar="ID", type=_job_id)
    p.add_argument("decision", choices=_values(schemas.Decision))
    p.add_argument("--reviewer", help="who reviews: the token's own principal (the default); needed only "
                                      "against a coordinator with auth off")
    p.add_argument("--comment", "-m")
    p.set_defaults(run=_command("review"))

    p = job_commands.add_parser(
        "report", parents=[common], help="report what a run did after its lease was taken",
        description="Report a run's cost and results once its lease was taken from it (preempted, expired, "
                    "given back by an operator), so that its cost reaches the budget: what `fleet factory "
                    "run` does by itself, for a factory that stopped before it could. Fields come from "
                    "--file (the run report a factory command prints on its last line: {insights, prUrl, "
                    "branch, artifacts}; anything else in it is ignored, as the runner ignores it, but a "
                    "misspelling of these is refused) and the options, options winning. The same report "
                    "again counts nothing more. Run it with the factory's token (or an admin's).")
    p.add_argument("job_id", metavar="ID", type=_job_id)
    p.add_argument("--lease-id", "-l", required=True,
                   help="the lease the run was held under (`fleet jobs show ID --json`: runs[].leaseId)")
    p.add_argument("--cost-usd", type=_amount, help="what the run cost, USD")
    p.add_argument("--tokens-in", type=_count)
    p.add_argument("--tokens-out", type=_count)
    p.add_argument("--pr-url")
    p.add_argument("--branch")
    p.add_argument("--file", "-f", dest="spec_file", help="a JSON run report; '-': stdin")
    p.set_defaults(run=_command("report"))


def _add_budgets(subparsers, common) -> None:
    budgets = subparsers.add_parser("budgets", help="per-product spend ceilings").add_subparsers(
        dest="budgets_command", required=True, metavar="SUBCOMMAND")
    for name, help_text in (("show", "a product's budget and spend"), ("pause", "stop claims for a product"),
                            ("resume", "lift a manual pause")):
        p = budgets.add_parser(name, parents=[common], help=help_text)
        p.add_argument("product", metavar="PRODUCT")
        if name == "pause":
            p.add_argument("--reason", "-m", help="why, shown with the pause (up to 500 characters)")
        p.set_defaults(run=_command("budget"))
    p = budgets.add_parser("set", parents=[common], help="set a product's ceiling, window or default estimate")
    p.add_argument("product", metavar="PRODUCT")
    p.add_argument("--ceiling", type=_amount, help="USD per window (left out: kept; a new budget must name one)")
    p.add_argument("--window", choices=_values(budget_rules.Window),
                   help="UTC calendar window (left out: kept; a new budget's is monthly)")
    estimate = p.add_mutually_exclusive_group()
    estimate.add_argument("--default-estimate", type=_amount, metavar="USD", default=...,
                          help="what a claim reserves for a job that names no cost (left out: kept as it is)")
    estimate.add_argument("--no-default-estimate", dest="default_estimate", action="store_const", const=None,
                          help="reserve nothing for jobs that name no cost")
    p.set_defaults(run=_command("budget"))


def _add_weights(subparsers, common) -> None:
    weights = subparsers.add_parser("weights", help="a product's claim scoring weights").add_subparsers(
        dest="weights_command", required=True, metavar="SUBCOMMAND")
    p = weights.add_parser("show", parents=[common], help="the product's weights and the resolved set")
    p.add_argument("product", metavar="PRODUCT")
    p.set_defaults(run=_command("weights_show"))
    p = weights.add_parser("set", parents=[common], help="set some weights (the rest keep their values)")
    p.add_argument("product", metavar="PRODUCT")
    for name in ("age", "priority", "retries", "capabilities"):
        p.add_argument(f"--{name}", type=_number)
    p.add_argument("--reset", type=_csv, metavar="NAMES", help="comma-separated weights back to their defaults")
    p.set_defaults(run=_command("weights_set"))


def _add_factory(subparsers, connection) -> None:
    factory = subparsers.add_parser("factory", help="run a factory").add_subparsers(
        dest="factory_command", required=True, metavar="SUBCOMMAND")
    p = factory.add_parser(
        "run", parents=[connection], help="claim jobs and run COMMAND for each",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Claim jobs of a product and run COMMAND once per job, in its own working directory,\n"
                    "with FLEET_JOB_ID, FLEET_JOB_FILE (the job as JSON), FLEET_RUN_ID, FLEET_CHECKPOINT_FILE\n"
                    "in its environment. Exit 0 → testing (then shipped with AQ_FLEET_AUTOSHIP=1, else parked\n"
                    "for review); non-zero → released for retry. A JSON object on its last stdout line\n"
                    "({insights, prUrl, branch, artifacts}) is reported with the result.\n\n"
                    "Environment: AQ_FLEET_AUTOSHIP, AQ_FLEET_GATE (RU gate), AQ_FLEET_PR (PR mode),\n"
                    "AQ_FLEET_GIT_BASE (where owner/name repos are cloned from). SIGTERM drains.",
        usage="fleet factory run --factory-id F --product P [options] -- COMMAND...")
    p.add_argument("--factory-id", required=True)
    p.add_argument("--product", "-p", required=True)
    p.add_argument("--capabilities", "-c", type=_csv, default=[], help="comma-separated")
    p.add_argument("--seats", type=_at_least_one, default=1, help="jobs run at once (default 1)")
    p.add_argument("--max-jobs", type=_at_least_one, help="claim at most N jobs, then finish them and exit")
    p.add_argument("--once", action="store_true", help="one job, then exit (--max-jobs 1)")
    p.add_argument("--exit-when-idle", action="store_true", help="exit once a claim finds no job and none runs")
    p.add_argument("--poll-seconds", type=_positive_seconds, default=5.0, help="between claims when idle (default 5, jittered)")
    p.add_argument("--backstop-polls", type=_at_least_one, default=12, help="with the gate: claim anyway every Nth poll")
    p.add_argument("--drain-seconds", type=_duration, default=30.0,
                   help="on SIGTERM: how long running jobs may finish before being given back (default 30)")
    p.add_argument("--kill-grace", type=_duration, default=10.0, help="SIGTERM → SIGKILL grace for a stopped command")
    p.add_argument("--workdir-root", help="where job working directories are made (default: the temp dir)")
    p.add_argument("--keep-workdirs", action="store_true", help="keep job working directories afterwards")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    p.set_defaults(run=_factory_run)


def _factory_run(args: argparse.Namespace) -> int:
    import logging

    from fleetclient.client import FleetClient
    from fleetclient.runner import Runner, RunnerConfig

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("fleet factory run: give the command to run per job after --", file=sys.stderr)
        return EXIT_USAGE
    if args.once and args.max_jobs is not None and args.max_jobs != 1:
        print(f"fleet factory run: --once is --max-jobs 1; give one or the other, not --max-jobs {args.max_jobs}",
              file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    config = RunnerConfig(
        factory_id=args.factory_id, product_id=args.product, command=tuple(command),
        capabilities=tuple(args.capabilities), seats=args.seats, max_jobs=1 if args.once else args.max_jobs,
        poll_seconds=args.poll_seconds, exit_when_idle=args.exit_when_idle, backstop_polls=args.backstop_polls,
        drain_seconds=args.drain_seconds, kill_grace_seconds=args.kill_grace, workdir_root=args.workdir_root,
        keep_workdirs=args.keep_workdirs, **RunnerConfig.flags_from(os.environ),
    )
    from fleetclient import errors

    with FleetClient(args.url, args.key, timeout=(5.0, args.timeout), token=args.token) as client:
        try:
            runner = Runner(client, config)
        except ValueError as exc:  # the command cannot be run: claim nothing
            print(f"fleet factory run: {exc}", file=sys.stderr)
            return EXIT_USAGE
        try:  # a wrong FLEET_URL ends here, as for any command; later outages are waited out
            client.health()
        except errors.FleetUnreachable as exc:
            print(f"fleet factory run: cannot reach the coordinator at {client.url}: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE
        except errors.FleetApiError as exc:
            print(f"fleet factory run: {client.url} is not a coordinator ({exc.status} on /fleet/health)",
                  file=sys.stderr)
            return EXIT_UNREACHABLE
        return runner.run()


# Plumbing


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    """The `run` of an operator command: make the client, call `handlers.<name>`, print its
    text (or `--json` its document), and map errors to exit codes."""

    def run(args: argparse.Namespace) -> int:
        from fleetclient import errors, handlers
        from fleetclient.client import FleetClient

        try:
            with FleetClient(args.url, args.key, timeout=(5.0, args.timeout), token=args.token) as client:
                text, doc = getattr(handlers, name)(args, client)
        except handlers.Usage as exc:
            print(f"fleet: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except errors.FleetUnreachable as exc:
            print(f"fleet: cannot reach the coordinator: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE
        except errors.FleetApiError as exc:
            _refused(args, exc)
            return EXIT_REFUSED
        except OSError as exc:  # --file / --body-file
            print(f"fleet: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(json.dumps(doc, indent=2) if args.json else text)
        return 0

    return run


def _refused(args: argparse.Namespace, exc) -> None:
    from fleetclient import errors

    if isinstance(exc, errors.FeatureDisabled) and args.command == "budgets":
        message = "budgets are turned off on this coordinator (start it with FLEET_BUDGETS=1 to use them)"
    elif isinstance(exc, errors.NotFound) and args.command == "budgets":
        # The same 404 answers a product out of the token's reach, so that it learns nothing.
        message = (f"product {args.product} has no budget yet (or is not this token's to see); "
                   f"an operator sets one with: fleet budgets set {args.product} --ceiling USD")
    else:
        message = exc.detail or exc.title or "refused"
    print(f"fleet: error: {exc.status} {exc.code}: {message}", file=sys.stderr)
    for field in exc.errors:
        name = field.get("field") or ".".join(str(p) for p in field.get("loc", [])) or "(body)"
        print(f"  {name}: {field.get('message') or field.get('msg')}", file=sys.stderr)
    if args.json:
        print(json.dumps(exc.problem or {"status": exc.status, "code": exc.code, "detail": exc.detail}, indent=2))


def _job_id(text: str) -> str:
    """A job id as given (the coordinator says whether there is such a job); an empty one
    would name another route."""
    if not text.strip():
        raise argparse.ArgumentTypeError("a job id is required (PRODUCT:ID, as `fleet jobs list` shows)")
    return text


def _finite(text: str, what: str, least: float | None = None, above: bool = False) -> float:
    """`text` as a finite number, at least `least` (above it, with `above`), else refused as
    not `what` (argparse names the option)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    low = least is not None and (value <= least if above else value < least)
    if not math.isfinite(value) or low:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def _amount(text: str) -> float:
    """A finite amount, 0 or more."""
    return _finite(text, "an amount (a number, 0 or more)", 0)


def _number(text: str) -> float:
    """A finite number, of either sign (a weight)."""
    return _finite(text, "a finite number")


def _duration(text: str) -> float:
    """Finite seconds, 0 or more."""
    return _finite(text, "a number of seconds, 0 or more", 0)


def _positive_seconds(text: str) -> float:
    """Finite seconds, more than 0."""
    return _finite(text, "a number of seconds above 0", 0, above=True)


def _count(text: str) -> int:
    """A whole number, 0 or more."""
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (a whole number, 0 or more)")
    return int(text)


def _at_least_one(text: str) -> int:
    """A whole number, 1 or more."""
    count = _count(text)
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not at least 1")
    return count


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _default_actor() -> str | None:
    user = os.environ.get("USER") or os.environ.get("USERNAME")
    return user if user and principals.is_principal_name(user) else None
