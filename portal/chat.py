"""Chat: conversations in a sidebar, answers streamed from the gateway, stored rendered and sanitised.

Every lookup goes through ``Conversation.objects.owned_by(user)``: another user's conversation, or a
message of it, is a 404 on every URL. Pages and actions are sync views (htmx fragments via
template partials); the answer stream is an async view (see portal.streaming).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.db.models import F
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers
from django_htmx.middleware import HtmxDetails

from config.db import adb
from config.logs import new_request_id
from gateway import routing
from gateway.catalog import Principal, Snapshot, load_snapshot, principal_for_user
from gateway.errors import GatewayError
from portal.markdown import render as render_markdown
from portal.models import Conversation, Message
from portal.streaming import Outcome, Turn, client_left, relay, sse
from quotas.reports import usage_for_user

MAX_MESSAGE_CHARS = 100_000
MAX_SYSTEM_PROMPT_CHARS = 20_000
SIDEBAR_SIZE = 200
# An answer still "streaming" after this long lost its server (a restart mid-answer): it is shown as
# interrupted, so the conversation can go on. Longer than any provider's total timeout by default.
STALE_STREAM = timedelta(minutes=15)


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


# --- shared helpers ----------------------------------------------------------------------------------


def models_for(*, snapshot: Snapshot, principal: Principal | None) -> list[str]:
    """The chat models ``principal`` may use, by the gateway's own rules (access and data policy)."""
    if principal is None:
        return []
    names = []
    for model in sorted(snapshot.models.values(), key=lambda m: m.name):
        if model.kind != "chat" or not principal.may_use(model):
            continue
        try:
            routing.plan(snapshot, principal, model)
        except GatewayError:  # no deployment, or none the data policy allows
            continue
        names.append(model.name)
    return names


def user_models(user_id: int) -> list[str]:
    """The model picker's list for a signed-in user (sync ORM)."""
    return models_for(snapshot=load_snapshot(), principal=principal_for_user(user_id))


def _conversation_or_404(request: HttpRequest, pk: int) -> Conversation:
    conversation = Conversation.objects.owned_by(request.user.pk).filter(pk=pk).first()
    if conversation is None:
        raise Http404("No such conversation.")
    return conversation


def _message_or_404(conversation: Conversation, mid: int) -> Message:
    message = conversation.messages.filter(pk=mid).first()
    if message is None:
        raise Http404("No such message.")
    return message


def _expire_stale(conversation: Conversation) -> None:
    conversation.messages.filter(
        status=Message.Status.STREAMING, created_at__lt=timezone.now() - STALE_STREAM
    ).update(status=Message.Status.STOPPED, error="This answer was interrupted.")


def _title_from(text: str) -> str:
    line = re.sub(r"\s+", " ", text).strip()
    return (line[:57] + "…") if len(line) > 60 else (line or "New chat")


def _sidebar(request: HttpRequest) -> list[Conversation]:
    query = request.GET.get("q", "")
    rows = (
        Conversation.objects.owned_by(request.user.pk)
        .matching(query)
        .only("id", "title", "pinned", "updated_at")
    )
    return list(rows[:SIDEBAR_SIZE])


def _context(request: HttpRequest, conversation: Conversation | None, **extra: Any) -> dict[str, Any]:
    models = user_models(request.user.pk or 0)
    context = {
        "conversation": conversation,
        "conversations": _sidebar(request),
        "query": request.GET.get("q", ""),
        "models": models,
        "default_model": models[0] if models else "",
        "quota": usage_for_user(request.user),  # type: ignore[arg-type]
    }
    context.update(extra)
    return context


def _pending_turn(conversation: Conversation) -> Message:
    return Message.objects.create(
        conversation=conversation, role=Message.Role.ASSISTANT, status=Message.Status.PENDING,
        model=conversation.model,
    )  # fmt: skip


def _clean_text(raw: str, limit: int) -> str:
    return raw.replace("\r\n", "\n").strip()[:limit]


def _messages_fragment(request: HttpRequest, conversation: Conversation) -> HttpResponse:
    return render(request, "portal/chat.html#messages", {"articles": articles(conversation.messages.all())})


