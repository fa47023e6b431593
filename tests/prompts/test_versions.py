"""Every change is a version; one is published; any two can be compared; roll back adds a version."""

from __future__ import annotations

import pytest
from django.test import Client

from portal.models import AuditEvent
from prompts import services
from tests.prompts.conftest import Library, fresh

pytestmark = pytest.mark.django_db


def _edit(library: Library, text: str, message: str = "") -> None:
    prompt = library.prompts["groups"]
    services.prompt_update(prompt=prompt, actor=fresh(library.users["sam"]), title=prompt.title, system="",
                           user_template=text, message=message)  # fmt: skip


def test_each_change_of_the_body_is_a_new_version_with_author_and_message(library: Library) -> None:
    prompt = library.prompts["groups"]
    _edit(library, "Pitch {{product}} briefly.", "shorter")
    _edit(library, "Pitch {{product}} briefly.", "no change")  # same body: no new version
    versions = list(prompt.versions.order_by("number"))
    assert [v.number for v in versions] == [1, 2]
    assert versions[1].author == library.users["sam"] and versions[1].message == "shorter"
    prompt.refresh_from_db()
    assert prompt.published_version == versions[0]  # publishing is a separate step
    assert AuditEvent.objects.filter(action="prompt.updated", object_id=str(prompt.pk)).count() == 2


def test_roll_back_creates_a_new_version_equal_to_the_old_one(library: Library) -> None:
    prompt = library.prompts["groups"]
    first = prompt.versions.get(number=1)
    _edit(library, "v2 {{product}}")
    new = services.prompt_rollback(prompt=prompt, actor=fresh(library.users["sam"]), version=first)
    assert new.number == 3 and new.content() == first.content() and "v1" in new.message
    services.prompt_publish(prompt=prompt, actor=fresh(library.users["sam"]), version=new)
    prompt.refresh_from_db()
    assert prompt.published_version == new
    assert AuditEvent.objects.filter(action="prompt.rolled_back").exists()


def test_the_diff_page_shows_changes_escaped(library: Library) -> None:
    prompt = library.prompts["groups"]
    _edit(library, "Pitch {{product}} <script>alert('x')</script>")
    client = Client()
    client.force_login(library.users["sam"])
    page = client.get(f"/prompts/{prompt.uuid}/versions/?a=1&b=2").content.decode()
    assert (
        '<span class="pl-add">+Pitch {{product}} &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;</span>'
        in page
    )
    assert '<span class="pl-del">-Pitch {{product}} to {{customer | optional}}.</span>' in page
    assert "<script>alert" not in page
    assert client.get(f"/prompts/{prompt.uuid}/versions/?a=1&b=99").status_code == 404
    assert client.get(f"/prompts/{prompt.uuid}/versions/?a=x").status_code == 404


def test_roll_back_and_publish_a_version_from_the_page(library: Library) -> None:
    prompt = library.prompts["groups"]
    _edit(library, "v2 {{product}}")
    client = Client()
    client.force_login(library.users["sam"])
    assert client.post(f"/prompts/{prompt.uuid}/rollback/", {"version": "1"}).status_code == 302
    assert client.post(f"/prompts/{prompt.uuid}/publish/", {"version": "3"}).status_code == 302
    prompt.refresh_from_db()
    assert prompt.published_version is not None and prompt.published_version.number == 3
    assert client.post(f"/prompts/{prompt.uuid}/rollback/", {"version": "42"}).status_code == 404
    # A member who may read but not edit cannot roll back.
    client.force_login(library.users["sue"])
    assert client.post(f"/prompts/{prompt.uuid}/rollback/", {"version": "1"}).status_code == 403


def test_editing_through_the_form_saves_a_version(library: Library) -> None:
    prompt = library.prompts["groups"]
    client = Client()
    client.force_login(library.users["sam"])
    form = {"title": "Sales pitch", "scope": "groups", "groups": [library.sales.pk], "system": "",
            "user_template": "Pitch {{product}} now", "params": '{"temperature": 0.5}', "message": "urgent",
            "tags": "sales, Urgent Things"}  # fmt: skip
    assert client.post(f"/prompts/{prompt.uuid}/edit/", form).status_code == 302
    prompt.refresh_from_db()
    latest = prompt.latest_version()
    assert latest is not None and latest.number == 2 and latest.params == {"temperature": 0.5}
    assert prompt.tag_list == ["sales", "urgent-things"]
    bad = client.post(f"/prompts/{prompt.uuid}/edit/", {**form, "user_template": "{{a | colour:red}}"})
    assert bad.status_code == 200 and "unknown modifier" in bad.content.decode()
    assert prompt.versions.count() == 2
