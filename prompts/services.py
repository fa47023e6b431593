"""Workflows of the prompt library: save a version, publish, review, roll back, hand over, import.

Each writes in one transaction with its audit row, and announces the change to the gateway's
in-process prompt cache (``gateway.generation.bump`` runs from the model signals, on commit).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from portal.audit import record
from prompts import render
from prompts.models import Prompt, PromptFavorite, PromptVersion

EXPORT_FORMAT = "llm-control.prompts/1"


def _check_template(system: str, user_template: str) -> None:
    if not (system.strip() or user_template.strip()):
        raise ValidationError("A prompt needs a system message or a user message.")
    try:
        render.variables_of(system, user_template)
    except render.TemplateError as exc:
        raise ValidationError(str(exc)) from None


def _check_params(params: Any) -> dict[str, Any]:
    if params in (None, ""):
        return {}
    if not isinstance(params, dict):
        raise ValidationError('Parameters must be a JSON object, e.g. {"temperature": 0.2}.')
    return params


def _apply_scope(*, prompt: Prompt, actor: Any, scope: str, groups: list[Group]) -> None:
    """Set the scope; widening it past what ``actor`` may publish turns the prompt back into a draft
    waiting for review, so it never reaches a wider audience without a curator of that audience."""
    if scope not in Prompt.Scope.values:
        raise ValidationError(f"Unknown scope {scope!r}.")
    if scope == Prompt.Scope.GROUPS and not groups:
        raise ValidationError("Choose at least one department for a departments prompt.")
    group_ids = {g.pk for g in groups} if scope == Prompt.Scope.GROUPS else set()
    changed = scope != prompt.scope or (scope == Prompt.Scope.GROUPS and group_ids != prompt.group_ids())
    if changed and not prompt.publishable_by(actor, scope=scope, group_ids=group_ids):
        prompt.published_version = None
        prompt.review_requested_at, prompt.review_requested_by = timezone.now(), actor
    prompt.scope = scope
    prompt.save()
    prompt.groups.set(groups if scope == Prompt.Scope.GROUPS else [])


@transaction.atomic
def prompt_create(
    *,
    actor: Any,
    title: str,
    system: str = "",
    user_template: str = "",
    description: str = "",
    category: str = "",
    tags: list[str] | str = "",
    model: str = "",
    params: dict[str, Any] | None = None,
    scope: str = Prompt.Scope.PERSONAL,
    groups: list[Group] | None = None,
    message: str = "Created",
) -> Prompt:
    """A new prompt owned by ``actor`` with its first version (a draft)."""
    _check_template(system, user_template)
    prompt = Prompt(title=title.strip()[:200] or "Untitled prompt", description=description,
                    category=category.strip()[:60], owner=actor)  # fmt: skip
    prompt.set_tags(tags)
    prompt.save()
    _apply_scope(prompt=prompt, actor=actor, scope=scope, groups=list(groups or []))
    PromptVersion.objects.create(prompt=prompt, number=1, system=system, user_template=user_template, model=model,
                                 params=_check_params(params), message=message[:300], author=actor)  # fmt: skip
    record(action="prompt.created", instance=prompt, actor=actor, replaces_generic=False)
    return prompt


@transaction.atomic
def prompt_update(
    *,
    prompt: Prompt,
    actor: Any,
    title: str,
    system: str,
    user_template: str,
    description: str | None = None,
    category: str | None = None,
    tags: list[str] | str | None = None,
    model: str = "",
    params: dict[str, Any] | None = None,
    scope: str | None = None,
    groups: list[Group] | None = None,
    message: str = "",
) -> PromptVersion | None:
    """Save an edit: metadata in place, the body as a new version when it changed (None otherwise).

    Metadata left at None (description, category, tags, scope) keeps its value.
    """
    if not prompt.editable_by(actor):
        raise PermissionDenied
    _check_template(system, user_template)
    params = _check_params(params)
    prompt = Prompt.objects.select_for_update().get(pk=prompt.pk)
    prompt.title = title.strip()[:200] or prompt.title
    if description is not None:
        prompt.description = description
    if category is not None:
        prompt.category = category.strip()[:60]
    if tags is not None:
        prompt.set_tags(tags)
    prompt.save()
    if scope is not None:
        _apply_scope(prompt=prompt, actor=actor, scope=scope, groups=list(groups or []))
    latest = prompt.latest_version()
    content = {"system": system, "user": user_template, "model": model, "params": params}
    version = None
    if latest is None or latest.content() != content:
        version = PromptVersion.objects.create(
            prompt=prompt, number=(latest.number if latest else 0) + 1, system=system, user_template=user_template,
            model=model, params=params, message=message[:300] or "Edited", author=actor,
        )  # fmt: skip
    record(action="prompt.updated", instance=prompt, actor=actor, replaces_generic=False,
           extra={"version": version.number if version else None})  # fmt: skip
    return version


@transaction.atomic
def prompt_publish(*, prompt: Prompt, actor: Any, version: PromptVersion | None = None) -> PromptVersion:
    """Publish ``version`` (default: the latest); only a curator of the prompt's scope may."""
    if not prompt.publishable_by(actor):
        raise PermissionDenied
    version = version or prompt.latest_version()
    if version is None or version.prompt_id != prompt.pk:
        raise ValidationError("No such version.")
    before = prompt.published_version.number if prompt.published_version else None
    prompt.published_version = version
    prompt.review_requested_at = prompt.review_requested_by = None
    prompt.save(
        update_fields=["published_version", "review_requested_at", "review_requested_by", "updated_at"]
    )
    record(action="prompt.published", instance=prompt, actor=actor, replaces_generic=False,
           before={"published_version": before}, extra={"published_version": version.number})  # fmt: skip
    return version