_ARTICLE = (
    '<article class="msg msg-{role}" id="msg-{pk}" data-status="{status}" data-url="{url}"{stream}{busy}>'
    '<header class="msg-head"><strong>{who}</strong>{meta}</header>'
    # Model output: HTML sanitised by portal/markdown.py when the answer completed; hx-disable
    # makes htmx ignore anything inside it.
    '<div class="msg-body" hx-disable>{body}</div>{error}{actions}</article>'
)
_EDIT = (
    '<details class="msg-edit"><summary>Edit</summary>'
    '<form hx-post="{url}edit/" hx-target="#messages" hx-swap="innerHTML">'
    '<label for="edit-{pk}">Edit your message</label>'
    '<textarea id="edit-{pk}" name="content" rows="3" required data-enter-sends>{content}</textarea>'
    '<button type="submit">Save and resend</button></form></details>'
)


def message_html(message: Message, prefix: str = "") -> SafeString:
    """One message as the page shows it (built in Python: a long conversation has hundreds).

    ``prefix`` is the conversation's URL, reversed once per list (portal/urls.py nests each
    message's URLs under it as ``m/<id>/``).
    """
    prefix = prefix or reverse("portal:chat_conversation", args=[message.conversation_id])
    url = f"{prefix}m/{message.pk}/"
    assistant = message.role == Message.Role.ASSISTANT
    meta = SafeString("")
    if assistant:
        parts = [message.model or "—"]
        if not message.in_progress:
            parts.append(
                f"{message.prompt_tokens} in / {message.completion_tokens} out tokens · ${message.cost_usd:.6f}"
            )
        if message.status == Message.Status.STOPPED:
            parts.append("stopped")
        meta = format_html('<span class="msg-meta">{}</span>', " · ".join(parts))
    if not assistant:
        body = format_html('<div class="plain">{}</div>', message.content)
    elif message.in_progress:
        body = format_html('<div class="plain live" data-live>{}</div>', message.content)
    else:
        body = format_html('<div class="md">{}</div>', SafeString(message.rendered_html))
    actions = SafeString("")
    if not message.in_progress:
        inner = (
            format_html(
                '<button type="button" hx-post="{}regenerate/" hx-target="#messages" hx-swap="innerHTML">'
                "Regenerate</button>",
                url,
            )
            if assistant
            else format_html(_EDIT, url=url, pk=message.pk, content=message.content)
        )
        actions = format_html('<footer class="msg-actions">{}</footer>', inner)
    return format_html(
        _ARTICLE, role=message.role, pk=message.pk, status=message.status, url=url,
        stream=format_html(' data-stream-url="{}stream/"', url) if message.status == Message.Status.PENDING else "",
        busy=SafeString(' aria-busy="true"') if message.status == Message.Status.STREAMING else "",
        who="Assistant" if assistant else "You", meta=meta, body=body,
        error=format_html('<p class="banner error" role="alert">{}</p>', message.error) if message.error else "",
        actions=actions,
    )  # fmt: skip


def articles(messages: Iterable[Message]) -> list[SafeString]:
    """The page's articles of ``messages``."""
    prefix = ""
    out = []
    for message in messages:
        prefix = prefix or reverse("portal:chat_conversation", args=[message.conversation_id])
        out.append(message_html(message, prefix))
    return out


# --- pages -------------------------------------------------------------------------------------------


@login_required
@require_GET
@vary_on_headers("HX-Request")
def index(request: HtmxHttpRequest) -> HttpResponse:
    """A new chat (composer, model, system prompt) and the sidebar; ``?q=`` searches it."""
    if request.htmx and request.htmx.target == "conversation-list":
        return render(request, "portal/chat.html#sidebar-list", {"conversations": _sidebar(request)})
    return render(request, "portal/chat.html", _context(request, None))


@login_required
@require_GET
def conversation_page(request: HttpRequest, pk: int) -> HttpResponse:
    """One conversation. Stored HTML only: opening it renders no markdown."""
    conversation = _conversation_or_404(request, pk)
    _expire_stale(conversation)
    return render(
        request,
        "portal/chat.html",
        _context(request, conversation, articles=articles(conversation.messages.all())),
    )


