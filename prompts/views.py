"""The prompt library pages, and the fragments of the `/` picker (static/prompts/picker.js).

Every prompt is looked up through ``Prompt.objects.visible_to``: one the user may not read is a 404,
one they may read but not change is a 403.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Exists, OuterRef, Q
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_POST

from portal.markdown import render as markdown
from prompts import render as templating
from prompts import services
from prompts.forms import PromptForm, variables_form
from prompts.models import Prompt, PromptFavorite, PromptQuerySet, PromptVersion
from quotas.models import UsageEvent

PICKER_LIMIT = 20


def _visible(request: HttpRequest, pk: Any) -> Prompt:
    return get_object_or_404(Prompt.objects.visible_to(request.user), uuid=pk)


def _editable(request: HttpRequest, pk: Any) -> Prompt:
    prompt = _visible(request, pk)
    if not prompt.editable_by(request.user):
        raise PermissionDenied
    return prompt


def _version_for_use(prompt: Prompt, user: Any) -> PromptVersion:
    """The published version; an editor may also use the latest draft of an unpublished prompt."""
    if prompt.published_version is not None:
        return prompt.published_version
    latest = prompt.latest_version() if prompt.editable_by(user) else None
    if latest is None:
        raise Http404
    return latest


def _with_favorites(qs: PromptQuerySet, user: Any) -> Any:
    # Any: django-stubs cannot follow an annotate() on a custom QuerySet into later filters.
    return qs.annotate(is_favorite=Exists(PromptFavorite.objects.filter(user=user, prompt=OuterRef("pk"))))


def _usable(user: Any) -> PromptQuerySet:
    """What the picker offers: published prompts of the user's scopes and the user's own drafts."""
    mine = Q(owner_id=user.pk, scope=Prompt.Scope.PERSONAL)
    published = Prompt.objects.published_for(
        user_id=user.pk, group_ids=set(user.groups.values_list("id", flat=True))
    )
    return Prompt.objects.filter(Q(pk__in=published.values("pk")) | mine, archived=False)


@login_required
@require_GET
def prompt_list(request: HttpRequest) -> HttpResponse:
    """The library: search by text and #tags, a tag, favourites, a scope."""
    user = request.user
    q, tag = request.GET.get("q", "").strip()[:200], request.GET.get("tag", "").strip()[:40]
    qs = _with_favorites(Prompt.objects.visible_to(user).filter(archived=False), user)
    if q:
        qs = qs.search(q)
    if tag:
        qs = qs.with_tag(tag)
    if request.GET.get("favorites"):
        qs = qs.filter(is_favorite=True)
    scope = request.GET.get("scope", "")
    if scope in Prompt.Scope.values:
        qs = qs.filter(scope=scope)
    prompts = list(qs.select_related("owner", "published_version").prefetch_related("groups")
                   .order_by("-is_favorite", "-use_count", "title")[:200])  # fmt: skip
    review = [p for p in Prompt.objects.visible_to(user).filter(review_requested_at__isnull=False)
              .select_related("review_requested_by").prefetch_related("groups") if p.publishable_by(user)]  # fmt: skip
    tags = sorted({t for p in prompts for t in p.tag_list})
    context = {"prompts": prompts, "q": q, "tag": tag, "tags": tags, "scope": scope, "scopes": Prompt.Scope.choices,
               "favorites": bool(request.GET.get("favorites")), "review": review}  # fmt: skip
    return render(request, "prompts/list.html", context)


@login_required
def prompt_create(request: HttpRequest) -> HttpResponse:
    form = PromptForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        d = form.cleaned_data
        try:
            prompt = services.prompt_create(
                actor=request.user, title=d["title"], system=d["system"], user_template=d["user_template"],
                description=d["description"], category=d["category"], tags=d["tags"], model=d["model"],
                params=d["params"], scope=d["scope"], groups=list(d["groups"]), message=d["message"] or "Created",
            )  # fmt: skip
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, "Prompt saved as a draft.")
            return redirect("prompts:detail", pk=prompt.uuid)
    return render(request, "prompts/edit.html", {"form": form, "prompt": None})


