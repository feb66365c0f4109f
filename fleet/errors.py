"""The small set of errors the domain and its stores speak.

Each error's docstring is its default message. `shared/http.py` maps them to problem+json in
one table, by `code`; adapters convert driver errors into these at their edge.
"""
from __future__ import annotations

from enum import Enum
from typing import Any


class FleetError(Exception):
    """The request could not be completed."""

    code = "error"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        self.detail = detail or (self.__doc__ or "").strip()
        self.extra = extra
        super().__init__(self.detail)


# Store-level outcomes (raised by adapters).


class NotFound(FleetError):
    """No such document."""

    code = "not_found"


class Conflict(FleetError):
    """A document with this id already exists."""

    code = "conflict"


class PreconditionFailed(FleetError):
    """The document changed since it was read (ETag mismatch)."""

    code = "precondition_failed"


class StoreFault(str, Enum):
    """Why the store could not serve a call: a 503's `reason`, and health's `store.reason`."""

    #: Locked or throttled by other work; the same call a moment later will likely pass.
    BUSY = "busy"
    #: No answer within the store deadline (`FLEET_STORE_TIMEOUT_SECONDS`): the store stalled.
    TIMEOUT = "timeout"
    #: The store's endpoint could not be connected to (refused, reset, no route).
    UNREACHABLE = "unreachable"
    #: The database takes reads but no writes (file mode, read-only filesystem or account).
    READ_ONLY = "read_only"
    #: No room left to write (disk full, database size limit).
    FULL = "full"
    #: The store refused us (file permissions, a rejected credential).
    DENIED = "denied"
    #: The store cannot be opened or used at all (missing directory, not a database, I/O error).
    UNAVAILABLE = "unavailable"


class StoreBusy(FleetError):
    """The store is throttling or unreachable; retry after a short wait."""

    code = "store_busy"

    def __init__(
        self, detail: str | None = None, retry_after: float = 1.0, reason: StoreFault = StoreFault.BUSY, **extra: Any
    ) -> None:
        super().__init__(detail, reason=reason.value, **extra)
        self.retry_after = retry_after
        self.reason = reason


class StoreUnavailable(FleetError):
    """The store cannot take writes now (read-only, full, refused or unopenable); an operator
    must act, then a retry passes."""

    code = "store_unavailable"

    def __init__(
        self,
        detail: str | None = None,
        reason: StoreFault = StoreFault.UNAVAILABLE,
        retry_after: float = 5.0,
        **extra: Any,
    ) -> None:
        super().__init__(detail, reason=reason.value, **extra)
        self.retry_after = retry_after
        self.reason = reason


# Domain outcomes (raised by use cases).


class ValidationFailed(FleetError):
    """The request is not valid."""

    code = "validation_error"

    def __init__(self, detail: str | None = None, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.errors = errors or []


class LeaseLost(FleetError):
    """The lease named is not the job's current lease (superseded, released or expired)."""

    code = "lease_lost"


class IllegalTransition(FleetError):
    """That stage change is not allowed from the job's current stage."""

    code = "illegal_transition"


class IdempotencyConflict(FleetError):
    """A job with this idempotency key was already submitted with different fields."""

    code = "idempotency_conflict"


class NotClaimable(FleetError):
    """The job cannot be claimed by this factory now."""

    code = "not_claimable"


class FeatureDisabled(FleetError):
    """This feature is turned off on this coordinator."""

    code = "feature_disabled"


class TooLarge(FleetError):
    """The change would make the document larger than the store allows."""

    code = "document_too_large"


class Unauthorized(FleetError):
    """A valid credential is required: `Authorization: Bearer <token>`."""

    code = "unauthorized"


class Forbidden(FleetError):
    """Not allowed for this caller."""

    code = "forbidden"


class TooManyRetries(FleetError):
    """The document kept changing under us; retry the request."""

    code = "store_busy"
