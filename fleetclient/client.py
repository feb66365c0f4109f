"""`FleetClient`: one method per coordinator endpoint, answering the coordinator's own answer
models (`fleet.jobs.Job`, `fleet.claims.Claimed`, `fleet.factories.Heartbeat`, ...).

    from fleetclient import FleetClient, errors

    with FleetClient() as fleet:                      # FLEET_URL / FLEET_TOKEN / FLEET_KEY, or url=, token=, key=
        job = fleet.submit_job({"productId": "web", "idempotencyKey": "fix-42", "title": "Fix 42"}).job
        claim = fleet.claim("factory-1", "web", capabilities=["python"])
        if claim.job:
            fleet.patch_job(claim.job.id, claim.lease.lease_id, "building")

Calls that are safe to repeat (reads, heartbeats, submit, PUTs, operator actions, children,
late run reports)
are retried with jittered backoff on connection errors, timeouts and 429/502/503/504, honouring
`Retry-After`. Calls that are not (claim, PATCH, lease release, review) are retried only when the
connection could not even be made (see `fleetclient.retry`). Errors are raised as the typed
exceptions of `fleetclient.errors`. A client may be shared between threads.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

from fleet import budget_rules, claims, dag, factories, health, listing, queue_state, submit, weight_registry
from fleet.jobs import Job
from fleetclient import retry, transport

DEFAULT_URL = "http://127.0.0.1:7071"


class FleetClient:
    """A coordinator at `url` (default `FLEET_URL`, else http://127.0.0.1:7071), called with
    API token `token` (default `FLEET_TOKEN`, sent as `Authorization: Bearer`) and function
    key `key` (default `FLEET_KEY`; none if unset)."""

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        timeout: float | tuple[float, float] = transport.DEFAULT_TIMEOUT,
        backoff: retry.Backoff = retry.Backoff(),
        sleep: Callable[[float], None] = time.sleep,
        token: str | None = None,
    ) -> None:
        self._http = transport.Transport(
            (url or os.environ.get("FLEET_URL") or DEFAULT_URL).rstrip("/"),
            key if key is not None else (os.environ.get("FLEET_KEY") or None),
            timeout, backoff, sleep,
            token if token is not None else (os.environ.get("FLEET_TOKEN") or None),
        )

    @property
    def url(self) -> str:
        return self._http.url

    @property
    def key(self) -> str | None:
        return self._http.key

    @property
    def backoff(self) -> retry.Backoff:
        return self._http.backoff

    # Lifetime

    def close(self) -> None:
        """Close every connection this client opened (from any thread)."""
        self._http.close()

    def close_thread_session(self) -> None:
        """Close the calling thread's connections (a worker thread about to end calls this, so a
        long-lived client does not keep one connection pool per thread it ever served)."""
        self._http.close_thread_session()

    def __enter__(self) -> "FleetClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Jobs

    def submit_job(self, spec: Mapping[str, Any] | None = None, **fields: Any) -> submit.Submitted:
        """`POST /fleet/jobs`: submit a job (a camelCase dict like the API's body, or snake_case
        keyword fields). Repeating a submit with the same idempotency key returns the existing
        job (`created=False`); with different fields it raises `IdempotencyConflict`."""
        body = dict(spec or {})
        body.update({_camel(name): value for name, value in fields.items()})
        response = self._http.call("POST", "/fleet/jobs", json=body)
        return submit.Submitted(job=Job.model_validate(response.body), created=response.status == 201)

    def list_jobs(
        self,
        product_id: str | None = None,
        stage: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        continuation: str | None = None,
    ) -> listing.JobPage:
        """`GET /fleet/jobs`: one page, newest first."""
        params = {"productId": product_id, "stage": _value(stage), "limit": limit, "offset": offset,
                  "continuation": continuation}
        return listing.JobPage.model_validate(self._http.call("GET", "/fleet/jobs", params=params).body)

    def iter_jobs(self, product_id: str | None = None, stage: str | None = None, page_size: int = 100) -> Iterator[Job]:
        """Every job matching, newest first, page after page."""
        page = self.list_jobs(product_id, stage, limit=page_size)
        while True:
            yield from page.items
            if page.continuation:
                page = self.list_jobs(product_id, stage, limit=page_size, continuation=page.continuation)
            elif page.next_offset is not None:
                page = self.list_jobs(product_id, stage, limit=page_size, offset=page.next_offset)
            else:
                return

    def get_job(self, job_id: str) -> Job:
        """`GET /fleet/jobs/{id}`: the job with its runs and events."""
        return Job.model_validate(self._http.call("GET", f"/fleet/jobs/{_seg(job_id)}").body)

    def patch_job(
        self, job_id: str, lease_id: str, stage: str, note: str | None = None, insights: Mapping[str, Any] | None = None
    ) -> Job:
        """`PATCH /fleet/jobs/{id}`: the lease holder moves its job to `stage` (fenced: raises
        `LeaseLost` if `lease_id` is no longer the job's lease). Not retried once sent."""
        body = _compact({"leaseId": lease_id, "stage": _value(stage), "note": note, "insights": insights})
        return Job.model_validate(self._http.call("PATCH", f"/fleet/jobs/{_seg(job_id)}", json=body, safe=False).body)

    def release_lease(
        self,
        job_id: str,
        lease_id: str,
        *,
        stage: str | None = None,
        result: str | None = None,
        insights: Mapping[str, Any] | None = None,
        pr_url: str | None = None,
        branch: str | None = None,
        artifacts: Iterable[Any] | None = None,
        checkpoint: Any = None,
    ) -> Job:
        """`POST /fleet/jobs/{id}/lease/release`: end the lease. `stage="testing"` parks the job
        for the review gate, `result="retry"` counts a failed attempt, a terminal stage/result
        finishes it, and neither gives it back (with `checkpoint`). Not retried once sent."""
        body = _compact({
            "leaseId": lease_id, "stage": _value(stage), "result": _value(result), "insights": insights,
            "prUrl": pr_url, "branch": branch, "artifacts": list(artifacts) if artifacts else None,
            "checkpoint": checkpoint,
        })
        path = f"/fleet/jobs/{_seg(job_id)}/lease/release"
        return Job.model_validate(self._http.call("POST", path, json=body, safe=False).body)

    def report_run(
        self,
        job_id: str,
        lease_id: str,
        *,
        insights: Mapping[str, Any] | None = None,
        pr_url: str | None = None,
        branch: str | None = None,
        artifacts: Iterable[Any] | None = None,
    ) -> Job:
        """`POST /fleet/jobs/{id}/lease/report`: report what the run held under `lease_id` did,
        once that lease was taken (preempted, expired, given back by an operator), so its cost
        reaches the budget. Retried like a read: the same report again counts nothing more."""
        body = _compact({
            "leaseId": lease_id, "insights": insights, "prUrl": pr_url, "branch": branch,
            "artifacts": list(artifacts) if artifacts else None,
        })
        return Job.model_validate(self._http.call("POST", f"/fleet/jobs/{_seg(job_id)}/lease/report", json=body).body)

    def action(self, job_id: str, action: str, reason: str | None = None, actor: str | None = None) -> Job:
        """`POST /fleet/jobs/{id}/actions/{action}`: `requeue`, `reject`, `cancel` or `ship`."""
        path = f"/fleet/jobs/{_seg(job_id)}/actions/{_seg(_value(action))}"
        return Job.model_validate(self._http.call("POST", path, json=_compact({"reason": reason, "actor": actor})).body)

    def add_children(self, job_id: str, children: Iterable[Mapping[str, Any]]) -> dag.ChildrenAdded:
        """`POST /fleet/jobs/{id}/children`: add child jobs (each with its own idempotency key,
        so a repeat converges on the same children)."""
        body = {"children": [dict(child) for child in children]}
        answer = self._http.call("POST", f"/fleet/jobs/{_seg(job_id)}/children", json=body)
        return dag.ChildrenAdded.model_validate(answer.body)

    def get_dag(self, job_id: str) -> dag.DagNode:
        """`GET /fleet/jobs/{id}/dag`: the job and its descendants."""
        return dag.DagNode.model_validate(self._http.call("GET", f"/fleet/jobs/{_seg(job_id)}/dag").body)

    def request_review(self, job_id: str, required: int, reviewers: Iterable[str] | None = None) -> Job:
        """`POST /fleet/jobs/{id}/review/request`: open the review gate on a `testing` job.
        Re-opening resets approvals, so it is not retried once sent."""
        body = _compact({"required": required, "reviewers": list(reviewers) if reviewers is not None else None})
        answer = self._http.call("POST", f"/fleet/jobs/{_seg(job_id)}/review/request", json=body, safe=False)
        return Job.model_validate(answer.body)

    def review(self, job_id: str, reviewer: str | None, decision: str, comment: str | None = None) -> Job:
        """`POST /fleet/jobs/{id}/review`: `approve` or `reject`, as `reviewer` (None: the token's
        own principal; a reviewer is always the principal when auth is on). Not retried once sent."""
        body = _compact({"reviewer": reviewer, "decision": _value(decision), "comment": comment})
        answer = self._http.call("POST", f"/fleet/jobs/{_seg(job_id)}/review", json=body, safe=False)
        return Job.model_validate(answer.body)

    # Claims and factories

    def claim(
        self,
        factory_id: str,
        product_id: str,
        capabilities: Iterable[str] | None = None,
        weights: Mapping[str, float] | None = None,
        seat_limit: int | None = None,
    ) -> claims.Claimed:
        """`POST /fleet/claim`: the best queued job this factory can do, under a new lease; or
        `job=None` with a `reason`. Not retried once sent (a lost answer would strand a lease
        until it expires)."""
        body = _claim_body(factory_id, product_id, capabilities, weights, seat_limit)
        return claims.Claimed.model_validate(self._http.call("POST", "/fleet/claim", json=body, safe=False).body)

    def claim_job(
        self,
        job_id: str,
        factory_id: str,
        capabilities: Iterable[str] | None = None,
        weights: Mapping[str, float] | None = None,
        seat_limit: int | None = None,
    ) -> claims.Claimed:
        """`POST /fleet/jobs/{id}/claim`: claim that job; `NotClaimable` if this factory may not."""
        body = _claim_body(factory_id, None, capabilities, weights, seat_limit)
        path = f"/fleet/jobs/{_seg(job_id)}/claim"
        return claims.Claimed.model_validate(self._http.call("POST", path, json=body, safe=False).body)

    def heartbeat(
        self,
        factory_id: str,
        products: Iterable[str] = (),
        capabilities: Iterable[str] = (),
        seat_limit: int | None = None,
        running: Iterable[tuple[str, str]] = (),
    ) -> factories.Heartbeat:
        """`POST /fleet/factories/{id}/heartbeat`: register the factory and renew the leases of
        the `(jobId, leaseId)` pairs it runs. Retried: renewing twice is harmless, and a 503 is
        not an answer about the leases."""
        body = _compact({
            "products": list(products),
            "capabilities": list(capabilities),
            "seatLimit": seat_limit,
            "running": [{"jobId": job_id, "leaseId": lease_id} for job_id, lease_id in running],
        })
        path = f"/fleet/factories/{_seg(factory_id)}/heartbeat"
        return factories.Heartbeat.model_validate(self._http.call("POST", path, json=body).body)

    def list_factories(self) -> list[factories.Factory]:
        """`GET /fleet/factories`: every factory with its health and seats."""
        return factories.FactoryList.model_validate(self._http.call("GET", "/fleet/factories").body).items

    def queue_state(self, product_id: str) -> queue_state.QueueState:
        """`GET /fleet/queue-state`: the product's version (one point read)."""
        answer = self._http.call("GET", "/fleet/queue-state", params={"productId": product_id})
        return queue_state.QueueState.model_validate(answer.body)

    # Weights and budgets

    def get_weights(self, product_id: str) -> weight_registry.ProductWeights:
        answer = self._http.call("GET", f"/fleet/weights/{_seg(product_id)}")
        return weight_registry.ProductWeights.model_validate(answer.body)

    def put_weights(
        self, product_id: str, reset: Iterable[str] = (), **weights: float | None
    ) -> weight_registry.ProductWeights:
        """`PUT /fleet/weights/{productId}`: set `age`, `priority`, `retries`, `capabilities`
        (those given; the rest keep their values); those named in `reset` go back to their
        defaults."""
        body = {**_compact(weights), **dict.fromkeys(reset)}
        answer = self._http.call("PUT", f"/fleet/weights/{_seg(product_id)}", json=body)
        return weight_registry.ProductWeights.model_validate(answer.body)

    def get_budget(self, product_id: str) -> budget_rules.BudgetView:
        """`GET /fleet/budgets/{productId}`. `FeatureDisabled` when budgets are off, `NotFound`
        for a product with no budget."""
        return budget_rules.BudgetView.model_validate(self._http.call("GET", f"/fleet/budgets/{_seg(product_id)}").body)

    def put_budget(
        self, product_id: str, ceiling_usd: float | None = None, window: str | None = None, default_estimate_usd: Any = ...
    ) -> budget_rules.BudgetView:
        """`PUT /fleet/budgets/{productId}`: set, where given, the ceiling (USD), the window
        (`daily|weekly|monthly`) and `default_estimate_usd`: what a claim reserves for a job that
        names no cost (None: nothing). Left out, the budget keeps its ceiling (a budget without
        one must be given one), its window (a new budget's is monthly) and its default estimate."""
        body: dict[str, Any] = {}
        if ceiling_usd is not None:
            body["ceilingUsd"] = ceiling_usd
        if window is not None:
            body["window"] = _value(window)
        if default_estimate_usd is not ...:
            body["defaultEstimateUsd"] = default_estimate_usd
        answer = self._http.call("PUT", f"/fleet/budgets/{_seg(product_id)}", json=body)
        return budget_rules.BudgetView.model_validate(answer.body)

    def pause_budget(self, product_id: str, reason: str | None = None) -> budget_rules.BudgetView:
        """`POST /fleet/budgets/{productId}/pause`, saying why if `reason` is given."""
        body = {"reason": reason} if reason is not None else None
        answer = self._http.call("POST", f"/fleet/budgets/{_seg(product_id)}/pause", json=body)
        return budget_rules.BudgetView.model_validate(answer.body)

    def resume_budget(self, product_id: str) -> budget_rules.BudgetView:
        answer = self._http.call("POST", f"/fleet/budgets/{_seg(product_id)}/resume")
        return budget_rules.BudgetView.model_validate(answer.body)

    # Service

    def health(self) -> health.Health:
        """`GET /fleet/health`; a degraded coordinator answers 503 with the same document."""
        response = self._http.call("GET", "/fleet/health", accept=(200, 503), backoff=retry.NO_RETRY)
        return health.Health.model_validate(response.body)

    def openapi(self) -> dict[str, Any]:
        return self._http.call("GET", "/fleet/openapi.json").body

    def run_timer(self, name: str) -> None:
        """`POST /admin/functions/{name}`: run a timer function (e.g. `sweep_expired_leases`)
        now, to completion, as the Functions host's admin API does."""
        self._http.call("POST", f"/admin/functions/{_seg(name)}", json={})


def _claim_body(factory_id, product_id, capabilities, weights, seat_limit) -> dict[str, Any]:
    return _compact({
        "factoryId": factory_id,
        "productId": product_id,
        "capabilities": list(capabilities) if capabilities is not None else None,
        "weights": dict(weights) if weights else None,
        "seatLimit": seat_limit,
    })


def _compact(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _value(value: Any) -> Any:
    """An enum member's value, anything else as is."""
    return getattr(value, "value", value)


def _seg(value: str) -> str:
    """One URL path segment (a job id keeps its `:`)."""
    return quote(str(value), safe=":@")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)
