"""The ``fleet`` command line (``fleet = shared.devhost.cli:main``; also ``python -m shared.devhost.cli``).

Only ``fleet serve`` lives here. Every other sub-command lives in its own module, listed in
``COMMAND_MODULES``, which defines::

    def add_parser(subparsers: argparse._SubParsersAction) -> None:
        parser = subparsers.add_parser("jobs", help="list and act on jobs")
        parser.add_argument(...)
        parser.set_defaults(run=run_jobs)   # run_jobs(args: argparse.Namespace) -> int

A module may also define ``add_global(parser)``, for options its commands take before the
command name as well (the connection options: ``fleet --url U jobs list``).

A command that has sub-commands of its own (``fleet factory run``) adds a nested
``add_subparsers`` and sets ``run`` on each leaf. ``run`` returns the exit code. Keep heavy
imports inside ``run``: every module in the list is imported to build ``fleet --help``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from pathlib import Path

# Modules that contribute sub-commands, each with ``add_parser(subparsers)``.
COMMAND_MODULES: tuple[str, ...] = ("fleetclient.commands", "shared.devhost.token_commands")

REPO_ROOT = Path(__file__).resolve().parents[2]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet", description="Fleet control plane.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve_parser(subparsers)
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.add_parser(subparsers)
        if hasattr(module, "add_global"):  # options a module's commands also take before the command
            module.add_global(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return its exit code."""
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): no traceback, and nothing more written to the pipe
        # (Python would try again at exit). The code a command killed by SIGPIPE exits with.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    return code


def _add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="host function_app.py locally over SQLite",
        description="Host the functions registered in function_app.py: HTTP routes, timers on "
                    "their schedules, and POST /admin/functions/{name} to run a timer now. "
                    "Prints 'Listening on http://HOST:PORT' once ready; Ctrl-C stops it.")
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7071, help="port; 0 picks a free one "
                        "(default 7071)")
    parser.add_argument("--db", help="SQLite file (sets FLEET_DB; default .fleet/fleet.db)")
    parser.add_argument("--app", default="function_app:app", metavar="MODULE:ATTR",
                        help="the FunctionApp to host (default function_app:app); the "
                             "host.json next to its module sets the route prefix")
    parser.add_argument("--no-timers", dest="timers", action="store_false",
                        help="do not run timers on their schedules (the admin endpoint still "
                             "runs them)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    parser.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    # The app reads its settings from the environment, so set them before importing it.
    if args.db:
        os.environ["FLEET_DB"] = args.db
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from shared.devhost import hosting, serving

    module_name, _, attribute = args.app.partition(":")
    for root in (os.getcwd(), str(REPO_ROOT)):
        if root not in sys.path:
            sys.path.append(root)
    module = importlib.import_module(module_name)
    app = getattr(module, attribute or "app")
    prefix = hosting.read_route_prefix(Path(module.__file__).parent / "host.json")
    host = hosting.DevHost(app, route_prefix=prefix)
    _bootstrap_admin()
    try:
        timeout = serving.timeout_from_env()
    except ValueError as error:
        print(f"fleet serve: {error}", file=sys.stderr)
        return 2
    try:
        serving.serve(host, args.host, args.port, timers=args.timers, timeout=timeout)
    except OSError as error:
        print(f"fleet serve: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # stopped before it was listening
        pass
    return 0


def _bootstrap_admin() -> None:
    """With auth on and no usable token in the store, mint one admin token, print it once and
    keep it in `admin-token` (mode 0600) beside the SQLite file, so `make run` and the
    README's walk-through work in two commands."""
    from shared import auth, config

    if auth.mode_from(os.environ) == auth.Mode.OFF:
        logging.getLogger("fleet.auth").warning(
            "FLEET_AUTH=off: authentication is OFF, every request acts as an admin. "
            "Never expose this coordinator beyond this machine.")
        return
    token_file = Path(os.environ.get("FLEET_DB") or config.DEFAULT_DB).parent / "admin-token"
    try:
        token = auth.bootstrap(config.context(), token_file)
    except Exception as error:  # the store cannot be reached (yet): serve, answering 503 until it is back
        logging.getLogger("fleet.auth").warning(
            "could not check for an API token (%s: %s); serving without minting one. Requests answer 503 "
            "until the store is back; if it holds no token, restart fleet serve then to mint the admin token.",
            type(error).__name__, error)
        return
    if token is not None:
        print(f"No API token existed: created an admin token, shown this once and kept in {token_file} (mode 0600):\n"
              f"    {token}\n"
              f"Send it as 'Authorization: Bearer <token>' (the fleet CLI and client read FLEET_TOKEN); "
              f"'fleet tokens create --role ...' makes more.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
