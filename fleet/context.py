"""What every use case is given: a store, a clock, the settings, and who is asking. No
environment, no I/O beyond the store."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from fleet.clock import Clock, SystemClock
from fleet.principals import ANONYMOUS, Principal
from fleet.store import Store


@dataclass(frozen=True)
class Settings:
    #: How long a lease lasts without a renewal (`FLEET_LEASE_SECONDS`).
    lease_seconds: int = 300
    #: How long a job released with `result: retry` waits before a claim may take it again,
    #: after its first failed attempt (`FLEET_RETRY_BACKOFF_SECONDS`; 0: claimable at once),
    #: doubling with each attempt after it, at most `retry_backoff_max_seconds`
    #: (`FLEET_RETRY_BACKOFF_MAX_SECONDS`). The sweep moves it back within a minute of its time.
    retry_backoff_seconds: int = 30
    retry_backoff_max_seconds: int = 900
    #: Seat limits enforced, critical jobs may preempt (`FLEET_PREEMPTION`).
    preemption: bool = False
    #: Per-product USD ceilings enforced (`FLEET_BUDGETS`).
    budgets: bool = False
    #: A running job younger than this cannot be preempted (`FLEET_PREEMPT_EXEMPT_SECONDS`).
    preempt_exempt_seconds: int = 0
    #: Candidates read per page by a claim.
    claim_page: int = 32
    #: Candidates the first page of a claim's rank-key stream reads, and of each capability-set
    #: stream's it narrows to, at most `claim_page`: the page that settles an ordinary claim
    #: (each candidate read costs about as much as the write that takes one; what a first page
    #: does not settle, a claim that lost races to it, reads on `claim_page` at a time).
    claim_first_page: int = 4
    #: How old a product's weights, as this process last read them, an ordinary claim may rank
    #: with instead of reading them again (`FLEET_CLAIM_WEIGHTS_SECONDS`; 0, the default: read
    #: every time, and the claim order is exact). See `weight_registry._recent` for what a
    #: window costs in exactness.
    claim_weights_seconds: int = 0
    #: A last-alive stamp older than this (the sweep renews it every minute) shows an outage
    #: gap still open: the coordinator, or its timer, stopped (see `fleet.outage`).
    outage_grace_seconds: int = 180
    #: How long a process trusts a token's record it read before reading it again
    #: (`FLEET_TOKEN_RECHECK_SECONDS`; 0: on every request). A token revoked elsewhere works
    #: on this process until then; its secret and expiry are checked on every request.
    token_recheck_seconds: int = 60


@dataclass(frozen=True)
class Context:
    store: Store
    clock: Clock = field(default_factory=SystemClock)
    settings: Settings = field(default_factory=Settings)
    #: Who the request acts as; `ANONYMOUS` (an admin) when auth is off, and for timers.
    principal: Principal = ANONYMOUS

    def acting_as(self, principal: Principal) -> "Context":
        """This context for one request of `principal`."""
        return dataclasses.replace(self, principal=principal)
