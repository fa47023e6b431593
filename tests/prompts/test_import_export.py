"""Moving a library between environments: export to JSON, import idempotently by uuid, with versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from prompts import services
from prompts.models import Prompt, PromptVersion
from tests.prompts.conftest import Library, fresh

pytestmark = pytest.mark.django_db


def test_export_then_import_into_an_empty_library_recreates_it(library: Library, tmp_path: Path) -> None:
    prompt = library.prompts["groups"]
    services.prompt_update(prompt=prompt, actor=fresh(library.users["sam"]), title=prompt.title, system="S",
                           user_template="v2 {{x}}", message="second")  # fmt: skip
    target = tmp_path / "library.json"
    call_command("prompts_export", str(target))
    data = json.loads(target.read_text())
    assert {p["title"] for p in data["prompts"]} == {"Summarise", "Sales pitch", "My notes"}

    before = {str(p.uuid): (p.title, p.scope, p.published_version.number if p.published_version else None)
              for p in Prompt.objects.all()}  # fmt: skip
    Prompt.objects.all().delete()
    call_command("prompts_import", str(target))
    after = {str(p.uuid): (p.title, p.scope, p.published_version.number if p.published_version else None)
             for p in Prompt.objects.all()}  # fmt: skip
    assert after == before
    again = Prompt.objects.get(uuid=prompt.uuid)
    assert [v.message for v in again.versions.order_by("number")] == ["Created", "second"]
    assert again.groups.get() == library.sales and again.owner == library.users["sam"]
    assert again.tag_list == ["sales"]


def test_importing_twice_changes_nothing(library: Library) -> None:
    data = services.prompts_export()
    assert services.prompts_import(data=data) == {"created": 0, "updated": 0, "versions": 0}
    counts = (Prompt.objects.count(), PromptVersion.objects.count())
    assert services.prompts_import(data=json.dumps(data)) == {"created": 0, "updated": 0, "versions": 0}
    assert (Prompt.objects.count(), PromptVersion.objects.count()) == counts


def test_an_import_adds_new_versions_and_moves_the_published_one(library: Library) -> None:
    data = services.prompts_export()
    item = next(p for p in data["prompts"] if p["title"] == "Summarise")
    item["versions"].append(
        {**item["versions"][0], "number": 2, "user": "Sum up: {{text}}", "message": "prod"}
    )
    item["published_version"] = 2
    item["title"] = "Summarise (prod)"
    assert services.prompts_import(data=data) == {"created": 0, "updated": 1, "versions": 1}
    prompt = Prompt.objects.get(uuid=item["uuid"])
    assert prompt.title == "Summarise (prod)" and prompt.published_version is not None
    assert prompt.published_version.user_template == "Sum up: {{text}}"


def test_a_broken_file_is_refused_whole(library: Library, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something else", "prompts": []}))
    with pytest.raises(CommandError):
        call_command("prompts_import", str(bad))
    data = services.prompts_export()
    # A good new prompt first, a bad version last: the good one must not stay behind.
    data["prompts"].insert(
        0, {"uuid": "11111111-1111-1111-1111-111111111111", "title": "New", "versions": []}
    )
    data["prompts"][-1]["versions"].append({"number": 9, "user": "{{a | colour:red}}"})
    bad.write_text(json.dumps(data))
    with pytest.raises(CommandError):
        call_command("prompts_import", str(bad))
    assert not Prompt.objects.filter(title="New").exists()  # one transaction: nothing half-imported


def test_the_admin_exports_and_imports(library: Library, admin_user: object, tmp_path: Path) -> None:
    client = Client()
    client.force_login(admin_user)  # type: ignore[arg-type]
    ids = [p.pk for p in library.prompts.values()]
    export = client.post("/admin/prompts/prompt/", {"action": "export_json", "_selected_action": ids})
    assert export.status_code == 200 and export["Content-Type"] == "application/json"
    data = json.loads(export.content)
    assert len(data["prompts"]) == 3
    Prompt.objects.filter(pk=library.prompts["company"].pk).delete()
    upload = tmp_path / "prompts.json"
    upload.write_bytes(export.content)
    with upload.open("rb") as handle:
        response = client.post("/admin/prompts/prompt/import/", {"file": handle})
    assert response.status_code == 302
    assert Prompt.objects.filter(uuid=library.prompts["company"].uuid).exists()
