"""Immutable snapshots of what the hot path needs, loaded from the database on cold paths only.

A `Snapshot` holds the whole model catalogue with deployments and providers (credentials
decrypted in memory); a `KeyInfo` is one issued key with its owner's groups. The hot path reads
these and never the ORM.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model

from gateway.models import ApiKey, CatalogModel, DataPolicy, Deployment
from gateway.ssrf import upstream_problem
from quotas.engine import RuleInfo, load_rules

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    id: int
    name: str
    kind: str
    base_url: str
    credential: str = field(repr=False)
    api_version: str
    region: str
    timeout: float
    connect_timeout: float
    extra_headers: tuple[tuple[str, str], ...]
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class DeploymentInfo:
    id: int
    name: str
    provider: ProviderInfo
    provider_model: str
    weight: int
    priority: int
    model_name: str = ""
    region: str = ""
    flags: frozenset[str] = frozenset()
    connect_timeout: float = 10.0
    first_byte_timeout: float | None = None
    chunk_timeout: float | None = None
    total_timeout: float = 600.0


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: int
    name: str
    kind: str
    created: int
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal
    per_image: Decimal
    per_audio_second: Decimal
    max_output_tokens: int
    allowed_group_ids: frozenset[int]
    deployments: tuple[DeploymentInfo, ...]
    fallbacks: tuple[str, ...] = ()

    def open_to(self, group_ids: frozenset[int]) -> bool:
        """Whether members of ``group_ids`` may use this model (no restriction = everyone)."""
        return not self.allowed_group_ids or bool(self.allowed_group_ids & group_ids)


@dataclass(frozen=True, slots=True)
class Snapshot:
    models: dict[str, ModelInfo]
    loaded_at: float
    rules: tuple[RuleInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key (if any), its owner, the owner's groups at this moment."""

    user_id: int | None
    username: str
    group_ids: frozenset[int]
    key_id: int | None = None
    key_name: str = ""
    app_id: int | None = None
    allowed_models: frozenset[str] = frozenset()
    expires_at: float | None = None  # epoch seconds
    revoked: bool = False
    # The data policy: None = any region / provider.
    allowed_regions: frozenset[str] | None = None
    allowed_providers: frozenset[str] | None = None
    required_flags: frozenset[str] = frozenset()

    def may_route_to(self, deployment: DeploymentInfo) -> bool:
        """Whether the caller's data policy lets a request go to ``deployment``."""
        if self.allowed_regions is not None and deployment.region not in self.allowed_regions:
            return False
        if self.allowed_providers is not None and deployment.provider.name not in self.allowed_providers:
            return False
        return self.required_flags <= deployment.flags

    def may_use(self, model: ModelInfo) -> bool:
        """The key's list (when set) and the model's groups must both allow ``model``."""
        if self.allowed_models and model.name not in self.allowed_models:
            return False
        return model.open_to(self.group_ids)

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or time.time())


