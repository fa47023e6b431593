"""Calling a library prompt by id through the gateway: ``"prompt": {"id", "version", "variables"}``.

``apply_prompt`` renders the prompt into the request body before it is admitted and routed, and
marks the call so its usage event carries the prompt's id and version. Prompts come from an
in-process cache keyed by (id, version) and tied to the gateway's change generation: a warm prompt
costs no SQL query, and any change to a prompt (which bumps the generation) is seen by every
process within one config poll.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from config.db import adb
from gateway.errors import GatewayError
from prompts import render

MAX_CACHED = 2048
# The recommended parameters a prompt may set on a request (never model routing or streaming).
PARAMS = frozenset({"temperature", "top_p", "max_tokens", "max_completion_tokens", "max_output_tokens",
                    "presence_penalty", "frequency_penalty", "seed", "stop", "response_format", "reasoning_effort"})  # fmt: skip


@dataclass(frozen=True, slots=True)
class CachedPrompt:
    """What the hot path needs of one version of one prompt."""

    uuid: str
    version: int
    published: bool  # whether the prompt has a published version (it is visible beyond its editors)
    system: str
    user: str
    model: str
    params: dict[str, Any]
    variables: tuple[render.Variable, ...]
    scope: str
    group_ids: frozenset[int]
    owner_id: int | None

    def visible_to(self, principal: Any) -> bool:
        """Published and in the caller's scope; a personal prompt's owner may call any of its versions."""
        if self.owner_id is not None and self.owner_id == principal.user_id and self.scope == "personal":
            return True
        if not self.published:
            return False
        if self.scope == "company":
            return True
        if self.scope == "groups":
            return bool(self.group_ids & principal.group_ids)
        return False


# (prompt uuid, version asked: "" = the published one) → (generation, loaded at, prompt or None).
_cache: dict[tuple[str, str], tuple[int | None, float, CachedPrompt | None]] = {}


def load_prompt(prompt_id: str, version: str) -> CachedPrompt | None:
    """Read one prompt version (sync ORM; cold path only). None when there is no such thing."""
    from prompts.models import Prompt

    prompt = Prompt.objects.filter(uuid=prompt_id, archived=False).prefetch_related("groups").first()
    if prompt is None:
        return None
    row = prompt.versions.filter(number=int(version)).first() if version else prompt.published_version
    if row is None:
        return None
    return CachedPrompt(
        uuid=str(prompt.uuid), version=row.number, published=prompt.published_version_id is not None,
        system=row.system, user=row.user_template, model=row.model, params=dict(row.params or {}),
        variables=tuple(row.variables()), scope=prompt.scope,
        group_ids=frozenset(g.pk for g in prompt.groups.all()), owner_id=prompt.owner_id,
    )  # fmt: skip


async def cached_prompt(state: Any, prompt_id: str, version: str) -> CachedPrompt | None:
    """The prompt from this process's cache, loading it on a miss or after a generation change."""
    key = (prompt_id, version)
    hit = _cache.get(key)
    now = time.monotonic()
    if hit is not None and hit[0] == state.generation and now - hit[1] < settings.GATEWAY_CACHE_TTL:
        return hit[2]
    generation = state.generation
    entry = await adb(load_prompt, prompt_id, version)
    if len(_cache) >= MAX_CACHED:
        _cache.clear()  # a crude bound: a full cache is rare and refills from cold reads
    _cache[key] = (generation, now, entry)
    return entry


def _bad(message: str, param: str, code: str = "invalid_prompt") -> GatewayError:
    return GatewayError(400, message, code=code, param=param)


def _parse(spec: Any) -> tuple[str, str, dict[str, Any]]:
    if not isinstance(spec, dict):
        raise _bad(
            "`prompt` must be an object with `id`, and optionally `version` and `variables`.", "prompt"
        )
    raw_id = spec.get("id")
    try:
        prompt_id = str(uuid.UUID(str(raw_id)))
    except (ValueError, TypeError):
        raise GatewayError(404, f"No prompt with id `{str(raw_id)[:64]}`.", code="prompt_not_found",
                           param="prompt.id") from None  # fmt: skip
    version = spec.get("version")
    if version in (None, "", "published"):
        version = ""
    elif isinstance(version, int) and not isinstance(version, bool) and version > 0:
        version = str(version)
    elif isinstance(version, str) and version.lstrip("v").isdigit() and int(version.lstrip("v")) > 0:
        version = str(int(version.lstrip("v")))
    else:
        raise _bad("`prompt.version` must be a version number (or omitted for the published one).",
                   "prompt.version")  # fmt: skip
    variables = spec.get("variables") or {}
    if not isinstance(variables, dict):
        raise _bad("`prompt.variables` must be an object.", "prompt.variables")
    return prompt_id, version, variables


async def apply_prompt(state: Any, call: Any) -> None:
    """Render ``call.body["prompt"]`` into the request (a 400/404 in OpenAI's format when it cannot).

    chat/completions: the prompt's system and user messages go before the caller's messages.
    responses: the system text becomes ``instructions`` (unless given), the user text the first input.
    The prompt's recommended model and parameters apply where the request sets none.
    """
    body = call.body
    prompt_id, version, given = _parse(body.pop("prompt"))
    if call.endpoint not in ("chat/completions", "responses"):
        raise _bad(f"`prompt` is not supported on /{call.endpoint}.", "prompt", "unsupported_parameter")
    await state.get_snapshot()  # sets the generation the cache is checked against, when not yet known
    prompt = await cached_prompt(state, prompt_id, version)
    if prompt is None or not prompt.visible_to(call.principal):
        # One answer for "no such prompt" and "not yours": existence is not disclosed.
        raise GatewayError(404, f"No prompt with id `{prompt_id}`" + (f" and version {version}" if version else "")
                           + " that you may use.", code="prompt_not_found", param="prompt.id")  # fmt: skip
    try:
        values = render.resolve(list(prompt.variables), given)
    except render.VariableError as exc:
        raise _bad(exc.message, f"prompt.variables.{exc.name}", exc.code) from None
    system, user = render.render(prompt.system, values), render.render(prompt.user, values)
    if call.endpoint == "chat/completions":
        messages = body.get("messages")
        head = ([{"role": "system", "content": system}] if system else []) + (
            [{"role": "user", "content": user}] if user else []
        )
        body["messages"] = head + (messages if isinstance(messages, list) else [])
    else:
        if system and not body.get("instructions"):
            body["instructions"] = system
        given_input = body.get("input")
        head = [{"role": "user", "content": user}] if user else []
        if isinstance(given_input, str) and given_input:
            body["input"] = [*head, {"role": "user", "content": given_input}]
        elif isinstance(given_input, list):
            body["input"] = head + given_input
        else:
            body["input"] = head or user
    if not body.get("model") and prompt.model:
        body["model"] = prompt.model
    for name, value in prompt.params.items():
        if name in PARAMS:
            body.setdefault(name, value)
    call.prompt_id, call.prompt_version = prompt.uuid, prompt.version
