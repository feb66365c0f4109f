"""What a dashboard page reads of the store, in-process over the real SQLite store: a job's page
reads the job once, whether it renders or answers 304; the overview counts no finished jobs."""
from __future__ import annotations

from typing import Any

from dashboard import views


class Noting:
    """The store as it is, noting the id of every document read."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.read_ids = inner, []

    def read(self, container, partition_key, id):
        self.read_ids.append(id)
        return self.inner.read(container, partition_key, id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_job_page_reads_the_job_once_to_render_and_once_to_answer_304(api):
    job = api.submit("k1", title="Fix the login redirect")
    api.claim()  # leased: the page also reads its holder's document, once
    path = f"/dashboard/fleet/jobs/{job['id']}"
    noted = api.store.inner = Noting(api.store.inner)

    page = api.get(path)
    assert page.status_code == 200 and "Fix the login redirect" in page.text
    assert noted.read_ids.count(job["id"]) == 1, noted.read_ids

    noted.read_ids.clear()
    again = api.get(path, headers={"If-None-Match": page.headers["ETag"]})
    assert again.status_code == 304
    assert noted.read_ids.count(job["id"]) == 1, noted.read_ids


def test_a_job_page_renders_what_its_etag_names(api):
    job = api.submit("k1", title="First title")
    path = f"/dashboard/fleet/jobs/{job['id']}"
    first = api.get(path)
    assert "cancelled" not in first.text
    assert api.post(f"/fleet/jobs/{job['id']}/actions/cancel", {"reason": "not needed"}).status_code == 200

    changed = api.get(path, headers={"If-None-Match": first.headers["ETag"]})

    assert changed.status_code == 200 and changed.headers["ETag"] != first.headers["ETag"]
    assert "cancelled" in changed.text


class Counting:
    """The store as it is, noting the stage each count query counts."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.counted = inner, []

    def count(self, query):
        self.counted.append((query.partition_key, *(f.value for f in query.where if f.field == "stage")))
        return self.inner.count(query)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_the_overview_counts_work_at_hand_and_reads_finished_work_from_the_days_rollups(api):
    # Given two products with work queued, cancelled and shipped
    for product in ("p", "q"):
        api.submit("queued", product=product)
        cancelled = api.submit("cancelled", product=product)["id"]
        api.post(f"/fleet/jobs/{cancelled}/actions/cancel", {})
    shipping = api.claim(product="q")
    api.post(f"/fleet/jobs/{shipping['job']['id']}/lease/release", {"leaseId": shipping["lease"]["leaseId"], "stage": "shipped"})
    counting = api.store.inner = Counting(api.store.inner)

    page = api.get("/dashboard/fleet")

    # Then it counted only the stages whose counts the work at hand bounds, for each product
    assert page.status_code == 200
    assert sorted(counting.counted) == sorted((p, s.value) for p in ("p", "q") for s in views.COUNTED)
    assert {s for _, s in counting.counted}.isdisjoint({"shipped", "done", "failed", "cancelled"})
    # and shows what reached the other end stages from the rollups it read for the chart
    finished = page.text[page.text.index('id="h-finished"'):]
    assert 'href="/dashboard/fleet/jobs?stage=cancelled&amp;product=p">1</a>' in finished
    assert 'href="/dashboard/fleet/jobs?stage=shipped&amp;product=q">1</a>' in finished
    assert 'href="/dashboard/fleet/jobs?stage=queued&amp;product=p">1</a>' in page.text[: page.text.index('id="h-finished"')]