@login_required
def prompt_edit(request: HttpRequest, pk: Any) -> HttpResponse:
    prompt = _editable(request, pk)
    latest = prompt.latest_version()
    initial = {"title": prompt.title, "description": prompt.description, "category": prompt.category,
               "tags": ", ".join(prompt.tag_list), "scope": prompt.scope, "groups": list(prompt.groups.all()),
               "system": latest.system if latest else "", "user_template": latest.user_template if latest else "",
               "model": latest.model if latest else "", "params": json.dumps(latest.params if latest else {})}  # fmt: skip
    form = PromptForm(request.POST or None, user=request.user, initial=initial)
    if request.method == "POST" and form.is_valid():
        d = form.cleaned_data
        try:
            version = services.prompt_update(
                prompt=prompt, actor=request.user, title=d["title"], system=d["system"],
                user_template=d["user_template"], description=d["description"], category=d["category"],
                tags=d["tags"], model=d["model"], params=d["params"], scope=d["scope"], groups=list(d["groups"]),
                message=d["message"],
            )  # fmt: skip
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(
                request,
                f"Saved as version {version.number}." if version else "Saved (the body is unchanged).",
            )
            return redirect("prompts:detail", pk=prompt.uuid)
    return render(request, "prompts/edit.html", {"form": form, "prompt": prompt})


@login_required
@require_GET
def prompt_detail(request: HttpRequest, pk: Any) -> HttpResponse:
    prompt = _visible(request, pk)
    user = request.user
    editable = prompt.editable_by(user)
    versions = list(prompt.versions.select_related("author")) if editable else []
    shown = prompt.published_version or (versions[0] if versions else None)
    month_start = timezone.localtime().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    api_calls = UsageEvent.objects.filter(prompt_id=str(prompt.uuid), created_at__gte=month_start).aggregate(
        n=Count("id")
    )["n"]
    context = {
        # Sanitised markdown (portal.markdown: no raw HTML, no script, no external images).
        "description_html": mark_safe(markdown(prompt.description)),  # noqa: S308
        "prompt": prompt, "shown": shown, "versions": versions, "editable": editable,
        "publishable": prompt.publishable_by(user), "variables": shown.variables() if shown else [],
        "is_favorite": prompt.favorites.filter(user_id=request.user.pk or 0).exists(), "api_calls": api_calls,
    }  # fmt: skip
    return render(request, "prompts/detail.html", context)


@login_required
@require_GET
def prompt_versions(request: HttpRequest, pk: Any) -> HttpResponse:
    """A unified diff between two versions (?a=1&b=3; default: the two latest)."""
    prompt = _editable(request, pk)
    versions = list(prompt.versions.select_related("author"))
    by_number = {v.number: v for v in versions}
    try:
        b = by_number[int(request.GET.get("b") or versions[0].number)]
        a = by_number[int(request.GET.get("a") or (versions[1].number if len(versions) > 1 else b.number))]
    except (KeyError, ValueError, IndexError):
        raise Http404 from None
    lines = []
    for part, label in (("system", "system message"), ("user_template", "user message"), ("model", "model"),
                        ("params", "parameters")):  # fmt: skip
        old, new = getattr(a, part), getattr(b, part)
        if part == "params":
            old, new = json.dumps(old, indent=1, sort_keys=True), json.dumps(new, indent=1, sort_keys=True)
        diff = list(difflib.unified_diff(str(old).splitlines(), str(new).splitlines(), f"v{a.number} {label}",
                                         f"v{b.number} {label}", lineterm=""))  # fmt: skip
        for line in diff:
            kind = (
                "meta"
                if line.startswith(("---", "+++", "@@"))
                else {"+": "add", "-": "del"}.get(line[:1], "ctx")
            )
            lines.append((kind, line))
    context = {"prompt": prompt, "versions": versions, "a": a, "b": b, "lines": lines,
               "publishable": prompt.publishable_by(request.user)}  # fmt: skip
    return render(request, "prompts/versions.html", context)


