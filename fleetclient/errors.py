"""What a coordinator call can fail with, as typed exceptions.

A coordinator answers errors as RFC 9457 problem documents
(`{type, title, status, code, detail, errors?}`); `FleetApiError.from_response` turns one into
the subclass named by its `code`, so callers catch what they mean:

    try:
        client.patch_job(job_id, lease_id, "building")
    except errors.LeaseLost:
        ...  # the job is someone else's now; drop it

A call that never got an answer (connection refused, timed out) raises `FleetUnreachable`.
Both derive from `FleetClientError`.
"""
from __future__ import annotations

import json
from typing import Any

import requests


class FleetClientError(Exception):
    """A coordinator call failed."""


class FleetUnreachable(FleetClientError):
    """The coordinator did not answer (connection refused or reset, timeout), even after retries."""


class FleetApiError(FleetClientError):
    """The coordinator answered with an error; `code` and `detail` say which and why."""

    #: The problem `code` this class stands for (None: any code not mapped to a subclass).
    code_name: str | None = None

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        errors: list[dict[str, Any]] | None = None,
        title: str | None = None,
        problem: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = errors or []
        self.title = title
        #: The whole problem document as received (extension members included).
        self.problem = problem or {}
        #: Seconds from the `Retry-After` header, if the answer had one.
        self.retry_after = retry_after
        super().__init__(f"{status} {code}: {detail}")

    @classmethod
    def from_response(cls, response: requests.Response) -> "FleetApiError":
        """The typed error for an error answer. A body that is not a problem document still
        gives an error with a made-up code (`http_<status>`) and the start of the body."""
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        try:
            doc = response.json()
        except (ValueError, json.JSONDecodeError):
            doc = None
        if not isinstance(doc, dict) or "code" not in doc:
            text = (response.text or response.reason or "").strip()[:500]
            kind = _BY_STATUS.get(response.status_code, FleetApiError)
            code = kind.code_name or f"http_{response.status_code}"
            return kind(response.status_code, code, text or f"HTTP {response.status_code}", retry_after=retry_after)
        code = str(doc.get("code"))
        kind = _BY_CODE.get(code) or _BY_STATUS.get(response.status_code, FleetApiError)
        errors = doc.get("errors") if isinstance(doc.get("errors"), list) else []
        return kind(
            int(doc.get("status") or response.status_code),
            code,
            str(doc.get("detail") or doc.get("title") or ""),
            errors,
            doc.get("title"),
            doc,
            retry_after,
        )


class ValidationFailed(FleetApiError):
    """The request was refused as invalid; `errors` names the failing fields."""

    code_name = "validation_error"


class Unauthorized(FleetApiError):
    """No valid function key (`FLEET_KEY`, sent as `x-functions-key`)."""

    code_name = "unauthorized"


class Forbidden(FleetApiError):
    """Not allowed for this caller (e.g. a reviewer not on the job's list)."""

    code_name = "forbidden"


class NotFound(FleetApiError):
    """No such job, product document or route."""

    code_name = "not_found"


class FeatureDisabled(FleetApiError):
    """The feature is turned off on this coordinator (e.g. `FLEET_BUDGETS` is not set)."""

    code_name = "feature_disabled"


class LeaseLost(FleetApiError):
    """The lease named is no longer the job's live lease: stop working on the job."""

    code_name = "lease_lost"


class IllegalTransition(FleetApiError):
    """The stage change is not allowed from the job's current stage."""

    code_name = "illegal_transition"


class IdempotencyConflict(FleetApiError):
    """A job with this idempotency key was already submitted with different fields."""

    code_name = "idempotency_conflict"


class NotClaimable(FleetApiError):
    """The named job cannot be claimed by this factory now."""

    code_name = "not_claimable"


class PayloadTooLarge(FleetApiError):
    """The request body is larger than the coordinator accepts."""

    code_name = "payload_too_large"


class StoreBusy(FleetApiError):
    """The coordinator's store is throttling or unreachable; retry after `retry_after` seconds."""

    code_name = "store_busy"


class StoreUnavailable(StoreBusy):
    """The coordinator's store cannot serve calls until an operator acts (read-only, full,
    refused, unopenable: the problem's `reason` says which); retrying later passes once they
    have. A `StoreBusy`, so code that waits out a busy store waits this out too."""

    code_name = "store_unavailable"


_BY_CODE: dict[str, type[FleetApiError]] = {
    kind.code_name: kind
    for kind in (
        ValidationFailed, Unauthorized, Forbidden, NotFound, FeatureDisabled, LeaseLost, IllegalTransition,
        IdempotencyConflict, NotClaimable, PayloadTooLarge, StoreBusy, StoreUnavailable,
    )
}
_BY_STATUS: dict[int, type[FleetApiError]] = {
    400: ValidationFailed, 401: Unauthorized, 403: Forbidden, 404: NotFound, 413: PayloadTooLarge, 503: StoreBusy,
}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date), None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime
    from datetime import datetime, timezone

    try:
        at = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return max(0.0, (at - datetime.now(timezone.utc)).total_seconds())
