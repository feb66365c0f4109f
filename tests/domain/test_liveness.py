"""The liveness rule (`fleet.liveness`): a lease is live by its own expiry, or by its factory's
`leaseUntil` while its factory's last heartbeat listed it; its effective expiry is the later."""
from __future__ import annotations

import pytest

from fleet import clock, liveness
from fleet.jobs import Lease

from fleet.testing import at

OWN = at(300)


def lease(spared: bool = False, factory: str = "f1", expires_at=OWN) -> Lease:
    return Lease(lease_id="L", factory_id=factory, epoch=1, expires_at=expires_at, spared=spared)


def factory(until: float, leases=("L",), id: str = "f1") -> dict:
    return {"id": id, "leaseUntil": clock.format(at(until)), "leases": list(leases)}


@pytest.mark.parametrize(
    "doc, expiry",
    [
        (None, OWN),  # never heard from
        ({}, OWN),
        (factory(400), at(400)),  # its factory carries it further
        (factory(200), OWN),  # the later of the two
        (factory(400, leases=("other",)), OWN),  # its factory no longer names it
        (factory(400, id="f2"), OWN),  # another factory's document says nothing of it
        ({"id": "f1", "lastHeartbeatAt": clock.format(at(350))}, OWN),  # a document from before the rule
    ],
)
def test_the_effective_expiry_is_the_later_of_its_own_and_its_factorys(doc, expiry):
    assert liveness.effective_expiry(lease(), doc) == expiry


@pytest.mark.parametrize(
    "seconds, doc, live",
    [
        (299, None, True),
        (300, None, False),  # expired at its own expiry exactly
        (350, factory(400), True),
        (400, factory(400), False),
        (350, factory(400, leases=()), False),
    ],
)
def test_live_means_before_the_effective_expiry(seconds, doc, live):
    assert liveness.live(lease(), doc, at(seconds)) is live
    assert liveness.holds(lease(), "L", doc, at(seconds)) is live
    assert liveness.holds(lease(), "another", doc, at(seconds)) is False


def test_a_spared_lease_is_renewed_since_once_its_factory_carries_it_as_far():
    spared = lease(spared=True)
    assert liveness.spared(spared, None) is True
    assert liveness.spared(spared, factory(200)) is True  # a heartbeat from before the spare
    assert liveness.spared(spared, factory(300)) is False
    assert liveness.spared(spared, factory(400)) is False
    assert liveness.spared(lease(), factory(400)) is False
    assert liveness.effective(spared, factory(400)) == liveness.Held("L", "f1", at(400), False)


def test_a_projected_lease_reads_as_held():
    doc = {"leaseId": "L", "expiresAt": clock.format(OWN)}
    assert liveness.Held.from_doc(doc, "f1") == liveness.Held("L", "f1", OWN, False)
    assert liveness.Held.from_doc({**doc, "factoryId": "f2", "spared": True}) == liveness.Held("L", "f2", OWN, True)
    assert liveness.Held.from_doc(None) is None
    assert liveness.Held.from_doc({}) is None


def test_a_factory_document_lists_a_lease_by_the_head_of_its_id():
    lease_id = "0123456789abcdef" + "f" * 16
    own = Lease(lease_id=lease_id, factory_id="f1", epoch=1, expires_at=OWN)
    assert liveness.listed(lease_id) == "0123456789abcdef"
    assert liveness.effective_expiry(own, factory(400, leases=(liveness.listed(lease_id),))) == at(400)
    # another lease of the same factory, listed, keeps this one alive only by sharing 64 bits
    assert liveness.effective_expiry(own, factory(400, leases=("0123456789abcdee",))) == OWN
