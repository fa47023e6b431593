"""Group sync: the token's groups and app roles map to departments and admin flags at each sign-in."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from portal.identity import identity_sync
from portal.models import AuditEvent, GroupMapping
from tests.fakes.azure_ad import FakeAzureAD, Identity
from tests.support.identity import person, sign_in

pytestmark = pytest.mark.django_db

SALES_ID = "11111111-1111-4111-8111-111111111111"
LEGAL_ID = "22222222-2222-4222-8222-222222222222"


@pytest.fixture
def departments() -> dict[str, Group]:
    groups = {name: Group.objects.create(name=name) for name in ("sales", "legal", "admins", "manual")}
    GroupMapping.objects.create(source="group", value=SALES_ID, group=groups["sales"])
    GroupMapping.objects.create(source="group", value=LEGAL_ID, group=groups["legal"])
    GroupMapping.objects.create(
        source="role", value="Console.Admin", group=groups["admins"], grants_staff=True
    )
    GroupMapping.objects.create(source="role", value="Console.Owner", grants_superuser=True)
    return groups


def names(user: User) -> list[str]:
    return sorted(user.groups.values_list("name", flat=True))


def test_membership_follows_the_token_at_each_sign_in(
    idp: FakeAzureAD, departments: dict[str, Group]
) -> None:
    alice = person("alice@contoso.test", groups=[SALES_ID, LEGAL_ID, "99999999-9999-4999-8999-999999999999"])
    sign_in(Client(), idp, alice)
    user = User.objects.get()
    assert names(user) == ["legal", "sales"]  # the unmapped group is ignored
    user.groups.add(departments["manual"])  # an admin's own assignment, no mapping names it
    moved = Identity(oid=alice.oid, preferred_username=alice.preferred_username, groups=[LEGAL_ID])
    sign_in(Client(), idp, moved)
    assert names(user) == ["legal", "manual"]
    assert AuditEvent.objects.filter(action="identity.sync", object_id=str(user.pk)).count() == 2


def test_staff_and_superuser_come_from_app_roles(idp: FakeAzureAD, departments: dict[str, Group]) -> None:
    bob = person("bob@contoso.test", roles=["Console.Admin"])
    client = Client()
    sign_in(client, idp, bob)
    user = User.objects.get()
    assert user.is_staff and not user.is_superuser and names(user) == ["admins"]
    assert client.get("/admin/").status_code == 200
    sign_in(
        Client(),
        idp,
        Identity(oid=bob.oid, preferred_username=bob.preferred_username, roles=["Console.Owner"]),
    )
    user.refresh_from_db()
    assert user.is_staff and user.is_superuser and names(user) == []
    sign_in(Client(), idp, Identity(oid=bob.oid, preferred_username=bob.preferred_username))
    user.refresh_from_db()
    assert not user.is_staff and not user.is_superuser


def test_flags_stay_the_admins_when_no_mapping_grants_them(alice: User) -> None:
    alice.is_staff = True
    alice.save()
    identity_sync(user=alice, claims={"roles": ["Whatever"], "groups": []})
    alice.refresh_from_db()
    assert alice.is_staff


def test_a_groups_overage_keeps_group_memberships(alice: User, departments: dict[str, Group]) -> None:
    alice.groups.add(departments["sales"])
    # More groups than a token can list: Entra ID sends a pointer to Graph instead.
    claims: dict[str, Any] = {"_claim_names": {"groups": "src1"}, "_claim_sources": {"src1": {}}, "roles": []}
    identity_sync(user=alice, claims=claims)
    assert names(alice) == ["sales"]
    identity_sync(user=alice, claims={"groups": [], "roles": []})
    assert names(alice) == []


def test_group_ids_match_case_insensitively(alice: User, departments: dict[str, Group]) -> None:
    identity_sync(user=alice, claims={"groups": [SALES_ID.upper()]})
    assert names(alice) == ["sales"]
