"""Bump the change signal whenever something the gateway caches changes."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models.signals import m2m_changed, post_delete, post_save

from gateway import generation
from gateway.models import ApiKey, CatalogModel, DataPolicy, Deployment, Provider


def _changed(sender: Any, **kwargs: Any) -> None:
    generation.bump()


def connect() -> None:
    """Connect the handlers (called once from GatewayConfig.ready)."""
    from portal.models import App

    user_model = get_user_model()
    from quotas.models import QuotaRule

    for model in (ApiKey, Provider, CatalogModel, Deployment, DataPolicy, Group, App, user_model, QuotaRule):
        post_save.connect(_changed, sender=model, dispatch_uid=f"gateway-gen-save-{model.__name__}")
        post_delete.connect(_changed, sender=model, dispatch_uid=f"gateway-gen-delete-{model.__name__}")
    for through in (user_model.groups.through, CatalogModel.allowed_groups.through):
        m2m_changed.connect(_changed, sender=through, dispatch_uid=f"gateway-gen-m2m-{through.__name__}")
