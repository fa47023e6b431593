"""Playground: one input (system prompt and messages), up to three panels of model and parameters,
streamed side by side through the gateway (accounted like any call), and "view code" snippets of
the same request against this gateway. Nothing here is stored.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, QueryDict, StreamingHttpResponse
from django.shortcuts import render
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.views.decorators.http import require_GET, require_POST
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name

from config.db import adb
from config.logs import new_request_id
from gateway.catalog import principal_for_user
from portal.chat import user_models
from portal.streaming import Outcome, Turn, client_left, relay, sse

PANELS = 3
MAX_MESSAGES = 50
MAX_CHARS = 100_000
ROLES = ("user", "assistant", "system")


@dataclass(frozen=True)
class Number:
    name: str
    low: float
    high: float
    integer: bool = False


# The OpenAI ranges of each sampling parameter.
NUMBERS = (
    Number("temperature", 0, 2),
    Number("top_p", 0, 1),
    Number("max_tokens", 1, 1_000_000, integer=True),
    Number("presence_penalty", -2, 2),
    Number("frequency_penalty", -2, 2),
    Number("seed", -(2**63), 2**63 - 1, integer=True),
)


class InvalidRequest(ValueError):
    """A field the user must correct; the message says which."""


def body_from(data: QueryDict, panel: int) -> dict[str, Any]:
    """The chat-completions body of ``panel`` from the playground form (shared input + panel fields)."""
    messages: list[dict[str, str]] = []
    system = data.get("system", "").strip()
    if system:
        messages.append({"role": "system", "content": system[:MAX_CHARS]})
    for role, content in zip(data.getlist("msg-role"), data.getlist("msg-content"), strict=False):
        if role not in ROLES:
            raise InvalidRequest(f"Unknown role {role[:20]!r}.")
        if content.strip():
            messages.append({"role": role, "content": content.replace("\r\n", "\n")[:MAX_CHARS]})
    if not any(m["role"] != "system" for m in messages):
        raise InvalidRequest("Write at least one message.")
    if len(messages) > MAX_MESSAGES:
        raise InvalidRequest(f"At most {MAX_MESSAGES} messages.")
    prefix = f"p{panel}-"
    body: dict[str, Any] = {"model": data.get(prefix + "model", ""), "messages": messages}
    for number in NUMBERS:
        raw = data.get(prefix + number.name, "").strip()
        if not raw:
            continue
        try:
            value: float = int(raw) if number.integer else float(raw)
        except ValueError:
            raise InvalidRequest(f"{number.name} must be a number.") from None
        if not number.low <= value <= number.high:
            raise InvalidRequest(f"{number.name} must be between {number.low:g} and {number.high:g}.")
        body[number.name] = value
    stops = [line for line in data.get(prefix + "stop", "").replace("\r\n", "\n").split("\n") if line]
    if len(stops) > 4:
        raise InvalidRequest("At most 4 stop sequences.")
    if stops:
        body["stop"] = stops
    if data.get(prefix + "json"):
        body["response_format"] = {"type": "json_object"}
    return body


@login_required
@require_GET
def page(request: HttpRequest) -> HttpResponse:
    """The playground."""
    models = user_models(request.user.pk or 0)
    panels = [{"index": i, "model": models[min(i, len(models) - 1)] if models else ""} for i in range(PANELS)]
    return render(request, "portal/playground.html", {"models": models, "panels": panels})


async def run(request: HttpRequest) -> HttpResponseBase:
    """POST the form with ``panel``: that panel's answer as server-sent events, then its metrics."""
    user = await sync_to_async(lambda: request.user)()
    if not await sync_to_async(lambda: user.is_authenticated)():
        raise Http404("Sign in first.")
    if request.method != "POST":
        return HttpResponse("POST only.", status=405, headers={"Allow": "POST"})
    data = await sync_to_async(lambda: request.POST)()
    try:
        panel = int(data.get("panel", "0"))
        if not 0 <= panel < PANELS:
            raise InvalidRequest("No such panel.")
        body = body_from(data, panel)
    except (InvalidRequest, ValueError) as exc:
        return _done({"status": "error", "error": str(exc)})
    principal = await adb(principal_for_user, int(user.pk or 0))
    if principal is None:
        return _done({"status": "error", "error": "Your account is inactive."})

    async def metrics(outcome: Outcome) -> dict[str, Any]:
        return {
            "status": outcome.status, "error": outcome.error, "model": outcome.model,
            "finish_reason": outcome.finish_reason, "latency_ms": outcome.latency_ms, "ttft_ms": outcome.ttft_ms,
            "prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
            "cost_usd": f"{outcome.cost_usd:.6f}",
        }  # fmt: skip

    turn = Turn(principal=principal, body=body, request_id=new_request_id(), on_finish=metrics)
    turn.start()
    response = StreamingHttpResponse(
        relay(turn, client_left(request)), content_type="text/event-stream; charset=utf-8"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def _done(payload: dict[str, Any]) -> HttpResponse:
    return HttpResponse(sse("done", payload), content_type="text/event-stream; charset=utf-8")


# --- view code -----------------------------------------------------------------------------------------


def snippets(body: dict[str, Any], base_url: str) -> dict[str, str]:
    """curl, Python (openai SDK) and JavaScript (openai SDK) for ``body`` against ``base_url``.

    The key is the ``$LLM_API_KEY`` environment variable, never a real one.
    """
    compact = json.dumps(body, indent=2, ensure_ascii=False)
    curl = (
        f"curl {shlex.quote(base_url + '/chat/completions')} \\\n"
        '  -H "Authorization: Bearer $LLM_API_KEY" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        f"  -d {shlex.quote(compact)}"
    )
    arguments = ",\n".join(f"    {name}={_python_literal(value)}" for name, value in body.items())
    python = (
        "import os\n\nfrom openai import OpenAI\n\n"
        f'client = OpenAI(base_url="{base_url}", api_key=os.environ["LLM_API_KEY"])\n'
        f"response = client.chat.completions.create(\n{arguments},\n)\n"
        "print(response.choices[0].message.content)\n"
    )
    javascript = (
        'import OpenAI from "openai";\n\n'
        f'const client = new OpenAI({{ baseURL: "{base_url}", apiKey: process.env.LLM_API_KEY }});\n'
        f"const response = await client.chat.completions.create({compact});\n"
        "console.log(response.choices[0].message.content);\n"
    )
    return {"curl": curl, "python": python, "javascript": javascript}


def _python_literal(value: Any) -> str:
    # JSON of strings, numbers, lists and objects is valid Python too (the body has no booleans).
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        items = "".join(f"\n        {json.dumps(v, ensure_ascii=False)}," for v in value)
        return f"[{items}\n    ]"
    return json.dumps(value, ensure_ascii=False)


def _highlighted(code: str, language: str) -> SafeString:
    # Pygments escapes the code; the output is markup of our own.
    return SafeString(highlight(code, get_lexer_by_name(language), HtmlFormatter(cssclass="highlight")))


@login_required
@require_POST
def code(request: HttpRequest) -> HttpResponse:
    """The "view code" fragment for the form's first panel (or ``panel``)."""
    try:
        panel = int(request.POST.get("panel", "0"))
        body = body_from(request.POST, panel if 0 <= panel < PANELS else 0)
    except (InvalidRequest, ValueError) as exc:
        return HttpResponse(format_html('<p class="banner error" role="alert">{}</p>', str(exc)))
    base_url = request.build_absolute_uri("/v1")
    found = snippets(body, base_url)
    blocks = [
        {"id": "curl", "label": "curl", "html": _highlighted(found["curl"], "bash")},
        {"id": "python", "label": "Python (openai)", "html": _highlighted(found["python"], "python")},
        {
            "id": "javascript",
            "label": "JavaScript (openai)",
            "html": _highlighted(found["javascript"], "javascript"),
        },
    ]
    return render(request, "portal/playground.html#code", {"blocks": blocks, "base_url": base_url})