@login_required
@require_POST
def create(request: HttpRequest) -> HttpResponse:
    """Start a conversation with its first message; the page then streams the answer."""
    content = _clean_text(request.POST.get("content", ""), MAX_MESSAGE_CHARS)
    models = user_models(request.user.pk or 0)
    model = request.POST.get("model") or (models[0] if models else "")
    if not content or model not in models:
        error = "Write a message first." if not content else "Pick one of the models offered."
        return render(request, "portal/chat.html", _context(request, None, error=error), status=400)
    with transaction.atomic():
        conversation = Conversation.objects.create(
            owner_id=request.user.pk or 0, title=_title_from(content), model=model,
            system_prompt=_clean_text(request.POST.get("system_prompt", ""), MAX_SYSTEM_PROMPT_CHARS),
        )  # fmt: skip
        Message.objects.create(
            conversation=conversation, role=Message.Role.USER, content=content, model=model
        )
        _pending_turn(conversation)
    return redirect("portal:chat_conversation", pk=conversation.pk)


@login_required
@require_POST
def send(request: HttpRequest, pk: int) -> HttpResponse:
    """Add a user message and an answer to stream: returns both, appended to the list by htmx."""
    conversation = _conversation_or_404(request, pk)
    content = _clean_text(request.POST.get("content", ""), MAX_MESSAGE_CHARS)
    if not content:
        return HttpResponse(status=204)
    _expire_stale(conversation)
    if conversation.messages.filter(status__in=[Message.Status.PENDING, Message.Status.STREAMING]).exists():
        return render(
            request, "portal/chat.html#notice", {"notice": "Wait for the answer, or stop it first."}
        )
    with transaction.atomic():
        user_message = Message.objects.create(
            conversation=conversation, role=Message.Role.USER, content=content, model=conversation.model
        )
        answer = _pending_turn(conversation)
        Conversation.objects.filter(pk=conversation.pk).update(updated_at=timezone.now())
    return render(request, "portal/chat.html#messages", {"articles": articles([user_message, answer])})


@login_required
@require_POST
def update_settings(request: HttpRequest, pk: int) -> HttpResponse:
    """Change the conversation's model and/or system prompt."""
    conversation = _conversation_or_404(request, pk)
    notice = "Saved."
    if "model" in request.POST:
        model = request.POST["model"]
        if model in user_models(request.user.pk or 0):
            conversation.model = model
        else:
            notice = "That model is not available to you."
    if "system_prompt" in request.POST:
        conversation.system_prompt = _clean_text(request.POST["system_prompt"], MAX_SYSTEM_PROMPT_CHARS)
    conversation.save(update_fields=["model", "system_prompt"])
    return render(request, "portal/chat.html#notice", {"notice": notice})


@login_required
@require_POST
def rename(request: HttpRequest, pk: int) -> HttpResponse:
    """Rename; returns the title and, out of band, the sidebar."""
    conversation = _conversation_or_404(request, pk)
    title = re.sub(r"\s+", " ", request.POST.get("title", "")).strip()[:200]
    if title:
        conversation.title = title
        conversation.save(update_fields=["title"])
    return render(
        request,
        "portal/chat.html#title-oob",
        {"conversation": conversation, "conversations": _sidebar(request)},
    )


@login_required
@require_POST
def pin(request: HttpRequest, pk: int) -> HttpResponse:
    """Pin or unpin (pinned conversations head the sidebar)."""
    conversation = _conversation_or_404(request, pk)
    conversation.pinned = not conversation.pinned
    conversation.save(update_fields=["pinned"])
    return render(
        request,
        "portal/chat.html#title-oob",
        {"conversation": conversation, "conversations": _sidebar(request)},
    )


