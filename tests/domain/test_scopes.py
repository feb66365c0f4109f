"""Product scopes and factory binding, decided by the use cases from `ctx.principal`: another
product's things are absent (404), putting work into it is refused (403), a factory speaks
only for itself, and a lease id is answered only to those who may write with it."""
from __future__ import annotations

import pytest

from fleet import actions, claims, dag, errors, factories, listing, queue_state, review, submit, weight_registry
from fleet.jobs import READER
from fleet.principals import ANONYMOUS, Principal, Role
from fleet.schemas import ChildSpec


def _as(world, role: Role, products=None, factory_id=None, name="someone"):
    principal = Principal(id=name, name=name, role=role, products=products, factory_id=factory_id)
    return world.ctx.acting_as(principal)


def test_a_listing_shows_only_the_principals_products(world):
    for product in ("a", "b", "c"):
        world.submit_job(f"in-{product}", product_id=product)
    two = _as(world, Role.VIEWER, products=("a", "b"))
    assert sorted(j.product_id for j in listing.page(two).items) == ["a", "b"]
    assert listing.page(two, product_id="c").items == []
    assert [j.product_id for j in listing.page(_as(world, Role.VIEWER, products=("c",))).items] == ["c"]
    assert len(listing.page(world.ctx).items) == 3


def test_another_products_things_are_not_found(world):
    job = world.submit_job("theirs", product_id="a")
    outsider = _as(world, Role.OPERATOR, products=("b",))
    for attempt in (
        lambda: listing.get(outsider, job.id),
        lambda: dag.view(outsider, job.id),
        lambda: actions.apply(outsider, job.id, actions.Action.CANCEL),
        lambda: review.request(outsider, job.id, 1, None),
        lambda: queue_state.read(outsider, "a"),
        lambda: weight_registry.view(outsider, "a"),
    ):
        with pytest.raises(errors.NotFound):
            attempt()
    assert world.job(job.id).stage.value == "queued"


def test_putting_work_into_another_product_is_forbidden(world):
    outsider = _as(world, Role.FACTORY, products=("b",), factory_id="fb")
    with pytest.raises(errors.Forbidden):
        submit.submit(outsider, world.spec("x", product_id="a"))
    with pytest.raises(errors.Forbidden):
        claims.claim_next(outsider, claims.ClaimRequest("fb", "a", None, None, None))
    with pytest.raises(errors.Forbidden):
        factories.heartbeat(outsider, "fb", ["a"], [], None, [])
    with pytest.raises(errors.Forbidden):
        factories.heartbeat(outsider, "someone-else", ["b"], [], None, [])


def test_a_jobs_submitted_event_names_its_submitter_and_children_who_added_them(world):
    ci = _as(world, Role.SUBMITTER, name="ci-bot")
    job = submit.submit(ci, world.spec("x")).job
    children = dag.add_children(_as(world, Role.OPERATOR, name="ops"), job.id, [ChildSpec(idempotency_key="c1")])
    assert [(e.type, e.actor) for e in job.events] == [("submitted", "ci-bot")]
    assert [(e.type, e.actor) for e in children.children[0].events] == [("submitted", "ops")]
    assert [(e.type, e.actor) for e in children.parent.events][-1] == ("children_added", "ops")
    # with auth off, as before principals: no one is named
    assert world.submit_job("y").events[0].actor is None


def test_a_lease_id_is_answered_to_its_holder_and_operators_only(world):
    job = world.running_job("held", factory="f1")
    lease_id = job.lease.lease_id

    def shown(principal):
        return job.model_dump(mode="json", by_alias=True, context={READER: principal})["lease"]["leaseId"]

    assert shown(Principal(id="f", name="f", role=Role.FACTORY, factory_id="f1")) == lease_id
    assert shown(Principal(id="o", name="o", role=Role.OPERATOR)) == lease_id
    assert shown(ANONYMOUS) == lease_id
    for other in (Role.VIEWER, Role.SUBMITTER, Role.REVIEWER):
        assert shown(Principal(id="x", name="x", role=other)) is None
    assert shown(Principal(id="f", name="f", role=Role.FACTORY, factory_id="f2")) is None
    assert job.to_doc()["lease"]["leaseId"] == lease_id  # the store keeps it