def _version_from_post(request: HttpRequest, prompt: Prompt) -> PromptVersion | None:
    number = request.POST.get("version", "")
    if not number:
        return None
    if not number.isdigit():
        raise Http404
    return get_object_or_404(PromptVersion, prompt=prompt, number=int(number))


def _act(request: HttpRequest, prompt: Prompt, action: Any, success: str) -> HttpResponse:
    try:
        action()
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, success)
    return redirect("prompts:detail", pk=prompt.uuid)


@login_required
@require_POST
def prompt_publish(request: HttpRequest, pk: Any) -> HttpResponse:
    prompt = _visible(request, pk)
    if not prompt.publishable_by(request.user):
        raise PermissionDenied
    version = _version_from_post(request, prompt)
    return _act(request, prompt, lambda: services.prompt_publish(prompt=prompt, actor=request.user, version=version),
                "Published.")  # fmt: skip


@login_required
@require_POST
def prompt_unpublish(request: HttpRequest, pk: Any) -> HttpResponse:
    prompt = _visible(request, pk)
    if not prompt.publishable_by(request.user):
        raise PermissionDenied
    return _act(request, prompt, lambda: services.prompt_unpublish(prompt=prompt, actor=request.user),
                "Unpublished: it is a draft again.")  # fmt: skip


@login_required
@require_POST
def prompt_request_review(request: HttpRequest, pk: Any) -> HttpResponse:
    prompt = _editable(request, pk)
    return _act(request, prompt, lambda: services.prompt_request_review(prompt=prompt, actor=request.user),
                "A curator of its scope will review it.")  # fmt: skip


@login_required
@require_POST
def prompt_rollback(request: HttpRequest, pk: Any) -> HttpResponse:
    prompt = _editable(request, pk)
    version = _version_from_post(request, prompt)
    if version is None:
        raise Http404
    return _act(request, prompt, lambda: services.prompt_rollback(prompt=prompt, actor=request.user, version=version),
                f"Version {version.number} restored as a new version.")  # fmt: skip


@login_required
@require_POST
def prompt_handover(request: HttpRequest, pk: Any) -> HttpResponse:
    prompt = _editable(request, pk)
    username = request.POST.get("username", "").strip()
    new_owner = get_user_model().objects.filter(username=username, is_active=True).first()
    if new_owner is None:
        messages.error(request, f"No active user named {username!r}.")
        return redirect("prompts:detail", pk=prompt.uuid)
    return _act(request, prompt, lambda: services.prompt_handover(prompt=prompt, actor=request.user, new_owner=new_owner),
                f"Handed over to {username}.")  # fmt: skip


@login_required
@require_POST
def prompt_favorite(request: HttpRequest, pk: Any) -> HttpResponse:
    prompt = _visible(request, pk)
    starred = services.prompt_favorite_toggle(prompt=prompt, user=request.user)
    if request.headers.get("HX-Request"):
        return render(request, "prompts/_favorite.html", {"prompt": prompt, "is_favorite": starred})
    return redirect("prompts:detail", pk=prompt.uuid)


# --- the / picker -----------------------------------------------------------------------------------
@login_required
@require_GET
def picker(request: HttpRequest) -> HttpResponse:
    """The `/` menu: prompts the user may use, filtered by ?q= (words and #tags), favourites first."""
    q = request.GET.get("q", "").strip()[:200]
    qs = _with_favorites(_usable(request.user), request.user)
    if q:
        qs = qs.search(q)
    prompts = list(qs.order_by("-is_favorite", "-use_count", "title")[:PICKER_LIMIT])
    return render(request, "prompts/_picker.html", {"prompts": prompts, "q": q})


@login_required
@require_GET
def prompt_use(request: HttpRequest, pk: Any) -> HttpResponse:
    """The variables form of a prompt chosen in the picker."""
    prompt = get_object_or_404(_usable(request.user), uuid=pk)
    version = _version_for_use(prompt, request.user)
    form = variables_form(version.variables())
    return render(request, "prompts/_use.html", {"prompt": prompt, "version": version, "form": form})


