"""`fleet tokens create|list|revoke`: API tokens, managed against the store directly.

These talk to the store `fleet serve` uses (`--db`, `FLEET_DB`, `FLEET_STORE=cosmos` and the
`COSMOS_*` settings), not to a coordinator over HTTP: they are how the first tokens are made.
Admins do the same over HTTP with `POST/GET /fleet/tokens` and `DELETE /fleet/tokens/{id}`.

    fleet tokens create --role factory --factory-id gpu-1 --products web --expires-in 30d
    fleet tokens list
    fleet tokens revoke 0123456789abcdef

`create` prints the token once (`--json`: an object with `token`, `id`, `role`, ...); no
command shows it again. Exit codes: 0 done, 1 refused (the reason on stderr), 2 usage.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from datetime import timedelta

_DURATION = re.compile(r"(\d+)\s*([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from fleet.principals import Role

    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--db", help="SQLite file (instead of FLEET_DB; default .fleet/fleet.db); FLEET_STORE=cosmos "
                                    "and COSMOS_* select the Cosmos store instead")
    store.add_argument("--json", action="store_true", help="print JSON")
    commands = subparsers.add_parser("tokens", help="create, list and revoke API tokens (against the store)")
    sub = commands.add_subparsers(dest="tokens_command", required=True, metavar="SUBCOMMAND")
    create = sub.add_parser("create", parents=[store], help="mint a token; it is printed once")
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument("--products", help="comma-separated product ids it is limited to (default: all)")
    create.add_argument("--factory-id", help="the factory a factory token speaks for")
    create.add_argument("--name", help="a name to recognise it by")
    create.add_argument("--expires-in", type=duration, metavar="DURATION", help="e.g. 3600, 90m, 12h, 30d, 2w")
    create.set_defaults(run=_create)
    listing = sub.add_parser("list", parents=[store], help="every token (never the token itself); its last use is known to the hour")
    listing.set_defaults(run=_list)
    revoke = sub.add_parser("revoke", parents=[store], help="revoke a token by id: running coordinators refuse it within FLEET_TOKEN_RECHECK_SECONDS")
    revoke.add_argument("id", help="the token's id (the whole token is taken too, never shown back)")
    revoke.set_defaults(run=_revoke)


def duration(text: str) -> timedelta:
    """`3600`, `90m`, `12h`, `30d`, `2w` as a timedelta."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 3600, 90m, 12h, 30d or 2w")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


#: The option of each field `tokens.check` may refuse.
_OPTIONS = {"factoryId": "--factory-id", "products": "--products", "name": "--name", "expiresIn": "--expires-in"}


def _create(args: argparse.Namespace) -> int:
    from fleet import tokens
    from fleet.principals import Role

    products = [p.strip() for p in args.products.split(",") if p.strip()] if args.products is not None else None

    from fleet import errors

    fields = dict(name=args.name, products=products, factory_id=args.factory_id, expires_in=args.expires_in)
    try:  # before the store is opened: a refused token makes no file
        tokens.check(Role(args.role), **fields)
    except errors.ValidationFailed as refused:  # a usage error: name the option
        field = refused.errors[0]["field"] if refused.errors else ""
        option = _OPTIONS.get(field, field)
        print(f"fleet tokens create: {option}: {refused.detail}", file=sys.stderr)
        return 2
    created = _with_store(args, lambda ctx: tokens.create(ctx, Role(args.role), **fields), creates=True)
    if created is None:
        return 1
    if args.json:
        print(json.dumps(created.to_doc()))
    else:
        print(created.token)
        print(f"token {created.id} ({created.role.value}) created; it is shown this once", file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    from fleet import tokens
    from fleetclient import tables

    listed = _with_store(args, tokens.list_all, creates=False)
    if listed is None:
        return 1
    if args.json:
        print(json.dumps([t.to_doc() for t in listed]))
        return 0
    rows = [(t.id, t.name, t.role, t.products or "all", t.factory_id, t.created_at, t.expires_at, t.last_used_at,
             "revoked" if t.revoked_at else "active") for t in listed]
    print(tables.table(["ID", "NAME", "ROLE", "PRODUCTS", "FACTORY", "CREATED", "EXPIRES", "LAST USED", "STATE"], rows))
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from fleet import tokens

    revoked = _with_store(args, lambda ctx: tokens.revoke(ctx, tokens.id_of(args.id)), creates=False)
    if revoked is None:
        return 1
    if args.json:
        print(json.dumps(revoked.to_doc()))
    else:
        # This command is not the coordinator: a running one trusts the record it last read
        # for FLEET_TOKEN_RECHECK_SECONDS (DELETE /fleet/tokens/{id} takes effect at once there).
        print(f"token {revoked.id} revoked; running coordinators refuse it once they read it again "
              "(within FLEET_TOKEN_RECHECK_SECONDS, 60 by default)")
    return 0


def _with_store(args: argparse.Namespace, act, creates: bool):
    """Run `act(ctx)` over the configured store; None (and the reason on stderr) if refused.
    A SQLite file that does not exist yet is most likely the wrong one (the command run away
    from where `fleet serve` runs): only a command that `creates` makes it, saying so."""
    from fleet import errors
    from fleet.clock import SystemClock
    from fleet.context import Context
    from shared import config

    env = {**os.environ, **({"FLEET_DB": args.db} if args.db else {})}
    new = None
    path = config.sqlite_db(env)  # the file store_from opens, if a SQLite store
    if path is not None and path != ":memory:" and not path.startswith("file:"):  # a URI names no file
        if not os.path.exists(path):
            new = os.path.abspath(path)
            if not creates:
                print(f"fleet tokens: no store at {new}: run this where fleet serve runs, or name its "
                      "file with --db (FLEET_DB)", file=sys.stderr)
                return None
    store = config.store_from(env)
    try:
        done = act(Context(store, SystemClock()))
    except errors.FleetError as error:
        print(f"fleet tokens: {error.code}: {error.detail}", file=sys.stderr)
        return None
    finally:
        store.close()
    if new is not None:
        print(f"fleet tokens: there was no store at {new}; this made one. A coordinator on another "
              "file does not know this token (--db names the file fleet serve uses)", file=sys.stderr)
    return done