def load_snapshot() -> Snapshot:
    """Read the catalogue (sync ORM; call through sync_to_async from async code)."""
    models: dict[str, ModelInfo] = {}
    deployments: dict[int, list[DeploymentInfo]] = {}
    rows = Deployment.objects.filter(enabled=True, provider__enabled=True).select_related("provider", "model")
    providers: dict[int, ProviderInfo] = {}
    refused: set[int] = set()
    for dep in rows:
        prov = dep.provider
        if prov.id in refused:
            continue
        if prov.id not in providers:
            # Resolved at every load (never per request): DNS rebinding after the save is caught here.
            problem = upstream_problem(prov.base_url)
            if problem is not None:
                logger.warning("provider %s skipped: its base URL %s", prov.name, problem)
                refused.add(prov.id)
                continue
            providers[prov.id] = ProviderInfo(
                id=prov.id, name=prov.name, kind=prov.kind, base_url=prov.base_url.rstrip("/"),
                credential=prov.credential(), api_version=prov.api_version, region=prov.region,
                timeout=prov.timeout_seconds, connect_timeout=prov.connect_timeout_seconds,
                extra_headers=tuple((str(k), str(v)) for k, v in (prov.extra_headers or {}).items()),
                options=dict(prov.options or {}),
            )  # fmt: skip
        deployments.setdefault(dep.model_id, []).append(
            DeploymentInfo(
                id=dep.id,
                name=f"{prov.name}/{dep.provider_model}",
                provider=providers[prov.id],
                provider_model=dep.provider_model,
                weight=dep.weight,
                priority=dep.priority,
                model_name=dep.model.name,
                region=dep.region or prov.region,
                flags=frozenset([*(prov.flags or []), *(dep.flags or [])]),
                connect_timeout=dep.connect_timeout or prov.connect_timeout_seconds,
                first_byte_timeout=dep.first_byte_timeout,
                chunk_timeout=dep.chunk_timeout,
                total_timeout=dep.total_timeout or prov.timeout_seconds,
            )  # fmt: skip
        )
    for model in CatalogModel.objects.filter(enabled=True).prefetch_related("allowed_groups"):
        models[model.name] = ModelInfo(
            id=model.id, name=model.name, kind=model.kind, created=int(model.created_at.timestamp()),
            input_per_mtok=model.input_per_mtok, output_per_mtok=model.output_per_mtok,
            cached_input_per_mtok=model.cached_input_per_mtok, per_image=model.per_image,
            per_audio_second=model.per_audio_second, max_output_tokens=model.max_output_tokens,
            allowed_group_ids=frozenset(g.id for g in model.allowed_groups.all()),
            deployments=tuple(sorted(deployments.get(model.id, []), key=lambda d: (d.priority, d.name))),
            fallbacks=tuple(str(name) for name in (model.fallbacks or []) if name != model.name),
        )  # fmt: skip
    return Snapshot(models=models, loaded_at=time.time(), rules=load_rules())


def _policy(group_ids: frozenset[int], key: ApiKey | None = None) -> dict[str, Any]:
    """The intersection of the groups' data policies, narrowed by the key's own lists."""
    regions: frozenset[str] | None = None
    providers: frozenset[str] | None = None
    policies = list(DataPolicy.objects.filter(group_id__in=group_ids))
    lists = [(p.allowed_regions, p.allowed_providers) for p in policies]
    flags = frozenset(f for p in policies for f in (p.required_flags or ()))
    if key is not None:
        lists.append((key.allowed_regions, key.allowed_providers))
    for allowed_regions, allowed_providers in lists:
        if allowed_regions:
            regions = frozenset(allowed_regions) if regions is None else regions & frozenset(allowed_regions)
        if allowed_providers:
            providers = (
                frozenset(allowed_providers)
                if providers is None
                else providers & frozenset(allowed_providers)
            )
    return {"allowed_regions": regions, "allowed_providers": providers, "required_flags": flags}


def load_key(digest: str) -> Principal | None:
    """The principal of the key with ``digest``, or None when no such key exists."""
    key = ApiKey.objects.select_related("user", "app").filter(digest=digest).first()
    if key is None:
        return None
    if key.user_id is not None:
        user = key.user
        assert user is not None
        group_ids = frozenset(user.groups.values_list("id", flat=True))
        username = user.get_username()
        active = user.is_active
    else:
        assert key.app is not None
        group_ids = frozenset({key.app.owner_group_id})
        username = f"app:{key.app.slug}"
        active = True
    return Principal(
        user_id=key.user_id, username=username, group_ids=group_ids, key_id=key.id, key_name=key.name,
        app_id=key.app_id, allowed_models=frozenset(key.allowed_models or ()),
        expires_at=key.expires_at.timestamp() if key.expires_at else None,
        revoked=key.revoked_at is not None or not active, **_policy(group_ids, key),
    )  # fmt: skip


def principal_for_user(user_id: int) -> Principal | None:
    """The principal of a signed-in portal user (no key), or None for an inactive or unknown user."""
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        return None
    group_ids = frozenset(user.groups.values_list("id", flat=True))
    return Principal(user_id=user.pk, username=user.get_username(), group_ids=group_ids, **_policy(group_ids))
