"""Who is asking: a principal with one role, optionally limited to some products and, for a
factory, bound to one factory id; and the one table of which permissions each role holds.

Every request acts as a principal (a bearer token's, Easy Auth's on Azure, or `ANONYMOUS`
when auth is off). A trigger declares the permission its operation needs; use cases receive
the principal in their context and decide with it like any other fact: what it may see
(`sees`), whose factory it speaks for (`speaks_for`), and the actor its events record.

Outside its products a principal meets `NotFound` for whatever exists there (a job, its DAG,
queue-state, weights, a budget: `reach`), so existence does not leak, and `Forbidden` for
putting work into one (a submit, a claim, a heartbeat naming it: `enter`), where the product
is its own word and refusing tells it nothing new.
"""
from __future__ import annotations

import re
from enum import Enum

from fleet import errors
from fleet.jobs import Model

# Anchored for JSON Schema and pydantic, as `fleet.jobs.PRODUCT_ID`; in Python, `fullmatch`.
#: A factory id: it is the id of the factory's document, and Cosmos DB takes no `/`, `\\`,
#: `?` or `#` in one (nor could a route's `{id}` hold a `/`).
FACTORY_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"
#: What no principal's name holds: control characters (C0, DEL, C1), zero-width, blank-looking
#: (soft hyphen, fillers) and direction marks, line and paragraph separators, the byte-order
#: mark (tag characters, beyond the Basic Multilingual Plane, are not listed). A name shows
#: in events, pages and logs, and one of these would make two names look alike or break the
#: line.
_UNSEEN = r"\x00-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2069\u3164\ufeff\uffa0"
#: A principal's name, as tokens and Easy Auth give it ("Ann Smith", "bootstrap admin"): up to
#: 100 characters, none of `_UNSEEN`, no space at either end.
PRINCIPAL_NAME = rf"^[^\s{_UNSEEN}](?:[^{_UNSEEN}]{{0,98}}[^\s{_UNSEEN}])?$"
_UNSEEN_RE = re.compile(f"[{_UNSEEN}]")
_PRINCIPAL_NAME_RE = re.compile(PRINCIPAL_NAME)
_FACTORY_ID_RE = re.compile(FACTORY_ID)


def is_factory_id(value: str) -> bool:
    """Whether the whole of `value` is a factory id (`"f1\n"` is not)."""
    return _FACTORY_ID_RE.fullmatch(value) is not None


def is_principal_name(value: str) -> bool:
    """Whether the whole of `value` is a principal's name."""
    return _PRINCIPAL_NAME_RE.fullmatch(value) is not None


def fitted_name(given: str) -> str | None:
    """A name a platform gave (Easy Auth's display name) as a principal's name: without what
    no name holds, cut to 100 characters and trimmed; None if that leaves none."""
    name = _UNSEEN_RE.sub("", given)[:100].strip()
    return name if is_principal_name(name) else None


class Role(str, Enum):
    ADMIN = "admin"  # everything, including managing tokens and running timers
    OPERATOR = "operator"  # submit, read, operator actions, review-gate requests, weights, budgets
    SUBMITTER = "submitter"  # submit jobs and add children, read: a CI system or controller
    REVIEWER = "reviewer"  # read, and review decisions in its own name
    FACTORY = "factory"  # claim and heartbeat as its own factory id, write the leases it holds, read
    VIEWER = "viewer"  # read only


class Permission(str, Enum):
    READ = "read"  # jobs, DAGs, factories, queue-state, weights, budgets
    SUBMIT = "submit"  # submit jobs, add children to a composite
    OPERATE = "operate"  # operator actions: requeue, reject, cancel, ship
    REQUEST_REVIEW = "request_review"  # open the review gate on a parked job
    REVIEW = "review"  # approve or reject at the review gate, as oneself
    WORK = "work"  # claim, heartbeat, and PATCH or release the leases one holds
    SET_WEIGHTS = "set_weights"  # change a product's scoring weights
    MANAGE_BUDGETS = "manage_budgets"  # set, pause and resume a product's budget
    MANAGE_TOKENS = "manage_tokens"  # create, list and revoke API tokens
    RUN_TIMERS = "run_timers"  # run a timer function now (the admin endpoint)


