"""The authorisation matrix (every Role × Action), commune isolation (404, never 403), crews acting
for their own unit only, and the trainer's confinement to the simulation tenant."""

from __future__ import annotations

import pytest
from fastapi import HTTPException

from serving.auth import (
    Action,
    Decision,
    Forbidden,
    NotVisible,
    Policy,
    Principal,
    Resource,
    Role,
    Tenant,
    check,
    visible_or_404,
)

# What each role may ever do (Y) or never (-). Trainers in the simulation tenant.
MATRIX = """
action               crew  operator  supervisor  trainer  admin
open_incident        -     Y         Y           Y        -
close_incident       -     Y         Y           Y        -
read_incident        Y     Y         Y           Y        -
subscribe_incident   -     Y         Y           Y        -
post_sighting        -     Y         Y           Y        -
share_incident       -     -         Y           Y        -
operator_approve     -     Y         Y           Y        -
operator_modify      -     Y         Y           Y        -
operator_retract     -     Y         Y           Y        -
read_crews           -     Y         Y           Y        -
read_cameras         -     Y         Y           Y        -
subscribe_crew       Y     -         -           Y        -
post_crew_position   Y     -         -           Y        -
post_crew_status     Y     Y         Y           Y        -
crew_accept          Y     -         -           Y        -
crew_decline         Y     -         -           Y        -
crew_in_position     Y     -         -           Y        -
crew_contact         Y     -         -           Y        -
read_audit           -     -         Y           -        -
export               -     -         Y           -        -
legal_hold           -     -         Y           -        -
release_hold         -     -         Y           -        -
purge                -     -         -           -        Y
set_retention        -     -         -           -        Y
manage_users         -     -         -           -        Y
revoke_token         -     -         -           -        Y
sim_control          -     -         -           Y        -
"""


def _table() -> dict[tuple[Role, Action], bool]:
    lines = [line.split() for line in MATRIX.strip().splitlines()]
    roles = [Role(name) for name in lines[0][1:]]
    table: dict[tuple[Role, Action], bool] = {}
    for row in lines[1:]:
        action = Action(row[0])
        for role, mark in zip(roles, row[1:], strict=True):
            assert mark in {"Y", "-"}
            table[(role, action)] = mark == "Y"
    return table


TABLE = _table()
POLICY = Policy()


def principal(
    role: Role,
    communes: frozenset[str] = frozenset({"metz"}),
    *,
    crew_id: str | None = None,
    tenant: Tenant | None = None,
) -> Principal:
    if tenant is None:
        tenant = "simulation" if role is Role.trainer else "live"
    if role is Role.crew and crew_id is None:
        crew_id = "C1"
    return Principal("s", role, communes, crew_id, tenant, "jti")


def test_matrix_covers_every_role_and_action() -> None:
    assert {a for _, a in TABLE} == set(Action)
    assert {r for r, _ in TABLE} == set(Role)


@pytest.mark.parametrize(("role", "action"), sorted(TABLE, key=str))
def test_role_action_matrix(role: Role, action: Action) -> None:
    p = principal(role)
    assert POLICY.allowed(p, action) is TABLE[(role, action)]
    decision = POLICY.decide(p, action, None)
    assert (decision is Decision.allow) is TABLE[(role, action)]
    if not TABLE[(role, action)]:
        with pytest.raises(Forbidden):
            check(p, action)


@pytest.mark.parametrize("action", list(Action))
def test_trainer_gets_nothing_outside_the_simulation_tenant(action: Action) -> None:
    live_trainer = principal(Role.trainer, tenant="live")
    assert not POLICY.allowed(live_trainer, action)
    sim_trainer = principal(Role.trainer, frozenset({"*"}))
    live_incident = Resource.incident("metz", tenant="live")
    if TABLE[(Role.trainer, action)]:
        assert POLICY.decide(sim_trainer, action, live_incident) is Decision.not_found


