"""The meters of `bench/store_meters.py` and the fleet-day arithmetic of `bench/store_traffic.py`
(not their timings: those are a benchmark's, never a test's)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from fleet import errors
from fleet import store as store_port
from shared.stores.sqlite_store import SqliteStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import store_meters  # noqa: E402
import store_traffic  # noqa: E402

KB = 1024


@pytest.mark.parametrize(
    "op, sent, received, ru",
    [
        ("read", 0, 300, 1.0),  # a small point read: the 1 KB floor
        ("read", 0, 5.5 * KB, 5.5),
        ("create", 4 * KB, 4 * KB, 22.0),  # 4 × 5.5
        ("replace", 5 * KB, 5 * KB, 55.0),  # 5 × 2 × 5.5
        ("upsert", 300, 300, 11.0),
        ("patch", 126, 2 * KB, 22.0),  # priced on the patched document the answer carries
        ("query", 272, 160 * KB, 162.5),  # 2.5 + 160
        ("meta", 0, 9 * KB, 1.0),
    ],
)
def test_request_units_are_linear_in_the_documents_kb(op, sent, received, ru):
    assert store_meters.RU_MODEL.of(store_meters.Exchange(op, sent, received)) == pytest.approx(ru)


def test_a_minimal_answer_is_billed_without_the_document_it_did_not_ask_for():
    written = store_meters.Exchange("replace", 5 * KB, 5 * KB, minimal=True)
    assert written.billed == 5 * KB
    assert store_meters.Exchange("read", 0, 5 * KB).billed == 5 * KB
    # Priced on the document the local server sent back all the same: the charge follows its size.
    assert store_meters.RU_MODEL.of(written) == pytest.approx(55.0)


def test_the_fleet_day_multiplies_each_call_by_how_often_the_reference_fleet_makes_it():
    one = store_traffic.Cost(calls=1, wire_bytes=1e3, requests=1, ru=2, ms=0)
    names = ["submit", "idle poll (queue-state)", "claim", "heartbeat renewing 4 leases",
             "PATCH building + PATCH testing + release shipped"]
    rows = {what: (n, calls, ru) for what, n, calls, _, ru in store_traffic.fleet_day({name: one for name in names})}
    assert rows["idle polls"] == (864_000, 864_000, 1_728_000)  # 100 factories × 86,400 s / 10 s
    assert rows["heartbeats (4 leases each)"][0] == 86_400  # every 300 s / 3, by 100 factories
    assert rows["claims"][0] == rows["submits"][0] == rows["lifecycle writes"][0] == 10_000
    assert rows["total"][1] == 864_000 + 86_400 + 3 * 10_000


def test_the_port_meter_counts_calls_and_the_json_of_documents_in_and_out():
    meter = store_meters.PortMeter(SqliteStore(":memory:"))
    doc = {"id": "j1", "productId": "p", "bodyMd": "x" * 100}
    size = len(json.dumps(doc, separators=(",", ":")))
    meter.create("jobs", doc)
    read = meter.read("jobs", "p", "j1")
    meter.query(store_port.Query("jobs", "p"))
    with pytest.raises(errors.NotFound):
        meter.read("jobs", "p", "missing")
    exchanges = meter.exchanges()
    assert meter.total() == 4
    assert [(e.op, e.sent) for e in exchanges] == [("create", size), ("read", 0), ("query", 0), ("read", 0)]
    etag = len(json.dumps(read, separators=(",", ":")))
    assert [e.received for e in exchanges] == [etag, etag, etag + 2, 0]  # the query's page: a list of one
    meter.close()


@pytest.mark.parametrize(
    "method, path, headers, op",
    [
        ("GET", "/dbs/fleet/colls/jobs/docs/p%3Aj1/", {}, "read"),
        ("POST", "/dbs/fleet/colls/jobs/docs/", {"x-ms-documentdb-isquery": "true"}, "query"),
        ("POST", "/dbs/fleet/colls/jobs/docs/", {"x-ms-documentdb-is-upsert": "true"}, "upsert"),
        ("POST", "/dbs/fleet/colls/jobs/docs/", {}, "create"),
        ("PUT", "/dbs/fleet/colls/jobs/docs/p%3Aj1/", {}, "replace"),
        ("PATCH", "/dbs/fleet/colls/jobs/docs/queue-state/", {}, "patch"),
        ("DELETE", "/dbs/fleet/colls/jobs/docs/p%3Aj1/", {}, "delete"),
        ("GET", "/dbs/fleet/colls/jobs/pkranges", {}, "meta"),
        ("GET", "/", {}, "meta"),
    ],
)
def test_the_wire_meter_names_each_cosmos_request(method, path, headers, op):
    request = SimpleNamespace(method=method, url=f"https://127.0.0.1:8081{path}", headers=headers)
    assert store_meters.wire_op(request) == op


def test_what_a_job_costs_the_store_does_not_grow_with_the_products_that_finished_today(tmp_path):
    import activity_products

    costs = {}
    for products in (1, 12):
        with store_traffic.sqlite_rig(str(tmp_path), f"p{products}") as rig:
            costs[products] = activity_products.measured(rig, products, 2)
    for call in ("submit", "claim + release shipped", "dashboard version read"):
        one, many = costs[1][call], costs[12][call]
        # (a version of two digits instead of one is a byte more)
        assert one.calls == many.calls and abs(many.wire_bytes - one.wire_bytes) < 8, (call, one, many)


def test_jobs_waiting_to_retry_ahead_of_the_queue_cost_a_claim_the_same_however_many(tmp_path):
    import retry_waits

    costs = {}
    for waiting in (4, 40):
        with store_traffic.sqlite_rig(str(tmp_path), f"w{waiting}") as rig:
            costs[waiting] = retry_waits.measured(rig, 60, waiting)
    assert costs[4].calls == costs[40].calls <= 4
