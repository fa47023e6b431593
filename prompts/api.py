"""The prompt library API (django-ninja): list and read the prompts the caller may use.

Authenticated like the quotas API (an issued key as a Bearer token, or a signed-in session), but
open to every key: what a caller sees is the published prompts of its scope, the same rule the
gateway applies when a prompt is called by id. Anything else is a 404 in OpenAI's error format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest
from ninja import Router
from ninja.responses import Status
from ninja.security import HttpBearer, SessionAuth

from gateway import keys
from gateway.models import ApiKey
from prompts.models import Prompt, PromptVersion
from prompts.schemas import PromptDetailOut, PromptOut, VariableOut


@dataclass(frozen=True)
class Caller:
    user_id: int | None
    group_ids: frozenset[int]


class CallerKey(HttpBearer):
    """Any active issued key: a person's key sees their scopes, a service key its app's owner group."""

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        if not keys.well_formed(token):
            return None
        key = ApiKey.objects.active().select_related("user", "app").filter(digest=keys.digest(token)).first()
        if key is None:
            return None
        if key.user is not None:
            if not key.user.is_active:
                return None
            return Caller(key.user.pk, frozenset(key.user.groups.values_list("id", flat=True)))
        return Caller(None, frozenset({key.app.owner_group_id})) if key.app is not None else None


class CallerSession(SessionAuth):
    """A signed-in user (CSRF-checked on writes; this router only reads)."""

    def authenticate(self, request: HttpRequest, key: str | None) -> Any:
        user = super().authenticate(request, key)
        if user is None:
            return None
        return Caller(user.pk, frozenset(user.groups.values_list("id", flat=True)))


router = Router(tags=["prompts"], auth=[CallerKey(), CallerSession()])


def _visible(request: HttpRequest) -> Any:
    caller: Caller = request.auth  # type: ignore[attr-defined]
    return Prompt.objects.published_for(user_id=caller.user_id, group_ids=caller.group_ids)


def _not_found(prompt_id: str) -> Status:
    return Status(404, {"error": {"message": f"No prompt with id `{prompt_id[:64]}` that you may use.",
                                  "type": "invalid_request_error", "param": "id", "code": "prompt_not_found"}})  # fmt: skip


def _out(prompt: Prompt) -> dict[str, Any]:
    return {"id": str(prompt.uuid), "title": prompt.title, "description": prompt.description,
            "category": prompt.category, "tags": prompt.tag_list, "scope": prompt.scope,
            "groups": sorted(g.name for g in prompt.groups.all()),
            "published_version": prompt.published_version.number if prompt.published_version else None}  # fmt: skip


@router.get("/", response=list[PromptOut], summary="The published prompts the caller may use")
def prompts_list(request: HttpRequest, q: str = "", tag: str = "") -> list[dict[str, Any]]:
    qs = _visible(request).select_related("published_version").prefetch_related("groups")
    q, tag = q.replace("\x00", ""), tag.replace("\x00", "")  # PostgreSQL text cannot hold NUL: a 500
    if q:
        qs = qs.search(q[:200])
    if tag:
        qs = qs.with_tag(tag[:40])
    return [_out(p) for p in qs.order_by("title")[:500]]


@router.get("/{prompt_id}", response={200: PromptDetailOut, 404: dict},
            summary="One prompt: its published version (or ?version=N) and its variables")  # fmt: skip
def prompts_read(request: HttpRequest, prompt_id: str, version: int | None = None) -> Any:
    try:
        prompt = (
            _visible(request)
            .select_related("published_version")
            .prefetch_related("groups")
            .filter(uuid=prompt_id)
            .first()
        )
    except Exception:  # not a uuid: the same answer as an unknown id
        prompt = None
    if prompt is None:
        return _not_found(prompt_id)
    row: PromptVersion | None = (
        prompt.versions.filter(number=version).first() if version is not None else prompt.published_version
    )
    if row is None:
        return _not_found(prompt_id)
    return {**_out(prompt), "version": row.number, "system": row.system, "user": row.user_template,
            "model": row.model, "params": row.params,
            "variables": [VariableOut(**v.as_dict()) for v in row.variables()]}  # fmt: skip
