"""Stages, priorities, run and claim outcomes, and which stage changes a factory may make."""
from __future__ import annotations

from enum import Enum

from fleet import errors


class Stage(str, Enum):
    QUEUED = "queued"  # waiting for a factory to claim it
    BLOCKED = "blocked"  # waiting for its deps (or a composite's children) to ship
    ASSIGNED = "assigned"  # claimed: a factory holds its lease and is about to start
    BUILDING = "building"  # the factory's agent is working on it
    REVIEW = "review"  # the agent's work is under the factory's own review
    TESTING = "testing"  # verifying; lease-free here it rests at the human review gate
    SHIPPED = "shipped"  # delivered (terminal)
    DONE = "done"  # finished with nothing to ship, e.g. a composite or an analysis (terminal)
    FAILED = "failed"  # given up on by a factory or rejected by an operator (terminal)
    DEAD_LETTER = "dead_letter"  # ran out of attempts; needs an operator (terminal)
    CANCELLED = "cancelled"  # withdrawn by an operator (terminal)


#: Stages in which a factory may hold the job's lease.
ACTIVE = frozenset({Stage.ASSIGNED, Stage.BUILDING, Stage.REVIEW, Stage.TESTING})
#: Stages only an operator `requeue` leaves.
TERMINAL = frozenset({Stage.SHIPPED, Stage.DONE, Stage.FAILED, Stage.DEAD_LETTER, Stage.CANCELLED})
#: Stages that satisfy a dependency.
FINISHED = frozenset({Stage.SHIPPED, Stage.DONE})
#: The forward order of the work stages; a factory may skip ahead but only go back review → building.
WORK_ORDER = (Stage.ASSIGNED, Stage.BUILDING, Stage.REVIEW, Stage.TESTING)


class Priority(str, Enum):
    LOW = "low"  # whenever there is spare capacity
    NORMAL = "normal"  # the default
    HIGH = "high"  # ahead of normal work
    CRITICAL = "critical"  # ahead of everything; may preempt lower work at a seat limit

    @property
    def order(self) -> int:
        """0..3, the `priorityOrder` of the score."""
        return _PRIORITY_ORDER[self]


_PRIORITY_ORDER = {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2, Priority.CRITICAL: 3}


class RunResult(str, Enum):
    SHIPPED = "shipped"  # the run's work shipped
    DONE = "done"  # the run finished its job with nothing to ship
    FAILED = "failed"  # the factory gave up on the job
    RETRY = "retry"  # the run failed; the job goes back to the queue with one attempt more
    EXPIRED = "expired"  # the factory stopped renewing the lease; counted as an attempt
    PREEMPTED = "preempted"  # evicted for a critical job; resumes from its checkpoint
    CANCELLED = "cancelled"  # the job was cancelled or rejected while the run held it
    RELEASED = "released"  # the factory gave the job back, or an operator requeued it


class ClaimReason(str, Enum):
    """Why a claim took no job: the `reason` of `POST /fleet/claim`'s `{job: null, reason}`, and
    of the 409 `not_claimable` problem of `POST /fleet/jobs/{id}/claim`. (Here beside the other
    outcomes because the budget rules name their refusals in it too.)"""

    NO_JOB = "no_job"  # nothing queued that this factory can do; poll again later
    SEAT_LIMIT = "seat_limit"  # the factory is at its seat limit and nothing may be preempted for the job
    BUDGET_PAUSED = "budget_paused"  # the product's budget is paused (by an operator, or by its ceiling)
    BUDGET_EXCEEDED = "budget_exceeded"  # spend (with in-flight estimates) leaves no room for the job
    NOT_QUEUED = "not_queued"  # a named job: it is not waiting in the queue
    CAPABILITIES = "capabilities"  # a named job: the factory lacks a capability it requires
    LOST_RACE = "lost_race"  # a named job: another factory claimed it first
    RETRY_WAIT = "retry_wait"  # a named job: it waits out its retry backoff (`retryAt`)


def check_factory_move(current: Stage, target: Stage) -> None:
    """A lease holder's PATCH: forward within assigned → building → review → testing (skipping
    allowed), review → building for rework, the same stage (a note), or testing → shipped
    (autoship). Raises `IllegalTransition` otherwise."""
    if current not in ACTIVE:
        raise errors.IllegalTransition(f"a job in {current.value} has no work stage to change")
    if target == current:
        return
    if target == Stage.SHIPPED and current == Stage.TESTING:
        return
    if target in WORK_ORDER and WORK_ORDER.index(target) > WORK_ORDER.index(current):
        return
    if current == Stage.REVIEW and target == Stage.BUILDING:
        return
    raise errors.IllegalTransition(f"{current.value} → {target.value} is not a move a factory may make")