@transaction.atomic
def prompt_unpublish(*, prompt: Prompt, actor: Any) -> None:
    """Withdraw the published version: the prompt becomes a draft again."""
    if not prompt.publishable_by(actor):
        raise PermissionDenied
    prompt.published_version = None
    prompt.save(update_fields=["published_version", "updated_at"])
    record(action="prompt.unpublished", instance=prompt, actor=actor, replaces_generic=False)


@transaction.atomic
def prompt_request_review(*, prompt: Prompt, actor: Any) -> None:
    """Ask a curator of the prompt's scope to publish its latest version."""
    if not prompt.editable_by(actor):
        raise PermissionDenied
    prompt.review_requested_at, prompt.review_requested_by = timezone.now(), actor
    prompt.save(update_fields=["review_requested_at", "review_requested_by", "updated_at"])
    record(action="prompt.review_requested", instance=prompt, actor=actor, replaces_generic=False)


@transaction.atomic
def prompt_rollback(*, prompt: Prompt, actor: Any, version: PromptVersion) -> PromptVersion:
    """A new version equal to ``version`` (history stays linear; publishing it is a separate step)."""
    if not prompt.editable_by(actor):
        raise PermissionDenied
    if version.prompt_id != prompt.pk:
        raise ValidationError("No such version.")
    latest = prompt.latest_version()
    assert latest is not None
    new = PromptVersion.objects.create(
        prompt=prompt, number=latest.number + 1, system=version.system, user_template=version.user_template,
        model=version.model, params=version.params, message=f"Rolled back to v{version.number}", author=actor,
    )  # fmt: skip
    record(action="prompt.rolled_back", instance=prompt, actor=actor, replaces_generic=False,
           extra={"from_version": version.number, "new_version": new.number})  # fmt: skip
    return new


@transaction.atomic
def prompt_handover(*, prompt: Prompt, actor: Any, new_owner: Any) -> None:
    """Give the prompt to ``new_owner`` (who must be able to see it unless it is personal)."""
    if not prompt.editable_by(actor):
        raise PermissionDenied
    if new_owner is None or not new_owner.is_active:
        raise ValidationError("Choose an active user.")
    before = prompt.owner.get_username() if prompt.owner else None
    prompt.owner = new_owner
    prompt.save(update_fields=["owner", "updated_at"])
    record(action="prompt.handed_over", instance=prompt, actor=actor, replaces_generic=False,
           before={"owner": before}, extra={"owner": new_owner.get_username()})  # fmt: skip


def prompt_favorite_toggle(*, prompt: Prompt, user: Any) -> bool:
    """Star or unstar; returns whether it is now a favourite."""
    deleted, _ = PromptFavorite.objects.filter(user=user, prompt=prompt).delete()
    if deleted:
        return False
    PromptFavorite.objects.get_or_create(user=user, prompt=prompt)
    return True


def prompt_count_use(*, prompt: Prompt) -> None:
    """One more use from the portal's / menu (an UPDATE, so concurrent uses all count)."""
    Prompt.objects.filter(pk=prompt.pk).update(use_count=F("use_count") + 1)


def prompt_from_playground(
    *, actor: Any, title: str, system: str, messages: Any, model: str, params: Any
) -> Prompt:
    """A personal draft from the playground's state: its system message, and its last user message
    as the user template (earlier turns are a conversation, not a template)."""
    user_text = ""
    if isinstance(messages, list):
        for message in reversed(messages):
            if (
                isinstance(message, dict)
                and message.get("role") == "user"
                and isinstance(message.get("content"), str)
            ):
                user_text = message["content"]
                break
    if not (system.strip() or user_text.strip()):
        raise ValidationError("The playground has no system message and no user message to save.")
    return prompt_create(actor=actor, title=title or "From the playground", system=system, user_template=user_text,
                         model=model[:128], params=params if isinstance(params, dict) else {},
                         message="Saved from the playground")  # fmt: skip


