"""`manage.py config_export` / `config_import`: the whole configuration round-trips, without credentials."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
import yaml
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command

from gateway.models import CatalogModel, DataPolicy, Provider
from portal.models import App
from prompts.models import Prompt
from quotas.models import QuotaRule
from tests.prompts.conftest import make_library

pytestmark = pytest.mark.django_db

# Credentials by environment variable only: what can be rebuilt from the file alone.
CONFIG = """
providers:
  - {name: local, kind: openai_compatible, base_url: "http://127.0.0.1:18000/v1", timeout: 120.5, flags: [eu_only]}
  - name: azure-eu
    kind: azure_openai
    base_url: "https://x.openai.azure.com"
    api_key_env: AZ_KEY
    api_version: "2024-10-21"
    region: westeurope
    headers: {x-team: platform}
  - {name: bedrock, kind: bedrock, base_url: "https://bedrock-runtime.eu-central-1.amazonaws.com",
     access_key_id: AKIAEXAMPLE, api_key_env: AWS_SECRET_ACCESS_KEY, region: eu-central-1, enabled: false}
models:
  - name: gpt-4o-mini
    description: Small model
    max_output_tokens: 2048
    price: {input_per_mtok: 0.15, output_per_mtok: 0.6, cached_input_per_mtok: 0.075}
    groups: [engineering]
    fallbacks: [nova-lite]
    deployments:
      - {provider: local, model: gpt-4o-mini, weight: 3}
      - {provider: azure-eu, model: my-mini, priority: 1, first_byte_timeout: 10, flags: [zdr]}
  - name: nova-lite
    price: {input_per_mtok: 0.06, output_per_mtok: 0.24}
    deployments: [{provider: bedrock, model: "amazon.nova-lite-v1:0", enabled: false}]
  - {name: whisper-1, kind: audio, price: {per_audio_second: 0.0001}}
groups:
  - name: engineering
  - name: marketing
    data_policy: {allowed_regions: [westeurope], required_flags: [eu_only]}
users:
  - {username: alice, email: alice@example.com, first_name: Alice, groups: [engineering, marketing]}
  - {username: ops, is_staff: true, groups: []}
apps:
  - {name: Support bot, slug: support-bot, owner_group: engineering, description: Answers tickets, url: "https://bot.example.com"}
quotas:
  - {subject: "user:alice", metric: requests, window: day, limit: 100}
  - {subject: "group:engineering", metric: cost_usd, window: month, limit: 500.25, warn_at: 80, name: Eng budget}
  - {subject: "group-member:marketing", metric: tokens, window: minute, limit: 10000, models: [gpt-4o-mini]}
"""


def _run(command: str, *args: str) -> str:
    out = StringIO()
    call_command(command, *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def _export(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    _run("config_export", str(path))
    return path.read_text()


def _load(tmp_path: Path, text: str, *args: str, command: str = "config_import") -> str:
    path = tmp_path / "in.yaml"
    path.write_text(text)
    return _run(command, str(path), *args)


def _wipe() -> None:
    Prompt.objects.all().delete()
    QuotaRule.objects.all().delete()
    App.objects.all().delete()
    CatalogModel.objects.all().delete()
    Provider.objects.all().delete()
    DataPolicy.objects.all().delete()
    User.objects.all().delete()
    Group.objects.all().delete()


def test_an_export_imported_into_an_empty_database_exports_the_same_file(tmp_path: Path) -> None:
    _load(tmp_path, CONFIG, command="gateway_sync")
    make_library()  # three prompts with their versions, owners and departments
    first = _export(tmp_path, "a.yaml")
    data = yaml.safe_load(first)
    assert [p["name"] for p in data["providers"]] == ["azure-eu", "bedrock", "local"]
    assert len(data["quotas"]) == 3 and len(data["prompts"]["prompts"]) == 3
    assert data["models"][0]["price"] == {
        "input_per_mtok": 0.15,
        "output_per_mtok": 0.6,
        "cached_input_per_mtok": 0.075,
    }
    assert {q["subject"] for q in data["quotas"]} == {
        "user:alice",
        "group:engineering",
        "group-member:marketing",
    }

    _wipe()
    assert not Provider.objects.exists() and not Prompt.objects.exists()
    _load(tmp_path, first)
    assert _export(tmp_path, "b.yaml") == first
    assert Provider.objects.get(name="bedrock").options == {"access_key_id": "AKIAEXAMPLE"}
    assert QuotaRule.objects.get(name="Eng budget").warn_at_percent == 80
    assert Prompt.objects.get(title="Sales pitch").published_version is not None
    # Applying it again changes nothing, with or without --prune.
    assert _load(tmp_path, first).strip() == "no changes"
    assert _load(tmp_path, first, "--prune").strip() == "no changes"


def test_credentials_are_never_in_the_file_and_survive_its_import(tmp_path: Path) -> None:
    secret_file = CONFIG.replace(
        'base_url: "http://127.0.0.1:18000/v1",',
        'base_url: "http://127.0.0.1:18000/v1", api_key: sk-stored-secret, headers: {Authorization: Bearer hdr-secret},',
    )
    _load(tmp_path, secret_file, command="gateway_sync")
    text = _export(tmp_path, "a.yaml")
    assert "sk-stored-secret" not in text and "hdr-secret" not in text
    assert "#   local: api_key" in text and "#   local: headers (Authorization)" in text
    local = next(p for p in yaml.safe_load(text)["providers"] if p["name"] == "local")
    assert "api_key" not in local and "headers" not in local
    assert _load(tmp_path, text, "--prune").strip() == "no changes"
    provider = Provider.objects.get(name="local")
    assert provider.credential() == "sk-stored-secret"
    assert provider.extra_headers == {"Authorization": "Bearer hdr-secret"}
    assert _export(tmp_path, "b.yaml") == text


def test_a_bad_prompts_section_refuses_the_whole_file(tmp_path: Path) -> None:
    bad = CONFIG + "prompts: {format: something-else, prompts: []}\n"
    with pytest.raises(CommandError, match="prompts: .*Not a prompt library export"):
        _load(tmp_path, bad)
    assert not Provider.objects.exists() and not QuotaRule.objects.exists()  # one transaction


def test_the_export_goes_to_standard_output_without_a_file(tmp_path: Path) -> None:
    _load(tmp_path, CONFIG, command="gateway_sync")
    text = _run("config_export")
    assert text == _export(tmp_path, "a.yaml")
    assert yaml.safe_load(text)["apps"] == [{"name": "Support bot", "slug": "support-bot", "owner_group": "engineering",
                                             "description": "Answers tickets", "url": "https://bot.example.com"}]  # fmt: skip