#: The one table: what each role may do.
GRANTS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.OPERATOR: frozenset(
        {
            Permission.READ,
            Permission.SUBMIT,
            Permission.OPERATE,
            Permission.REQUEST_REVIEW,
            Permission.SET_WEIGHTS,
            Permission.MANAGE_BUDGETS,
        }
    ),
    Role.SUBMITTER: frozenset({Permission.READ, Permission.SUBMIT}),
    Role.REVIEWER: frozenset({Permission.READ, Permission.REVIEW}),
    Role.FACTORY: frozenset({Permission.READ, Permission.WORK}),
    Role.VIEWER: frozenset({Permission.READ}),
}

#: Roles that see every job's lease id (a lease id is a write capability): beyond these, only
#: the factory holding the lease sees it.
SEE_LEASES = frozenset({Role.ADMIN, Role.OPERATOR})


class Principal(Model):
    """Who a request acts as. `products` None: every product; a tuple: only those."""

    #: The token's id, or the platform's user id under Easy Auth.
    id: str
    #: What events record as the actor.
    name: str
    role: Role
    products: tuple[str, ...] | None = None
    #: The one factory a `factory` principal speaks for.
    factory_id: str | None = None

    def can(self, permission: Permission) -> bool:
        return permission in GRANTS[self.role]

    def require(self, permission: Permission) -> None:
        """`Forbidden`, naming the permission, unless this principal holds it."""
        if not self.can(permission):
            raise errors.Forbidden(
                f"{'an' if self.role.value[0] in 'aeiou' else 'a'} {self.role.value} principal lacks the "
                f"{permission.value!r} permission",
                permission=permission.value,
            )

    def sees(self, product_id: str | None) -> bool:
        """Whether this principal may see or touch the product (None: not a product's)."""
        return self.products is None or product_id in self.products

    def speaks_for(self, factory_id: str) -> bool:
        """Whether this principal may claim and heartbeat as `factory_id`: a factory principal
        only as its own id; operators and admins as any factory (tools and tests)."""
        if self.role == Role.FACTORY:
            return self.factory_id == factory_id
        return self.can(Permission.WORK)

    def reach(self, product_id: str | None, missing: str) -> None:
        """`NotFound` (with `missing` as its detail) unless this principal sees the product: a
        scoped principal learns nothing of another product's jobs, weights or budget."""
        if not self.sees(product_id):
            raise errors.NotFound(missing)

    def enter(self, product_id: str) -> None:
        """`Forbidden` unless this principal may put work into the product (a submit, a claim,
        a heartbeat naming it): the product is the caller's own word, so nothing leaks."""
        if not self.sees(product_id):
            raise errors.Forbidden(f"this principal is limited to other products than {product_id}", product=product_id)

    def act_as_factory(self, factory_id: str) -> None:
        """`Forbidden` unless this principal may claim and heartbeat as `factory_id`."""
        if not self.speaks_for(factory_id):
            raise errors.Forbidden(f"this principal does not speak for factory {factory_id}", factory=factory_id)

    def holds(self, factory_id: str | None) -> bool:
        """Whether this principal may write a lease held by `factory_id`: a factory principal
        only its own factory's; anyone else with the permission any (tools and tests)."""
        return self.role != Role.FACTORY or factory_id == self.factory_id

    def actor(self, claimed: str | None = None) -> str | None:
        """The actor an event records: the principal's name. Only with auth off (`ANONYMOUS`)
        does the caller's own word (`claimed`) count, as it did before principals."""
        return claimed if self == ANONYMOUS else self.name

    def sees_lease_of(self, factory_id: str | None) -> bool:
        """Whether this principal may see the id of a lease held by `factory_id`."""
        return self.role in SEE_LEASES or (self.role == Role.FACTORY and factory_id == self.factory_id)


#: The principal of every request when auth is off (`FLEET_AUTH=off`): an admin.
ANONYMOUS = Principal(id="anonymous", name="anonymous", role=Role.ADMIN)
