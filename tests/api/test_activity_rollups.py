"""Today's rollup (`fleet/activity.py`) over HTTP: what a job's writes bump and count — the
version the dashboard's ETags hold, jobs shipped, and what their runs cost, each counted once."""
from __future__ import annotations

from fleet import activity, tokens
from fleet.principals import Role
from fleet.stages import Stage


def today(api) -> tuple[int, int, float]:
    """(version, jobs shipped, USD spent) today."""
    day = activity.days(api.ctx, 1)[0]
    return activity.version(api.ctx), day.shipped, day.spent_usd


def walk_to_testing(api, key: str, cost: float) -> tuple[str, str]:
    """Submit, claim and PATCH a job to building, then testing reporting `cost`: (job id, lease)."""
    api.submit(key, product="web")
    claim = api.claim(product="web")
    job, lease = claim["job"]["id"], claim["lease"]["leaseId"]
    for stage, insights in (("building", None), ("testing", {"costUsd": cost})):
        body = {"leaseId": lease, "stage": stage, **({"insights": insights} if insights else {})}
        assert api.call("PATCH", f"/fleet/jobs/{job}", body).status_code == 200
    return job, lease


def test_a_job_parked_at_review_counts_its_runs_cost_and_shipping_it_counts_the_job(api):
    version, _, _ = today(api)
    job, lease = walk_to_testing(api, "fix-login", 0.42)
    assert today(api) == (version + 1, 0, 0.0)  # the submit bumped; the claim and PATCHes did not

    parked = api.post(f"/fleet/jobs/{job}/lease/release", {"leaseId": lease, "stage": "testing"})
    assert parked.status_code == 200 and parked.json["lease"] is None
    assert today(api) == (version + 2, 0, 0.42)

    assert api.post(f"/fleet/jobs/{job}/actions/ship", {}).status_code == 200
    assert today(api) == (version + 3, 1, 0.42)  # the run's cost is not counted again


def test_a_job_shipped_by_its_release_counts_once(api):
    job, lease = walk_to_testing(api, "fix-login", 0.5)

    shipped = api.post(f"/fleet/jobs/{job}/lease/release", {"leaseId": lease, "stage": "shipped"})
    again = api.post(f"/fleet/jobs/{job}/lease/release", {"leaseId": lease, "stage": "shipped"})  # a retry

    assert shipped.status_code == again.status_code == 200
    assert today(api)[1:] == (1, 0.5)


def test_each_end_stage_a_job_reaches_is_counted_once_per_product(api):
    # Given jobs of two products (one whose id no field name could hold as it is)
    shipped, lease = walk_to_testing(api, "ship-me", 0.0)
    api.post(f"/fleet/jobs/{shipped}/lease/release", {"leaseId": lease, "stage": "shipped"})
    api.post(f"/fleet/jobs/{shipped}/lease/release", {"leaseId": lease, "stage": "shipped"})  # a retry
    cancelled = api.submit("cancel-me", product="web")["id"]
    api.post(f"/fleet/jobs/{cancelled}/actions/cancel", {})
    dead = api.submit("die", product="ops.team-2", maxAttempts=1)["id"]
    lease = api.claim(product="ops.team-2")["lease"]["leaseId"]
    api.post(f"/fleet/jobs/{dead}/lease/release", {"leaseId": lease, "result": "retry"})
    # and one requeued from its end stage and cancelled again: it reached it twice
    api.post(f"/fleet/jobs/{cancelled}/actions/requeue", {})
    api.post(f"/fleet/jobs/{cancelled}/actions/cancel", {})

    days = activity.days(api.ctx)

    assert activity.finished(days, "web") == {
        Stage.SHIPPED: 1, Stage.DONE: 0, Stage.FAILED: 0, Stage.DEAD_LETTER: 0, Stage.CANCELLED: 2,
    }
    assert activity.finished(days, "ops.team-2")[Stage.DEAD_LETTER] == 1
    assert sum(activity.finished(days, "ops.team-2").values()) == 1
    assert sum(activity.finished(days, "never-seen").values()) == 0


