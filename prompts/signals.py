"""Any change to a prompt or its versions bumps the gateway's change signal, so every process drops
its cached copy (prompts.gateway) within one poll, whoever made the change (views, admin, import)."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import m2m_changed, post_delete, post_save

from gateway import generation
from prompts.models import Prompt, PromptVersion


def _changed(sender: Any, raw: bool = False, **kwargs: Any) -> None:
    if not raw:
        generation.bump()


def connect() -> None:
    for model in (Prompt, PromptVersion):
        post_save.connect(_changed, sender=model, dispatch_uid=f"prompts-bump-save-{model.__name__}")
        post_delete.connect(_changed, sender=model, dispatch_uid=f"prompts-bump-delete-{model.__name__}")
    m2m_changed.connect(_changed, sender=Prompt.groups.through, dispatch_uid="prompts-bump-groups")
