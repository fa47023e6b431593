"""`manage.py gateway_sync FILE.yaml [--prune]`: declarative, idempotent configuration."""

from __future__ import annotations

from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from gateway.models import CatalogModel, Deployment, Provider

pytestmark = pytest.mark.django_db

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "gateway.example.yaml"

FILE = """
providers:
  - {name: local, kind: openai_compatible, base_url: "http://127.0.0.1:18000/v1", api_key: sk-x}
  - {name: azure-eu, kind: azure_openai, base_url: "https://x.openai.azure.com", api_key_env: AZ_KEY, api_version: "2024-10-21", region: westeurope}
models:
  - name: gpt-4o-mini
    price: {input_per_mtok: 0.15, output_per_mtok: 0.60, cached_input_per_mtok: 0.075}
    deployments: [{provider: local, model: gpt-4o-mini}]
groups: [{name: engineering}]
users: [{username: alice, groups: [engineering]}]
"""


def _sync(tmp_path: Path, text: str, *args: str) -> str:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    out = StringIO()
    call_command("gateway_sync", str(path), *args, stdout=out)
    return out.getvalue()


def test_the_issue_example_loads_and_a_second_run_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _sync(tmp_path, FILE)
    assert "created provider local" in first
    assert _sync(tmp_path, FILE).strip() == "no changes"
    local = Provider.objects.get(name="local")
    assert local.credential() == "sk-x"
    assert "sk-x" not in local.api_key_encrypted
    monkeypatch.setenv("AZ_KEY", "from-env")
    assert Provider.objects.get(name="azure-eu").credential() == "from-env"
    model = CatalogModel.objects.get(name="gpt-4o-mini")
    assert str(model.cached_input_per_mtok) == "0.075000"
    assert Deployment.objects.get().provider == local
    assert User.objects.get(username="alice").groups.get().name == "engineering"


def test_prune_removes_what_the_file_no_longer_names(tmp_path: Path) -> None:
    _sync(tmp_path, FILE)
    smaller = "providers:\n  - {name: local, kind: openai_compatible, base_url: 'http://127.0.0.1:18000/v1'}\nmodels: []\n"
    assert Provider.objects.count() == 2
    _sync(tmp_path, smaller)
    assert Provider.objects.count() == 2  # without --prune nothing is removed
    out = _sync(tmp_path, smaller, "--prune")
    assert "deleted provider azure-eu" in out and "deleted model gpt-4o-mini" in out
    assert list(Provider.objects.values_list("name", flat=True)) == ["local"]
    assert Provider.objects.get().credential() == "sk-x"  # a file without api_key keeps the stored one
    assert User.objects.filter(username="alice").exists()  # users are never pruned


def test_a_bad_file_is_refused_whole(tmp_path: Path) -> None:
    bad = FILE.replace("deployments: [{provider: local", "deployments: [{provider: nowhere")
    with pytest.raises(CommandError, match="unknown provider 'nowhere'"):
        _sync(tmp_path, bad)
    assert not Provider.objects.exists()  # the transaction rolled back
    with pytest.raises(CommandError, match="unknown field"):
        _sync(tmp_path, "providers:\n  - {name: a, kind: openai, base_url: 'http://x', colour: red}\n")


def test_the_documented_example_file_loads(tmp_path: Path) -> None:
    out = StringIO()
    call_command("gateway_sync", str(EXAMPLE), stdout=out)
    assert CatalogModel.objects.exists()


def test_quotas_are_part_of_the_file(tmp_path: Path) -> None:
    from quotas.models import QuotaRule

    quotas = (
        FILE
        + """quotas:
  - {subject: "user:alice", metric: requests, window: day, limit: 100}
  - {subject: "group:engineering", metric: cost_usd, window: month, limit: 500, warn_at: 80}
"""
    )
    _sync(tmp_path, quotas)
    assert _sync(tmp_path, quotas).strip() == "no changes"
    assert QuotaRule.objects.count() == 2
    budget = QuotaRule.objects.get(metric="cost_usd")
    assert budget.group is not None and budget.group.name == "engineering" and budget.warn_at_percent == 80
    _sync(tmp_path, quotas.replace("limit: 100}", "limit: 50}"))
    assert QuotaRule.objects.get(metric="requests").limit == 50
    _sync(tmp_path, FILE, "--prune")
    assert not QuotaRule.objects.exists()


@pytest.mark.parametrize("limit", ["1e12", "999999999999.5", "-1", "1e400", "lots"])
def test_a_quota_limit_the_column_cannot_hold_is_refused_and_nothing_is_written(
    tmp_path: Path, limit: str
) -> None:
    """A limit of 10^12 or more would be stored by SQLite and then break every rule load."""
    from quotas.models import QuotaRule

    text = FILE + f'quotas:\n  - {{subject: "user:alice", metric: tokens, window: month, limit: {limit}}}\n'
    with pytest.raises(CommandError, match="limit must be"):
        _sync(tmp_path, text)
    assert not QuotaRule.objects.exists()
    _sync(tmp_path, text.replace(f"limit: {limit}", "limit: 999999999999"))
    assert QuotaRule.objects.get().limit == Decimal(999_999_999_999)


def test_an_absent_api_key_keeps_the_stored_credential_and_an_empty_one_clears_it(tmp_path: Path) -> None:
    with_secrets = FILE.replace("api_key: sk-x}", "api_key: sk-x, headers: {Authorization: Bearer h}}")
    _sync(tmp_path, with_secrets)
    without = FILE.replace(", api_key: sk-x}", "}")
    assert _sync(tmp_path, without).strip() == "no changes"  # what an export (no credentials) re-imports
    local = Provider.objects.get(name="local")
    assert local.credential() == "sk-x" and local.extra_headers == {"Authorization": "Bearer h"}
    out = _sync(tmp_path, FILE.replace("api_key: sk-x}", "api_key: sk-y}"))
    assert "updated provider local credential" in out
    assert Provider.objects.get(name="local").credential() == "sk-y"
    for cleared in ('api_key: ""', "api_key: null"):
        _sync(tmp_path, with_secrets)
        out = _sync(tmp_path, FILE.replace("api_key: sk-x}", f"{cleared}, headers: {{}}}}"))
        assert "updated provider local credential" in out and "updated provider local" in out.splitlines()
        local = Provider.objects.get(name="local")
        assert local.credential() == "" and local.api_key_encrypted == "" and local.extra_headers == {}


def test_the_prompts_section_loads_a_prompt_library_export(tmp_path: Path) -> None:
    from prompts.models import Prompt

    library = """prompts:
  format: llm-control.prompts/1
  prompts:
    - uuid: 3f0c1d2e-0000-4000-8000-000000000001
      title: Summarise
      scope: company
      published_version: 1
      versions: [{number: 1, user: "Summarise: {{text}}", created_at: "2026-01-02T03:04:05+00:00"}]
"""
    out = _sync(tmp_path, FILE + library)
    assert "created 1 prompt(s)" in out and "created 1 prompt version(s)" in out
    prompt = Prompt.objects.get(title="Summarise")
    assert prompt.published_version is not None and prompt.published_version.created_at.year == 2026
    assert prompt.published_version.created_at.isoformat() == "2026-01-02T03:04:05+00:00"
    assert _sync(tmp_path, FILE + library).strip() == "no changes"