@pytest.mark.parametrize("role", [Role.operator, Role.supervisor, Role.crew])
def test_another_communes_incident_is_not_found(role: Role) -> None:
    p = principal(role, frozenset({"metz"}))
    assert POLICY.decide(p, Action.read_incident, Resource.incident("woippy")) is Decision.not_found
    assert POLICY.decide(p, Action.read_incident, Resource.incident("metz")) is Decision.allow
    with pytest.raises(NotVisible):
        check(p, Action.read_incident, Resource.incident("woippy"))
    with pytest.raises(HTTPException) as err:
        visible_or_404(p, Action.read_incident, Resource.incident("woippy"))
    assert err.value.status_code == 404


def test_sharing_makes_an_incident_visible_in_the_other_commune() -> None:
    woippy_op = principal(Role.operator, frozenset({"woippy"}))
    incident = Resource.incident("metz", shared_with=["woippy"])
    assert POLICY.decide(woippy_op, Action.post_sighting, incident) is Decision.allow
    assert POLICY.decide(woippy_op, Action.post_sighting, Resource.incident("metz")) is Decision.not_found
    assert POLICY.decide(woippy_op, Action.share_incident, incident) is Decision.forbidden


def test_forbidden_wins_over_not_found_only_for_roles_that_never_may() -> None:
    """403 tells nothing about the object (the role may never do it); 404 hides its existence."""
    op = principal(Role.operator)
    assert POLICY.decide(op, Action.read_audit, Resource.incident("woippy")) is Decision.forbidden
    with pytest.raises(HTTPException) as err:
        visible_or_404(op, Action.legal_hold, Resource.incident("metz"))
    assert err.value.status_code == 403


def test_admin_sees_no_incident_data_even_for_all_communes() -> None:
    admin = principal(Role.admin, frozenset({"*"}))
    for action in (Action.read_incident, Action.subscribe_incident, Action.read_crews, Action.read_audit):
        assert POLICY.decide(admin, action, Resource.incident("metz")) is Decision.forbidden


def test_crew_acts_on_its_own_unit_only() -> None:
    crew = principal(Role.crew, frozenset({"metz"}), crew_id="BAC-1")
    mine = Resource.crew("BAC-1", "metz")
    other_same_commune = Resource.crew("BAC-2", "metz")
    for action in (Action.crew_accept, Action.post_crew_position, Action.subscribe_crew, Action.crew_contact):
        assert POLICY.decide(crew, action, mine) is Decision.allow
        assert POLICY.decide(crew, action, other_same_commune) is Decision.not_found
    assert POLICY.decide(crew, Action.post_sighting, mine) is Decision.forbidden
    assert POLICY.decide(crew, Action.crew_accept, Resource(tenant="live")) is Decision.not_found


def test_operator_reaches_crews_of_its_communes_only() -> None:
    op = principal(Role.operator, frozenset({"metz"}))
    assert POLICY.decide(op, Action.post_crew_status, Resource.crew("BAC-1", "metz")) is Decision.allow
    assert POLICY.decide(op, Action.post_crew_status, Resource.crew("BAC-9", "woippy")) is Decision.not_found
    assert POLICY.decide(op, Action.read_crews, Resource.crew("BAC-9", None)) is Decision.not_found
    assert not POLICY.can_act_on_crew(op, "BAC-9", "woippy")
    assert POLICY.can_view_commune(op, "metz") and not POLICY.can_view_commune(op, None)


def test_metropolitan_supervisor_sees_every_commune() -> None:
    sup = principal(Role.supervisor, frozenset({"*"}))
    assert POLICY.decide(sup, Action.read_audit, Resource.incident("woippy")) is Decision.allow
    assert POLICY.can_view_commune(sup, None)


def test_simulation_data_is_invisible_to_live_principals() -> None:
    op = principal(Role.operator, frozenset({"*"}))
    assert POLICY.decide(op, Action.read_incident, Resource.incident("metz", tenant="simulation")) is (
        Decision.not_found
    )
    trainer = principal(Role.trainer, frozenset({"*"}))
    assert POLICY.decide(
        trainer, Action.crew_accept, Resource.crew("SIM-4", "metz", tenant="simulation")
    ) is (Decision.allow)