@login_required
@require_POST
def prompt_render(request: HttpRequest, pk: Any) -> JsonResponse:
    """The filled-in texts as JSON: {"system", "user"}; a 400 names the variable at fault."""
    prompt = get_object_or_404(_usable(request.user), uuid=pk)
    version = _version_for_use(prompt, request.user)
    variables = version.variables()
    given: dict[str, Any] = {}
    for v in variables:
        key = f"var_{v.name}"
        if v.type == "boolean":
            given[v.name] = "true" if request.POST.get(key) in ("on", "true", "1") else "false"
        elif key in request.POST:
            given[v.name] = request.POST[key]
    try:
        system, user_text = version.render(given)
    except templating.VariableError as exc:
        return JsonResponse(
            {"error": {"message": exc.message, "param": exc.name, "code": exc.code}}, status=400
        )
    services.prompt_count_use(prompt=prompt)
    return JsonResponse({"system": system, "user": user_text, "prompt": {"id": str(prompt.uuid), "version": version.number,
                                                                        "title": prompt.title}})  # fmt: skip


# --- the playground ---------------------------------------------------------------------------------
NUMBER_PARAMS = {"temperature": float, "top_p": float, "max_tokens": int, "seed": int, "presence_penalty": float,
                 "frequency_penalty": float}  # fmt: skip


def _playground_state(post: Any) -> tuple[list[Any], dict[str, Any], str]:
    """(messages, params, model) from either form of the playground's POST.

    The documented one: ``messages`` and ``params`` as JSON, ``model``. The playground page's own
    form: ``msg-role``/``msg-content`` repeated, and the first panel's ``p0-model``, ``p0-temperature``,
    ``p0-top_p``, ``p0-max_tokens``, ``p0-seed``, the penalties, ``p0-stop`` (lines), ``p0-json``.
    ValueError on malformed input.
    """
    if "messages" in post or "params" in post:
        return (
            json.loads(post.get("messages") or "[]"),
            json.loads(post.get("params") or "{}"),
            post.get("model", ""),
        )
    chat = [{"role": role, "content": content}
            for role, content in zip(post.getlist("msg-role"), post.getlist("msg-content"), strict=False)]  # fmt: skip
    params: dict[str, Any] = {}
    for name, kind in NUMBER_PARAMS.items():
        raw = (post.get(f"p0-{name}") or "").strip()
        if raw:
            params[name] = kind(raw)
    stop = [line for line in (post.get("p0-stop") or "").splitlines() if line.strip()][:4]
    if stop:
        params["stop"] = stop
    if post.get("p0-json"):
        params["response_format"] = {"type": "json_object"}
    return chat, params, post.get("p0-model", "")


@login_required
@require_POST
def from_playground(request: HttpRequest) -> HttpResponse:
    """Save the playground's state as a personal draft and open it for editing."""
    try:
        chat, params, model = _playground_state(request.POST)
    except ValueError:
        return HttpResponse("The playground sent malformed values.", status=400, content_type="text/plain")
    try:
        prompt = services.prompt_from_playground(
            actor=request.user, title=request.POST.get("title", "").strip()[:200], system=request.POST.get("system", ""),
            messages=chat, model=str(model), params=params,
        )  # fmt: skip
    except ValidationError as exc:
        return HttpResponse(" ".join(exc.messages), status=400, content_type="text/plain")
    url = reverse("prompts:edit", kwargs={"pk": prompt.uuid})
    if request.headers.get("HX-Request"):
        return HttpResponse(status=204, headers={"HX-Redirect": url})
    return redirect(url)


@login_required
@require_GET
def playground_json(request: HttpRequest, pk: Any) -> JsonResponse:
    """A prompt for the playground to load: {system, messages, model, params} (templates unrendered)."""
    prompt = _visible(request, pk)
    version = _version_for_use(prompt, request.user)
    chat = [{"role": "user", "content": version.user_template}] if version.user_template else []
    return JsonResponse({"system": version.system, "messages": chat, "model": version.model, "params": version.params,
                         "prompt": {"id": str(prompt.uuid), "version": version.number, "title": prompt.title},
                         "variables": [v.as_dict() for v in version.variables()]})  # fmt: skip
