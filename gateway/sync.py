"""Declarative configuration: load providers, models, prices, groups, users, apps, quota rules and
the prompt library from YAML (what ``manage.py config_export`` writes).

`config_sync` is idempotent (a second run changes nothing) and with ``prune`` removes the
providers, models, deployments and apps that the file no longer names. Users and groups are never
pruned: identity belongs to Azure AD and removing a user would take their history with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

from gateway import crypto
from gateway.models import CatalogModel, DataPolicy, Deployment, Provider, ProviderKind
from gateway.ssrf import upstream_problem
from portal.models import App


class SyncError(ValueError):
    """The file is not valid; nothing was changed."""


@dataclass
class SyncReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"created {name}" for name in self.created] + [f"updated {name}" for name in self.updated]
        out += [f"deleted {name}" for name in self.deleted]
        return out or ["no changes"]


PRICE_FIELDS = ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok", "per_image", "per_audio_second")
PROVIDER_KEYS = {"name", "kind", "base_url", "api_key", "api_key_env", "api_version", "region", "enabled",
                 "timeout", "connect_timeout", "headers", "flags", "options", "access_key_id", "vertex", "project",
                 "location", "bedrock"}  # fmt: skip
MODEL_KEYS = {
    "name",
    "kind",
    "description",
    "enabled",
    "max_output_tokens",
    "price",
    "groups",
    "deployments",
    "fallbacks",
}
DEPLOYMENT_KEYS = {"provider", "model", "weight", "priority", "enabled", "region", "flags", "connect_timeout",
                   "first_byte_timeout", "chunk_timeout", "total_timeout"}  # fmt: skip
# Shorthands for vendor options (also accepted inside `options:`).
OPTION_KEYS = ("access_key_id", "vertex", "project", "location", "bedrock")


def _require(item: Any, where: str, keys: set[str], required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise SyncError(f"{where}: expected a mapping, got {type(item).__name__}")
    unknown = set(item) - keys
    if unknown:
        raise SyncError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    for name in required:
        if not item.get(name):
            raise SyncError(f"{where}: `{name}` is required")
    return item


def _apply(obj: Any, values: dict[str, Any], label: str, report: SyncReport, created: bool) -> None:
    changed = created
    for attr, value in values.items():
        if getattr(obj, attr) != value:
            setattr(obj, attr, value)
            changed = True
    if changed:
        obj.save()
        (report.created if created else report.updated).append(label)


@transaction.atomic
def config_sync(*, data: dict[str, Any], prune: bool = False) -> SyncReport:
    """Make the database match ``data`` (the parsed YAML)."""
    if not isinstance(data, dict):
        raise SyncError("the file must hold a mapping at the top level")
    report = SyncReport()
    groups = _sync_groups(data.get("groups") or [], report)
    providers = _sync_providers(data.get("providers") or [], report)
    _sync_models(data.get("models") or [], providers, groups, report, prune)
    _sync_users(data.get("users") or [], report)
    _sync_apps(data.get("apps") or [], report, prune)
    if prune:
        for provider in Provider.objects.exclude(name__in=list(providers)):
            report.deleted.append(f"provider {provider.name}")
            provider.delete()
    if "quotas" in data or prune:
        from quotas.sync import quotas_sync

        quotas_sync(items=data.get("quotas") or [], report=report, prune=prune)
    if data.get("prompts"):
        _sync_prompts(data["prompts"], report)
    return report


def _sync_prompts(library: Any, report: SyncReport) -> None:
    """The `prompts:` section: a prompt library export (prompts_export), imported by prompt uuid.

    Never pruned: the library holds people's own prompts, not only configuration.
    """
    from django.core.exceptions import ValidationError

    from prompts.services import prompts_import

    try:
        counts = prompts_import(data=library)
    except (ValidationError, ValueError, KeyError, TypeError, AssertionError) as exc:
        raise SyncError(f"prompts: {exc}") from None
    if counts["created"]:
        report.created.append(f"{counts['created']} prompt(s)")
    if counts["updated"]:
        report.updated.append(f"{counts['updated']} prompt(s)")
    if counts["versions"]:
        report.created.append(f"{counts['versions']} prompt version(s)")


def _group(name: str, report: SyncReport) -> Group:
    group, created = Group.objects.get_or_create(name=name)
    if created:
        report.created.append(f"group {name}")
    return group


def _sync_groups(items: list[Any], report: SyncReport) -> dict[str, Group]:
    groups = {}
    for i, item in enumerate(items):
        item = {"name": item} if isinstance(item, str) else item
        spec = _require(item, f"groups[{i}]", {"name", "data_policy"}, ("name",))
        group = groups[spec["name"]] = _group(spec["name"], report)
        policy_spec = spec.get("data_policy")
        if policy_spec is not None:
            policy_spec = _require(policy_spec, f"groups[{i}].data_policy",
                                   {"allowed_regions", "allowed_providers", "required_flags"}, ())  # fmt: skip
            policy = DataPolicy.objects.filter(group=group).first()
            _apply(policy or DataPolicy(group=group), {k: list(policy_spec.get(k) or []) for k in
                   ("allowed_regions", "allowed_providers", "required_flags")}, f"data policy {spec['name']}", report,
                   policy is None)  # fmt: skip
    return groups


def _sync_providers(items: list[Any], report: SyncReport) -> dict[str, Provider]:
    out = {}
    for i, item in enumerate(items):
        spec = _require(item, f"providers[{i}]", PROVIDER_KEYS, ("name", "kind", "base_url"))
        if spec["kind"] not in ProviderKind.values:
            raise SyncError(f"providers[{i}]: kind must be one of {', '.join(ProviderKind.values)}")
        if spec.get("api_key") and spec.get("api_key_env"):
            raise SyncError(f"providers[{i}]: give api_key or api_key_env, not both")
        url_problem = upstream_problem(str(spec["base_url"]))
        if url_problem is not None:
            raise SyncError(f"providers[{i}] ({spec['name']}): base_url {url_problem}")
        provider = Provider.objects.filter(name=spec["name"]).first()
        created = provider is None
        provider = provider or Provider(name=spec["name"])
        values = {
            "kind": spec["kind"], "base_url": spec["base_url"], "api_key_env": spec.get("api_key_env", ""),
            "api_version": str(spec.get("api_version", "")), "region": spec.get("region", ""),
            "enabled": bool(spec.get("enabled", True)), "timeout_seconds": float(spec.get("timeout", 600)),
            "connect_timeout_seconds": float(spec.get("connect_timeout", 10)),
            "flags": list(spec.get("flags") or []),
            "options": {**(spec.get("options") or {}), **{k: spec[k] for k in OPTION_KEYS if k in spec}},
        }  # fmt: skip
        if "headers" in spec or created:
            values["extra_headers"] = spec.get("headers") or {}
        # An absent `api_key` keeps the stored one (an export never holds credentials, so importing
        # it must not wipe them); `api_key: ""` or `api_key: null` clears it. `headers` likewise.
        wanted_key = str(spec.get("api_key") or "")
        stored_key = crypto.decrypt(provider.api_key_encrypted) if provider.api_key_encrypted else ""
        if "api_key" in spec and stored_key != wanted_key:
            provider.set_api_key(wanted_key)
            if not created:
                report.updated.append(f"provider {spec['name']} credential")
                provider.save()
        _apply(provider, values, f"provider {spec['name']}", report, created)
        out[spec["name"]] = provider
    return out


def _sync_models(
    items: list[Any],
    providers: dict[str, Provider],
    groups: dict[str, Group],
    report: SyncReport,
    prune: bool,
) -> None:
    names = []
    for i, item in enumerate(items):
        spec = _require(item, f"models[{i}]", MODEL_KEYS, ("name",))
        names.append(spec["name"])
        price = spec.get("price") or {}
        if not isinstance(price, dict) or set(price) - set(PRICE_FIELDS):
            raise SyncError(f"models[{i}].price: fields are {', '.join(PRICE_FIELDS)}")
        model = CatalogModel.objects.filter(name=spec["name"]).first()
        created = model is None
        model = model or CatalogModel(name=spec["name"])
        values: dict[str, Any] = {
            "kind": spec.get("kind", "chat"), "description": spec.get("description", ""),
            "enabled": bool(spec.get("enabled", True)), "max_output_tokens": int(spec.get("max_output_tokens", 4096)),
            "fallbacks": list(spec.get("fallbacks") or []),
        }  # fmt: skip
        for fname in PRICE_FIELDS:
            values[fname] = Decimal(str(price.get(fname, 0))).quantize(Decimal("0.00000001"))
        _apply(model, values, f"model {spec['name']}", report, created)
        if "groups" in spec:
            wanted = {groups.get(g) or _group(g, report) for g in spec["groups"] or []}
            if set(model.allowed_groups.all()) != wanted:
                model.allowed_groups.set(wanted)
                report.updated.append(f"model {spec['name']} groups")
        kept = []
        for j, dep_spec in enumerate(spec.get("deployments") or []):
            where = f"models[{i}].deployments[{j}]"
            dep_spec = _require(dep_spec, where, DEPLOYMENT_KEYS, ("provider", "model"))
            provider = (
                providers.get(dep_spec["provider"])
                or Provider.objects.filter(name=dep_spec["provider"]).first()
            )
            if provider is None:
                raise SyncError(f"{where}: unknown provider {dep_spec['provider']!r}")
            dep = Deployment.objects.filter(
                model=model, provider=provider, provider_model=dep_spec["model"]
            ).first()
            dep_created = dep is None
            dep = dep or Deployment(model=model, provider=provider, provider_model=dep_spec["model"])
            timeouts = {f: (float(dep_spec[f]) if dep_spec.get(f) is not None else None)
                        for f in ("connect_timeout", "first_byte_timeout", "chunk_timeout", "total_timeout")}  # fmt: skip
            _apply(dep, {"weight": int(dep_spec.get("weight", 1)), "priority": int(dep_spec.get("priority", 0)),
                         "enabled": bool(dep_spec.get("enabled", True)), "region": dep_spec.get("region", ""),
                         "flags": list(dep_spec.get("flags") or []), **timeouts},
                   f"deployment {spec['name']} → {provider.name}/{dep_spec['model']}", report, dep_created)  # fmt: skip
            kept.append(dep.pk)
        if prune:
            for dep in model.deployments.exclude(pk__in=kept).select_related("provider"):
                report.deleted.append(f"deployment {dep}")
                dep.delete()
    if prune:
        for model in CatalogModel.objects.exclude(name__in=names):
            report.deleted.append(f"model {model.name}")
            model.delete()


def _sync_users(items: list[Any], report: SyncReport) -> None:
    user_model = get_user_model()
    keys = {"username", "email", "first_name", "last_name", "groups", "is_staff", "is_active"}
    for i, item in enumerate(items):
        spec = _require(item, f"users[{i}]", keys, ("username",))
        user = user_model.objects.filter(username=spec["username"]).first()
        created = user is None
        if user is None:
            user = user_model(username=spec["username"])
            user.set_unusable_password()
        values: dict[str, Any] = {
            k: spec[k] for k in ("email", "first_name", "last_name", "is_staff", "is_active") if k in spec
        }
        _apply(user, values, f"user {spec['username']}", report, created)
        if "groups" in spec:
            wanted = {_group(g, report) for g in spec["groups"] or []}
            if set(user.groups.all()) != wanted:
                user.groups.set(wanted)
                report.updated.append(f"user {spec['username']} groups")


def _sync_apps(items: list[Any], report: SyncReport, prune: bool) -> None:
    slugs = []
    keys = {"name", "slug", "owner_group", "description", "url"}
    for i, item in enumerate(items):
        spec = _require(item, f"apps[{i}]", keys, ("name", "slug", "owner_group"))
        slugs.append(spec["slug"])
        app = App.objects.filter(slug=spec["slug"]).first()
        created = app is None
        app = app or App(slug=spec["slug"])
        values = {"name": spec["name"], "owner_group_id": _group(spec["owner_group"], report).pk,
                  "description": spec.get("description", ""), "url": spec.get("url", "")}  # fmt: skip
        _apply(app, values, f"app {spec['slug']}", report, created)
    if prune:
        for app in App.objects.exclude(slug__in=slugs):
            report.deleted.append(f"app {app.slug}")
            app.delete()
