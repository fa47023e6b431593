"""Who may read, edit and publish which prompt: users × scopes × actions."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied
from django.test import Client

from prompts import services
from prompts.models import Prompt, PromptEditor
from tests.prompts.conftest import Library, fresh, make_user

pytestmark = pytest.mark.django_db

# scope → the users who may read / edit / publish the published prompt of that scope.
MATRIX = {
    "company": {
        "read": {"sam", "sue", "hal", "cora", "olga", "root"},
        "edit": {"cora", "root"},
        "publish": {"cora", "root"},
    },
    "groups": {
        "read": {"sam", "sue", "cora", "root"},
        "edit": {"sam", "cora", "root"},
        "publish": {"sam", "cora", "root"},
    },
    "personal": {"read": {"sue"}, "edit": {"sue"}, "publish": {"sue"}},
}
USERS = ("sam", "sue", "hal", "cora", "olga", "root")
CASES = [
    (scope, user, action) for scope in MATRIX for user in USERS for action in ("read", "edit", "publish")
]


@pytest.mark.parametrize(("scope", "username", "action"), CASES)
def test_the_permission_matrix(library: Library, scope: str, username: str, action: str) -> None:
    prompt, user = library.prompts[scope], fresh(library.users[username])
    allowed = username in MATRIX[scope][action]
    if action == "read":
        assert Prompt.objects.visible_to(user).filter(pk=prompt.pk).exists() is allowed
    elif action == "edit":
        assert prompt.editable_by(user) is allowed
    else:
        assert prompt.publishable_by(user) is allowed


@pytest.mark.parametrize(("scope", "username"), [(s, u) for s in MATRIX for u in USERS])
def test_pages_follow_the_matrix(library: Library, scope: str, username: str) -> None:
    """An unreadable prompt is a 404 on every page; readable but not editable is a 403 on edits."""
    prompt, client = library.prompts[scope], Client()
    client.force_login(library.users[username])
    detail = client.get(f"/prompts/{prompt.uuid}/")
    edit = client.get(f"/prompts/{prompt.uuid}/edit/")
    publish = client.post(f"/prompts/{prompt.uuid}/publish/")
    readable, editable = username in MATRIX[scope]["read"], username in MATRIX[scope]["edit"]
    publishable = username in MATRIX[scope]["publish"]
    assert detail.status_code == (200 if readable else 404)
    assert edit.status_code == (200 if editable else 403 if readable else 404)
    assert publish.status_code == (302 if publishable and readable else 403 if readable else 404)


def test_drafts_are_seen_only_by_their_editors(library: Library) -> None:
    sales = services.prompt_create(actor=library.users["sam"], title="Draft", user_template="x",
                                   scope=Prompt.Scope.GROUPS, groups=[library.sales])  # fmt: skip
    assert Prompt.objects.visible_to(fresh(library.users["sam"])).filter(pk=sales.pk).exists()
    assert not Prompt.objects.visible_to(fresh(library.users["sue"])).filter(pk=sales.pk).exists()
    services.prompt_publish(prompt=sales, actor=fresh(library.users["sam"]))
    assert Prompt.objects.visible_to(fresh(library.users["sue"])).filter(pk=sales.pk).exists()
    assert not Prompt.objects.visible_to(fresh(library.users["hal"])).filter(pk=sales.pk).exists()


def test_widening_the_scope_needs_a_curator_of_the_wider_scope(library: Library) -> None:
    """Sue makes her published personal prompt company-wide: it becomes a draft waiting for review,
    hidden from everyone else until a curator publishes it."""
    prompt, sue = library.prompts["personal"], fresh(library.users["sue"])
    latest = prompt.latest_version()
    assert latest is not None
    services.prompt_update(prompt=prompt, actor=sue, title=prompt.title, system="", user_template=latest.user_template,
                           scope=Prompt.Scope.COMPANY)  # fmt: skip
    prompt.refresh_from_db()
    assert prompt.published_version is None and prompt.review_requested_at is not None
    assert not Prompt.objects.visible_to(fresh(library.users["olga"])).filter(pk=prompt.pk).exists()
    with pytest.raises(PermissionDenied):
        services.prompt_publish(prompt=prompt, actor=sue)
    client = Client()
    client.force_login(library.users["cora"])
    assert "My notes" in client.get("/prompts/").content.decode()  # in the curator's review list
    services.prompt_publish(prompt=prompt, actor=fresh(library.users["cora"]))
    assert Prompt.objects.visible_to(fresh(library.users["olga"])).filter(pk=prompt.pk).exists()


def test_a_department_prompt_for_two_departments_needs_an_editor_of_both(library: Library) -> None:
    both = services.prompt_create(actor=library.users["sam"], title="Both", user_template="x",
                                  scope=Prompt.Scope.GROUPS, groups=[library.sales, library.hr])  # fmt: skip
    assert both.review_requested_at is not None
    assert not both.publishable_by(fresh(library.users["sam"]))
    assert both.editable_by(fresh(library.users["sam"]))


def test_a_prompt_survives_its_author_and_can_be_taken_over(library: Library) -> None:
    prompt = library.prompts["groups"]
    library.users["sam"].delete()
    prompt.refresh_from_db()
    assert prompt.owner is None and prompt.versions.count() == 1
    new_editor = make_user("nina", library.sales)
    PromptEditor.objects.create(group=library.sales, user=new_editor)
    nina = fresh(new_editor)
    assert prompt.editable_by(nina)
    services.prompt_handover(prompt=prompt, actor=nina, new_owner=nina)
    prompt.refresh_from_db()
    assert prompt.owner == nina


def test_hand_over_through_the_page_is_audited(library: Library) -> None:
    from portal.models import AuditEvent

    prompt, client = library.prompts["groups"], Client()
    client.force_login(library.users["sam"])
    response = client.post(f"/prompts/{prompt.uuid}/handover/", {"username": "sue"})
    assert response.status_code == 302
    prompt.refresh_from_db()
    assert prompt.owner == library.users["sue"]
    assert AuditEvent.objects.filter(action="prompt.handed_over", object_id=str(prompt.pk)).exists()
    # The outsider cannot even find it.
    client.force_login(library.users["hal"])
    assert client.post(f"/prompts/{prompt.uuid}/handover/", {"username": "hal"}).status_code == 404


def test_posts_need_the_csrf_token(library: Library) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(library.users["cora"])
    assert client.post(f"/prompts/{library.prompts['company'].uuid}/publish/").status_code == 403
    assert client.post("/prompts/from-playground/", {"system": "x"}).status_code == 403
