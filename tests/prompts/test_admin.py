"""The prompt library in the admin console: every model registered, its pages load."""

from __future__ import annotations

import pytest
from django.test import Client

from prompts.models import PromptEditor
from tests.prompts.conftest import Library

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("model", ["prompt", "promptversion", "prompteditor", "promptfavorite"])
def test_the_admin_lists_and_adds(library: Library, admin_user: object, model: str) -> None:
    client = Client()
    client.force_login(admin_user)  # type: ignore[arg-type]
    assert client.get(f"/admin/prompts/{model}/").status_code == 200
    assert client.get(f"/admin/prompts/{model}/add/").status_code == 200


def test_a_prompt_page_shows_its_versions_and_an_editor_is_added_in_admin(
    library: Library, admin_user: object
) -> None:
    client = Client()
    client.force_login(admin_user)  # type: ignore[arg-type]
    page = client.get(f"/admin/prompts/prompt/{library.prompts['groups'].pk}/change/")
    assert page.status_code == 200
    assert "Created" in page.content.decode()  # the version inline
    response = client.post(
        "/admin/prompts/prompteditor/add/", {"group": library.hr.pk, "user": library.users["hal"].pk}
    )
    assert response.status_code == 302
    assert PromptEditor.objects.filter(group=library.hr, user=library.users["hal"]).exists()
    assert library.prompts["groups"].publishable_by(library.users["hal"]) is False
