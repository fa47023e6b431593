"""`manage.py config_export [FILE]`: the whole configuration as the YAML that gateway_sync reads.

Providers, models and prices, deployments, groups and their data policies, users with their
group memberships, apps, quota rules and the prompt library. Never a credential: a provider's
stored `api_key` stays in the database (the file names the providers that have one, in a
comment), and importing the file keeps it, because an absent `api_key` keeps the stored one.
Headers whose name looks like a credential are left out the same way. The output is stable
(sorted, no timestamp of its own), so exporting an unchanged configuration twice gives the same
bytes and two exports can be diffed.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand

from gateway.models import CatalogModel, DataPolicy, Provider
from gateway.sync import PRICE_FIELDS
from portal.models import App
from prompts.services import prompts_export
from quotas.models import QuotaRule, SubjectType

# Header names that may carry a credential: never exported (an import then keeps the stored ones).
SECRET_HEADER = re.compile(r"auth|key|token|secret|password|cookie|signature|credential", re.IGNORECASE)
TIMEOUTS = ("connect_timeout", "first_byte_timeout", "chunk_timeout", "total_timeout")


def _number(value: Decimal | float | int) -> int | float | str:
    """A YAML number that reads back as exactly ``value`` (a string when a float would round it)."""
    exact = Decimal(str(value)).normalize()
    if exact == exact.to_integral_value():
        return int(exact)
    as_float = float(exact)
    return as_float if Decimal(repr(as_float)) == exact else f"{exact:f}"


def _providers(kept_back: list[str]) -> list[dict[str, Any]]:
    out = []
    for p in Provider.objects.order_by("name"):
        spec: dict[str, Any] = {"name": p.name, "kind": p.kind, "base_url": p.base_url}
        if p.api_key_env:
            spec["api_key_env"] = p.api_key_env
        if p.api_key_encrypted:
            kept_back.append(f"{p.name}: api_key")
        for attr, key in (("api_version", "api_version"), ("region", "region")):
            if getattr(p, attr):
                spec[key] = getattr(p, attr)
        spec["enabled"] = p.enabled
        spec["timeout"] = _number(p.timeout_seconds)
        spec["connect_timeout"] = _number(p.connect_timeout_seconds)
        headers = p.extra_headers or {}
        secret = sorted(name for name in headers if SECRET_HEADER.search(name))
        if secret:
            kept_back.append(f"{p.name}: headers ({', '.join(secret)})")
        else:
            spec["headers"] = dict(sorted(headers.items()))
        spec["flags"] = list(p.flags or [])
        spec["options"] = dict(sorted((p.options or {}).items()))
        out.append(spec)
    return out


def _models() -> list[dict[str, Any]]:
    out = []
    models = CatalogModel.objects.order_by("name").prefetch_related("allowed_groups", "deployments__provider")
    for m in models:
        spec: dict[str, Any] = {"name": m.name, "kind": m.kind}
        if m.description:
            spec["description"] = m.description
        spec["enabled"] = m.enabled
        spec["max_output_tokens"] = m.max_output_tokens
        spec["price"] = {f: _number(getattr(m, f)) for f in PRICE_FIELDS if getattr(m, f)}
        spec["groups"] = sorted(g.name for g in m.allowed_groups.all())
        spec["fallbacks"] = list(m.fallbacks or [])
        deployments = sorted(
            m.deployments.all(), key=lambda d: (d.priority, d.provider.name, d.provider_model)
        )
        spec["deployments"] = []
        for d in deployments:
            dep: dict[str, Any] = {"provider": d.provider.name, "model": d.provider_model, "weight": d.weight,
                                   "priority": d.priority, "enabled": d.enabled}  # fmt: skip
            if d.region:
                dep["region"] = d.region
            if d.flags:
                dep["flags"] = list(d.flags)
            for name in TIMEOUTS:
                if getattr(d, name) is not None:
                    dep[name] = _number(getattr(d, name))
            spec["deployments"].append(dep)
        out.append(spec)
    return out


def _groups() -> list[dict[str, Any]]:
    policies = {p.group_id: p for p in DataPolicy.objects.all()}
    out = []
    for g in Group.objects.order_by("name"):
        spec: dict[str, Any] = {"name": g.name}
        policy = policies.get(g.pk)
        if policy is not None:
            spec["data_policy"] = {k: list(getattr(policy, k) or [])
                                   for k in ("allowed_regions", "allowed_providers", "required_flags")}  # fmt: skip
        out.append(spec)
    return out


def _users() -> list[dict[str, Any]]:
    out = []
    for u in get_user_model().objects.order_by("username").prefetch_related("groups"):
        spec: dict[str, Any] = {"username": u.get_username()}
        for attr in ("email", "first_name", "last_name"):
            if getattr(u, attr):
                spec[attr] = getattr(u, attr)
        spec["is_staff"] = u.is_staff
        spec["is_active"] = u.is_active
        spec["groups"] = sorted(g.name for g in u.groups.all())
        out.append(spec)
    return out


def _apps() -> list[dict[str, Any]]:
    return [{"name": a.name, "slug": a.slug, "owner_group": a.owner_group.name, "description": a.description,
             "url": a.url} for a in App.objects.order_by("slug").select_related("owner_group")]  # fmt: skip


def _subject(rule: QuotaRule) -> str:
    if rule.subject_type == SubjectType.USER:
        return f"user:{rule.user.get_username()}"  # type: ignore[union-attr]
    if rule.subject_type == SubjectType.KEY:
        return f"key:{rule.key_id}"
    prefix = "group" if rule.subject_type == SubjectType.GROUP else "group-member"
    return f"{prefix}:{rule.group.name}"  # type: ignore[union-attr]


def _quotas() -> list[dict[str, Any]]:
    items = []
    for r in QuotaRule.objects.select_related("user", "group"):
        spec: dict[str, Any] = {"subject": _subject(r), "metric": r.metric, "window": r.window,
                                "limit": _number(r.limit)}  # fmt: skip
        if r.model_names:
            spec["models"] = sorted(r.model_names)
        if r.warn_at_percent is not None:
            spec["warn_at"] = r.warn_at_percent
        if r.name:
            spec["name"] = r.name
        spec["enabled"] = r.enabled
        items.append(spec)
    # The file's order, not the database's: rules are identified by these fields, not by id.
    return sorted(items, key=lambda s: (s["subject"], s["metric"], s["window"], s.get("models", [])))


def config_document() -> tuple[dict[str, Any], list[str]]:
    """The configuration as gateway_sync's document, and what was held back (credentials)."""
    kept_back: list[str] = []
    data = {"providers": _providers(kept_back), "models": _models(), "groups": _groups(), "users": _users(),
            "apps": _apps(), "quotas": _quotas(), "prompts": prompts_export()}  # fmt: skip
    return data, kept_back


def config_yaml() -> str:
    """The export as text: a header comment, then the YAML document."""
    data, kept_back = config_document()
    header = [
        "# The configuration of this llm-control, written by `manage.py config_export`.",
        "# Load it with `manage.py config_import FILE [--prune]` (or gateway_sync; the same code).",
        "# Credentials are never exported. An absent api_key (or headers) keeps what the target",
        "# database stores, so re-importing this file never wipes them.",
    ]
    if kept_back:
        header.append("# Held back here, kept by an import where they exist:")
        header += [f"#   {item}" for item in kept_back]
    body = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110, default_flow_style=False)
    return "\n".join(header) + "\n" + body


class Command(BaseCommand):
    help = "Write the configuration (gateway_sync's YAML, with quotas and prompts; no credentials) to FILE or stdout."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("file", nargs="?", type=Path, help="Where to write; standard output when omitted")

    def handle(self, *args: Any, file: Path | None, **options: Any) -> None:
        text = config_yaml()
        if file is None:
            self.stdout.write(text, ending="")
            return
        file.write_text(text, encoding="utf-8")
        self.stderr.write(f"Wrote {file}")