# --- import and export -------------------------------------------------------------------------------
def prompts_export(*, prompts: Any = None) -> dict[str, Any]:
    """The library (or ``prompts``) as a JSON-safe document, with every version."""
    qs = prompts if prompts is not None else Prompt.objects.all()
    items = []
    for prompt in qs.prefetch_related("groups", "versions").select_related("owner", "published_version"):
        items.append({
            "uuid": str(prompt.uuid), "title": prompt.title, "description": prompt.description,
            "category": prompt.category, "tags": prompt.tag_list, "scope": prompt.scope,
            "groups": sorted(g.name for g in prompt.groups.all()),
            "owner": prompt.owner.get_username() if prompt.owner else None, "archived": prompt.archived,
            "published_version": prompt.published_version.number if prompt.published_version else None,
            "versions": [
                {"number": v.number, "system": v.system, "user": v.user_template, "model": v.model,
                 "params": v.params, "message": v.message, "author": v.author.get_username() if v.author else None,
                 "created_at": v.created_at.isoformat()}
                for v in sorted(prompt.versions.all(), key=lambda v: v.number)
            ],
        })  # fmt: skip
    return {"format": EXPORT_FORMAT, "prompts": items}


@transaction.atomic
def prompts_import(*, data: dict[str, Any] | str, actor: Any = None) -> dict[str, int]:
    """Make the library hold ``data``'s prompts (by uuid): create or update them, add the versions it
    lacks (by number), set the published version. Idempotent: importing twice changes nothing.

    Departments and owners are matched by name; a missing department is created, a missing owner
    leaves the prompt without one (an editor can take it over).
    """
    if isinstance(data, str):
        data = json.loads(data)
    assert isinstance(data, dict)
    if data.get("format") != EXPORT_FORMAT or not isinstance(data.get("prompts"), list):
        raise ValidationError(f"Not a prompt library export (format {EXPORT_FORMAT}).")
    users = get_user_model()
    counts = {"created": 0, "updated": 0, "versions": 0}
    for item in data["prompts"]:
        prompt = Prompt.objects.filter(uuid=item["uuid"]).first()
        if prompt is None:
            prompt = Prompt(uuid=item["uuid"])
            counts["created"] += 1
        owner = users.objects.filter(username=item.get("owner")).first() if item.get("owner") else None
        fields = {"title": item["title"], "description": item.get("description", ""),
                  "category": item.get("category", ""), "scope": item.get("scope", Prompt.Scope.PERSONAL),
                  "archived": bool(item.get("archived")), "owner_id": owner.pk if owner else prompt.owner_id}  # fmt: skip
        before_tags = prompt.tags
        prompt.set_tags(item.get("tags") or [])
        changed = prompt.pk is None or before_tags != prompt.tags
        for name, value in fields.items():
            if getattr(prompt, name) != value:
                setattr(prompt, name, value)
                changed = True
        if prompt.scope not in Prompt.Scope.values:
            raise ValidationError(f"Unknown scope {prompt.scope!r} in {item['uuid']}.")
        if changed:
            if prompt.pk is not None:
                counts["updated"] += 1
            prompt.save()
        groups = [Group.objects.get_or_create(name=name)[0] for name in item.get("groups") or []]
        if {g.pk for g in groups} != prompt.group_ids():
            prompt.groups.set(groups)
        have = set(prompt.versions.values_list("number", flat=True))
        for v in item.get("versions") or []:
            if v["number"] in have:
                continue
            _check_template(v.get("system", ""), v.get("user", ""))
            author = users.objects.filter(username=v.get("author")).first() if v.get("author") else None
            version = PromptVersion.objects.create(prompt=prompt, number=v["number"], system=v.get("system", ""),
                                                   user_template=v.get("user", ""), model=v.get("model", ""),
                                                   params=_check_params(v.get("params")),
                                                   message=v.get("message", "")[:300], author=author)  # fmt: skip
            if v.get("created_at"):  # keep the version's history (auto_now_add set it to now)
                PromptVersion.objects.filter(pk=version.pk).update(
                    created_at=datetime.fromisoformat(v["created_at"])
                )
            counts["versions"] += 1
        wanted = item.get("published_version")
        published = prompt.versions.filter(number=wanted).first() if wanted else None
        if published != prompt.published_version:
            prompt.published_version = published
            prompt.save(update_fields=["published_version"])
    record(action="prompts.imported", actor=actor, object_type="prompts.prompt", object_repr="prompt library",
           after=counts)  # fmt: skip
    return counts