@login_required
@require_POST
def delete(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Delete the conversation and its messages (its usage stays in the ledger)."""
    _conversation_or_404(request, pk).delete()
    if request.htmx:
        response = HttpResponse(status=204)
        response["HX-Redirect"] = reverse("portal:chat")
        return response
    return redirect("portal:chat")


@login_required
@require_GET
def message_fragment(request: HttpRequest, pk: int, mid: int) -> HttpResponse:
    """One message, as the page shows it (read again after Stop, once the answer is saved)."""
    conversation = _conversation_or_404(request, pk)
    message = _message_or_404(conversation, mid)
    return HttpResponse(message_html(message))


@login_required
@require_POST
def regenerate(request: HttpRequest, pk: int, mid: int) -> HttpResponse:
    """Answer again: the answer ``mid`` and everything after it are replaced by a new answer."""
    conversation = _conversation_or_404(request, pk)
    message = _message_or_404(conversation, mid)
    if message.role != Message.Role.ASSISTANT or message.in_progress:
        return render(
            request, "portal/chat.html#notice", {"notice": "Only a finished answer can be regenerated."}
        )
    with transaction.atomic():
        conversation.messages.filter(pk__gte=message.pk).delete()
        _pending_turn(conversation)
    return _messages_fragment(request, conversation)


@login_required
@require_POST
def edit(request: HttpRequest, pk: int, mid: int) -> HttpResponse:
    """Edit a user message and resend it: what followed it is replaced by a new answer."""
    conversation = _conversation_or_404(request, pk)
    message = _message_or_404(conversation, mid)
    content = _clean_text(request.POST.get("content", ""), MAX_MESSAGE_CHARS)
    if message.role != Message.Role.USER or not content:
        return render(request, "portal/chat.html#notice", {"notice": "Only your own messages can be edited."})
    if conversation.messages.filter(status=Message.Status.STREAMING).exists():
        return render(request, "portal/chat.html#notice", {"notice": "Stop the answer first."})
    with transaction.atomic():
        message.content = content
        message.save(update_fields=["content"])
        conversation.messages.filter(pk__gt=message.pk).delete()
        _pending_turn(conversation)
    return _messages_fragment(request, conversation)


@login_required
@require_GET
def export(request: HttpRequest, pk: int, fmt: str) -> HttpResponse:
    """The conversation as Markdown or JSON, as an attachment."""
    conversation = _conversation_or_404(request, pk)
    if fmt not in ("md", "json"):
        raise Http404("Export as .md or .json.")
    messages = list(conversation.messages.all())
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", conversation.title)[:60].strip("_") or "conversation"
    if fmt == "json":
        payload = {
            "id": conversation.pk, "title": conversation.title, "model": conversation.model,
            "system_prompt": conversation.system_prompt, "created_at": conversation.created_at.isoformat(),
            "prompt_tokens": conversation.prompt_tokens, "completion_tokens": conversation.completion_tokens,
            "cost_usd": str(conversation.cost_usd),
            "messages": [
                {"role": m.role, "content": m.content, "model": m.model, "status": m.status, "error": m.error,
                 "prompt_tokens": m.prompt_tokens, "completion_tokens": m.completion_tokens,
                 "cost_usd": str(m.cost_usd), "created_at": m.created_at.isoformat()}
                for m in messages
            ],
        }  # fmt: skip
        response = HttpResponse(
            json.dumps(payload, indent=2, ensure_ascii=False), content_type="application/json"
        )
    else:
        lines = [f"# {conversation.title}", "", f"Model: {conversation.model}"]
        if conversation.system_prompt:
            lines += ["", "## System prompt", "", conversation.system_prompt]
        for m in messages:
            who = "You" if m.role == Message.Role.USER else f"Assistant ({m.model})"
            lines += ["", f"## {who}", "", m.content or (f"_{m.error}_" if m.error else "")]
        response = HttpResponse("\n".join(lines) + "\n", content_type="text/markdown; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{stem}.{fmt}"'
    return response


# --- the answer stream -------------------------------------------------------------------------------


def _claim(user_id: int, pk: int, mid: int) -> tuple[Conversation, Message, list[dict[str, str]]] | None:
    """Mark the pending answer ``mid`` as streaming (exactly once) and build the prompt for it.

    None when it is not pending (already answered, or being answered elsewhere). Http404 when the
    conversation or message is not the user's.
    """
    conversation = Conversation.objects.owned_by(user_id).filter(pk=pk).first()
    if conversation is None or not conversation.messages.filter(pk=mid, role=Message.Role.ASSISTANT).exists():
        raise Http404("No such message.")
    claimed = Message.objects.filter(pk=mid, status=Message.Status.PENDING).update(
        status=Message.Status.STREAMING, model=conversation.model
    )
    if not claimed:
        return None
    prompt: list[dict[str, str]] = []
    if conversation.system_prompt:
        prompt.append({"role": "system", "content": conversation.system_prompt})
    for role, content in (
        conversation.messages.filter(pk__lt=mid).exclude(content="").values_list("role", "content")
    ):
        prompt.append({"role": role, "content": content})
    return conversation, Message.objects.get(pk=mid), prompt


def _finish(conversation_id: int, message_id: int, user: Any, outcome: Outcome) -> dict[str, Any]:
    """Store the outcome of a turn (sync ORM) and render what the page replaces."""
    html = render_markdown(outcome.text) if outcome.text else ""
    with transaction.atomic():
        Message.objects.filter(pk=message_id).update(
            content=outcome.text, rendered_html=html, status=outcome.status, error=outcome.error,
            model=outcome.model, request_id=outcome.request_id, prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens, cost_usd=outcome.cost_usd,
        )  # fmt: skip
        Conversation.objects.filter(pk=conversation_id).update(
            prompt_tokens=F("prompt_tokens") + outcome.prompt_tokens,
            completion_tokens=F("completion_tokens") + outcome.completion_tokens,
            cost_usd=F("cost_usd") + outcome.cost_usd, updated_at=timezone.now(),
        )  # fmt: skip
    conversation = Conversation.objects.get(pk=conversation_id)
    message = Message.objects.get(pk=message_id)
    return _done_payload(conversation, message, user)


def _done_payload(conversation: Conversation, message: Message, user: Any) -> dict[str, Any]:
    context = {"conversation": conversation, "quota": usage_for_user(user)}
    return {
        "status": message.status,
        "error": message.error,
        "html": message_html(message),
        "totals": render_to_string("portal/chat.html#totals", context),
        "quota": render_to_string("portal/chat.html#quota", context),
    }


def _current(user: Any, pk: int, mid: int) -> dict[str, Any]:
    conversation = Conversation.objects.get(pk=pk, owner_id=user.pk)
    return _done_payload(conversation, conversation.messages.get(pk=mid), user)


async def stream(request: HttpRequest, pk: int, mid: int) -> HttpResponseBase:
    """POST: stream the pending answer ``mid`` as server-sent events (``delta``, then ``done``).

    The browser reads it with fetch() (static/portal/chat.js); aborting the fetch is Stop.
    """
    # request.user through the sync path: social-auth's backends (Entra ID) have no aget_user.
    user = await sync_to_async(lambda: request.user)()
    if not await sync_to_async(lambda: user.is_authenticated)():
        raise Http404("No such message.")
    if request.method != "POST":
        return HttpResponse("POST only.", status=405, headers={"Allow": "POST"})
    claim = await adb(_claim, int(user.pk or 0), pk, mid)
    if claim is None:  # answered already: send the stored message instead
        payload = await adb(_current, user, pk, mid)
        return _sse_once(payload)
    conversation, message, prompt = claim
    principal = await adb(principal_for_user, int(user.pk or 0))
    request_id = new_request_id()

    async def on_finish(outcome: Outcome) -> dict[str, Any]:
        return await adb(_finish, conversation.pk, message.pk, user, outcome)

    if principal is None:
        outcome = Outcome(request_id=request_id, status="error", error="Your account is inactive.")
        return _sse_once(await on_finish(outcome))
    body = {"model": conversation.model, "messages": prompt}
    turn = Turn(principal=principal, body=body, request_id=request_id, on_finish=on_finish)
    turn.start()
    return _sse_response(relay(turn, client_left(request)))


def _sse_once(payload: dict[str, Any]) -> HttpResponse:
    response = HttpResponse(sse("done", payload), content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    return response


def _sse_response(content: Any) -> StreamingHttpResponse:
    response = StreamingHttpResponse(content, content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response