def test_a_principal_limited_to_some_products_is_shown_their_days_only(api):
    # Given a day on which web shipped a job that cost 0.5 and ops shipped one that cost 2.25
    job, lease = walk_to_testing(api, "web-job", 0.5)
    api.post(f"/fleet/jobs/{job}/lease/release", {"leaseId": lease, "stage": "shipped"})
    api.submit("ops-job", product="ops")
    claim = api.claim(product="ops")
    ended = {"leaseId": claim["lease"]["leaseId"], "stage": "shipped", "insights": {"costUsd": 2.25}}
    assert api.post(f"/fleet/jobs/{claim['job']['id']}/lease/release", ended).status_code == 200

    # The fleet's day counts both; a viewer of web is shown web's, on the overview too
    assert today(api)[1:] == (2, 2.75)
    web_viewer = api.mint(Role.VIEWER, name="web-viewer", products=["web"])
    scoped = activity.days(api.ctx.acting_as(tokens.authenticate(api.ctx, web_viewer)), 1)[0]
    assert (scoped.shipped, scoped.spent_usd) == (1, 0.5)
    assert activity.finished([scoped], "ops")[Stage.SHIPPED] == 0

    overview = api.get("/dashboard/fleet", token=web_viewer)
    figures = overview.text[overview.text.index('id="h-days"'):]
    assert "1 shipped, $0.50 spent" in figures and "$2.25" not in figures and "$2.75" not in figures


def test_the_days_version_document_stays_small_however_many_products_finish(api):
    # Given 30 products that each shipped a job today at a cost
    for n in range(30):
        api.submit(f"job-{n}", product=f"product-{n}")
        claim = api.claim(product=f"product-{n}")
        ended = {"leaseId": claim["lease"]["leaseId"], "stage": "shipped", "insights": {"costUsd": 0.25}}
        assert api.post(f"/fleet/jobs/{claim['job']['id']}/lease/release", ended).status_code == 200

    # The document every bump writes and every dashboard refresh reads holds the fleet's figures only
    now = api.ctx.clock.now()
    day = api.ctx.store.read("jobs", activity.STATE_PARTITION, activity._day_id(now))
    assert not [name for name in day if name.startswith((activity.FINISHED_PREFIX, activity.SPENT_PREFIX))]
    assert (day["shipped"], day["spentUsd"]) == (30, 7.5)
    # and each product's counts are its own document's, which the days add up
    mine = api.ctx.store.read("jobs", activity.STATE_PARTITION, activity._day_id(now, "product-7"))
    assert mine["product"] == "product-7"
    assert mine[activity.finished_field("product-7", Stage.SHIPPED)] == 1
    days = activity.days(api.ctx, 1)
    assert (days[0].shipped, days[0].spent_usd) == (30, 7.5)
    assert activity.finished(days, "product-7")[Stage.SHIPPED] == 1


def test_a_day_written_with_the_counts_on_its_own_document_reads_the_same(api):
    # Given today's document as older releases wrote it, the product's counts on it
    now = api.ctx.clock.now()
    day_id = activity._day_id(now)
    old = {activity.finished_field("web", Stage.SHIPPED): 2, activity.spent_field("web"): 1.5, "spentUsd": 1.5}
    api.ctx.store.increment("jobs", activity.STATE_PARTITION, day_id, "shipped", 2,
                            {"id": day_id, "productId": activity.STATE_PARTITION, "day": now.date().isoformat()}, also=old)

    # When this release ships one more of web's jobs
    job, lease = walk_to_testing(api, "web-job", 0.5)
    api.post(f"/fleet/jobs/{job}/lease/release", {"leaseId": lease, "stage": "shipped"})

    # Both layouts' counts add up
    days = activity.days(api.ctx, 1)
    assert (days[0].shipped, days[0].spent_usd) == (3, 2.0)
    assert activity.finished(days, "web")[Stage.SHIPPED] == 3
    assert days[0].spent == {activity.spent_field("web"): 2.0}
