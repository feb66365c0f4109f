"""Reading the dashboard's forms into the API's own request models, so a form is held to exactly
what the API accepts (`fleet.schemas`), and what a form's result says."""
from __future__ import annotations

from typing import Any

import pydantic

from fleet import budgets, errors
from fleet import submit as submitting
from fleet.actions import Action
from fleet.budget_rules import Window
from fleet.context import Context
from fleet.schemas import ActionBody, JobSpec, ReviewBody
from shared import http

#: The New job form's fields, by their form names.
JOB_FIELDS = (
    "productId", "idempotencyKey", "title", "bodyMd", "priority", "capabilities", "deps", "repo", "baseBranch",
    "estimatedCostUsd",
)
#: What the status line says after an action.
DONE = {Action.SHIP: "Shipped.", Action.REQUEUE: "Requeued.", Action.REJECT: "Rejected.", Action.CANCEL: "Cancelled."}
_PAST = {Action.REQUEUE: "Requeued", Action.CANCEL: "Cancelled"}


def submit_spec(values: dict[str, str]) -> JobSpec:
    """The New job form as the API's `JobSpec` (empty fields left out), or `ValidationFailed`."""
    data: dict[str, object] = {
        "productId": values.get("productId", ""),
        "idempotencyKey": values.get("idempotencyKey", ""),
        "title": values.get("title", ""),
        "bodyMd": values.get("bodyMd", ""),
        "capabilities": _list(values.get("capabilities", "")),
        "deps": _list(values.get("deps", "")),
    }
    for name in ("priority", "repo", "baseBranch"):
        if values.get(name):
            data[name] = values[name]
    if values.get("estimatedCostUsd"):
        data["estimatedCostUsd"] = number(values["estimatedCostUsd"], "estimatedCostUsd")
    try:
        return JobSpec.model_validate(data)
    except pydantic.ValidationError as exc:
        raise http.validation_failed(exc) from None


#: What the New job form's fields may hold, in words: the API names a refused pattern by its
#: regular expression, which a form's reader should not have to read.
ALLOWED = {
    "productId": "a letter or digit, then up to 63 letters, digits, '.', '_' or '-'",
    "capabilities": "a letter or digit, then letters, digits, '_', '.', ':', '+' or '-' (up to 64 each)",
    "repo": "owner/name, or a clone URL (https://, git@, ssh://, file://)",
    "baseBranch": "a branch name: a letter, digit or '_', then letters, digits, '.', '_', '/' or '-'",
}


def problem(error: dict[str, Any]) -> str:
    """One refused field of a form, as its page says it: `field: what is wrong`."""
    field = str(error.get("field") or "form")
    message = str(error.get("message"))
    if error.get("type") == "string_pattern_mismatch":
        allowed = ALLOWED.get(field.split(".")[0])
        message = f"must be {allowed}" if allowed else "holds a character it may not (a control character, say)"
    return f"{field}: {message}"


def submit(ctx: Context, values: dict[str, str]) -> submitting.Submitted:
    """Submit the form's job through the API's use case: created, or the existing job."""
    return submitting.submit(ctx, submit_spec(values))


def reason(raw: str) -> str | None:
    """An action's or a pause's reason from its form, held to what the API takes (`Text`, in
    `ActionBody` as in `PauseBody`)."""
    return _as_api(ActionBody, "reason", raw)


def comment(raw: str) -> str | None:
    """A review's comment from its form, held to what the API takes."""
    return _as_api(ReviewBody, "comment", raw, decision="approve")


def _as_api(body: type[pydantic.BaseModel], field: str, raw: str, **others: str) -> str | None:
    """`raw` as the API's `body` takes `field` (its length, its characters), None when empty: a
    form says no more than a request may."""
    if not raw:
        return None
    try:
        return getattr(body(**{field: raw, **others}), field)
    except pydantic.ValidationError as exc:
        raise http.validation_failed(exc) from None


def action(raw: str, allowed: tuple[Action, ...]) -> Action:
    try:
        chosen = Action(raw)
    except ValueError:
        chosen = None
    if chosen not in allowed:
        names = ", ".join(a.value for a in allowed)
        raise _invalid("action", f"action must be one of {names}")
    return chosen


def bulk_notice(action: Action, done: int, refused: list[str]) -> str:
    text = f"{_PAST[action]} {done} job{'' if done == 1 else 's'}."
    if refused:
        text += f" {len(refused)} could not be changed: " + "; ".join(refused[:10])
    return text[:1500]


def budget_settings(ceiling: str, window: str, blank_keeps: bool = False) -> tuple[float, Window | None]:
    """The ceiling and the window; with `blank_keeps`, a blank window is None: the budget's is
    kept (a new budget's is monthly)."""
    amount = _usd(ceiling, "ceiling")
    if blank_keeps and not window:
        return amount, None
    try:
        return amount, Window(window)
    except ValueError:
        raise _invalid("window", "window must be daily, weekly or monthly") from None


def default_estimate(raw: str | None, blank_keeps: bool = False) -> Any:
    """The budget form's default estimate: `budgets.KEEP` for none given (a form from before it
    had the field) and, with `blank_keeps`, for a blank one; else None when it is left empty
    (reserve nothing), else USD."""
    if raw is None or blank_keeps and not raw:
        return budgets.KEEP
    return _usd(raw, "defaultEstimate") if raw else None


def _usd(raw: str, name: str) -> float:
    amount = number(raw, name)
    if amount < 0 or amount > 1e9:
        raise _invalid(name, f"{name} must be between 0 and 1,000,000,000")
    return amount


def number(raw: str, name: str) -> float:
    try:
        value = float(raw.replace(",", "").replace("$", "").strip())
    except ValueError:
        raise _invalid(name, f"{name} must be a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise _invalid(name, f"{name} must be a number")
    return value


def _list(raw: str) -> list[str]:
    return [part.strip() for part in raw.replace("\n", ",").split(",") if part.strip()]


def _invalid(field: str, detail: str) -> errors.ValidationFailed:
    """A form field that is not valid, named as the API names a body's."""
    return errors.ValidationFailed(detail, [{"field": field, "message": detail}])
