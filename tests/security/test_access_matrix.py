"""Two users × every object route: the other user's conversation, message, prompt, transcription job
or app is a 404 on every URL, never a 403 or a 200.

The route list comes from Django's URL resolver: a new route with a path parameter that this table
does not name fails `test_every_object_route_is_in_the_matrix`, naming it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from gateway.services import key_issue
from portal.models import App, Conversation, Message
from prompts.services import prompt_create
from transcription.models import Source, TranscriptionJob

pytestmark = pytest.mark.django_db(transaction=True)  # async views (chat stream, job API) included

# Parametrized routes that hold no per-user object, and why they are outside the matrix.
NOT_OBJECT_ROUTES = (
    "admin/",  # the admin console: staff only, Django admin's own permission checks
    "auth/",  # social-auth's sign-in flow: <backend> is an identity provider, not an object
    "accounts/reset/",  # Django's password reset: <uidb64>/<token> is checked by Django itself
)
# name → (method, kwargs from the objects); the other user must get a 404 on each.
MATRIX: dict[str, tuple[str, Any]] = {
    "portal:chat_conversation": ("GET", lambda o: {"pk": o["conversation"]}),
    "portal:chat_send": ("POST", lambda o: {"pk": o["conversation"]}),
    "portal:chat_settings": ("POST", lambda o: {"pk": o["conversation"]}),
    "portal:chat_rename": ("POST", lambda o: {"pk": o["conversation"]}),
    "portal:chat_pin": ("POST", lambda o: {"pk": o["conversation"]}),
    "portal:chat_delete": ("POST", lambda o: {"pk": o["conversation"]}),
    "portal:chat_export": ("GET", lambda o: {"pk": o["conversation"], "fmt": "json"}),
    "portal:chat_message": ("GET", lambda o: {"pk": o["conversation"], "mid": o["answer"]}),
    "portal:chat_stream": ("POST", lambda o: {"pk": o["conversation"], "mid": o["answer"]}),
    "portal:chat_regenerate": ("POST", lambda o: {"pk": o["conversation"], "mid": o["answer"]}),
    "portal:chat_edit": ("POST", lambda o: {"pk": o["conversation"], "mid": o["question"]}),
    "portal:app_detail": ("GET", lambda o: {"slug": o["app"]}),
    "portal:app_icon": ("GET", lambda o: {"slug": o["app"]}),
    "prompts:detail": ("GET", lambda o: {"pk": o["prompt"]}),
    "prompts:edit": ("POST", lambda o: {"pk": o["prompt"]}),
    "prompts:versions": ("GET", lambda o: {"pk": o["prompt"]}),
    "prompts:publish": ("POST", lambda o: {"pk": o["prompt"]}),
    "prompts:unpublish": ("POST", lambda o: {"pk": o["prompt"]}),
    "prompts:review": ("POST", lambda o: {"pk": o["prompt"]}),
    "prompts:rollback": ("POST", lambda o: {"pk": o["prompt"]}),
    "prompts:handover": ("POST", lambda o: {"pk": o["prompt"]}),
    "prompts:favorite": ("POST", lambda o: {"pk": o["prompt"]}),
    "prompts:use": ("GET", lambda o: {"pk": o["prompt"]}),
    "prompts:render": ("POST", lambda o: {"pk": o["prompt"]}),
    "prompts:playground_json": ("GET", lambda o: {"pk": o["prompt"]}),
    "transcription:job": ("GET", lambda o: {"job_id": o["job"]}),
    "transcription:download": ("GET", lambda o: {"job_id": o["job"], "fmt": "txt"}),
    "transcription:delete": ("POST", lambda o: {"job_id": o["job"]}),
    "transcription:api_job": ("GET", lambda o: {"job_id": o["job"]}),
    # The prompt library API: a personal draft is nobody else's (its 404 is in OpenAI's format).
    "api:prompts_read": ("GET", lambda o: {"prompt_id": o["prompt"]}),
    # Quota rules are staff-only: the management API refuses non-staff before any lookup (403).
    "api:rules_update": ("PATCH", lambda o: {"rule_id": 1}),
    "api:rules_delete": ("DELETE", lambda o: {"rule_id": 1}),
}
STAFF_ONLY = {"api:rules_update", "api:rules_delete"}
KEY_AUTH = {"transcription:api_job", "api:prompts_read", "api:rules_update", "api:rules_delete"}


def _walk(resolver: URLResolver, prefix: str = "", namespace: str = "") -> Iterator[tuple[str, str]]:
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            ns = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from _walk(entry, prefix + str(entry.pattern), ns)
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), f"{namespace}{entry.name}" if entry.name else ""


def _object_routes() -> list[tuple[str, str]]:
    routes = []
    for route, name in _walk(get_resolver()):
        parametrized = "<" in route or "(?P<" in route or "(" in route
        if parametrized and not route.startswith(NOT_OBJECT_ROUTES):
            routes.append((route, name))
    return routes


def test_every_object_route_is_in_the_matrix() -> None:
    routes = _object_routes()
    assert len(routes) >= len(MATRIX) - 1  # the walk finds the routes (ninja's two share one path)
    missing = [f"{route} ({name or 'unnamed'})" for route, name in routes if name not in MATRIX]
    # The catch-all 404 of unknown /v1/audio paths has no object and no name.
    missing = [m for m in missing if not m.startswith("^v1/(audio/.*|transcriptions/.+/.*)$")]
    assert not missing, f"object routes without an access test in MATRIX: {missing}"


@pytest.fixture
def alice(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("alice")  # no password: hashing one costs 0.3 s


@pytest.fixture
def bob(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("bob")


@pytest.fixture
def objects(alice: Any) -> dict[str, Any]:
    """alice's objects: a conversation with a question and an answer, a personal prompt, a job, an app."""
    conversation = Conversation.objects.create(owner=alice, title="secret plans", model="gpt-4o-mini")
    question = Message.objects.create(conversation=conversation, role=Message.Role.USER, content="hi")
    answer = Message.objects.create(conversation=conversation, role=Message.Role.ASSISTANT, content="hello",
                                    status=Message.Status.COMPLETE)  # fmt: skip
    prompt = prompt_create(actor=alice, title="alice's draft", user_template="Hi {{name}}")
    job = TranscriptionJob.objects.create(user=alice, source=Source.PORTAL, model="whisper-1",
                                          engine="faster-whisper", engine_model="tiny.en", original_name="a.wav")  # fmt: skip
    team = Group.objects.create(name="alice-team")
    alice.groups.add(team)
    app = App.objects.create(name="Alice tool", slug="alice-tool", owner_group=team, icon_text="A")
    app.visible_to_groups.add(team)
    return {"conversation": conversation.pk, "question": question.pk, "answer": answer.pk, "prompt": prompt.uuid,
            "job": job.pk, "app": app.slug}  # fmt: skip


def _as(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


# GET routes where the owner's answer is a 404 too: no transcript yet, a draft (the API lists published
# prompts only), an app without an uploaded icon.
OWNER_404 = {"transcription:download", "api:prompts_read", "portal:app_icon"}


def test_the_other_user_gets_a_404_on_every_object_route(
    objects: dict[str, Any], alice: Any, bob: Any
) -> None:
    from django.urls import reverse

    from prompts.models import Prompt

    _, bob_key = key_issue(name="bob", user=bob)
    _, alice_key = key_issue(name="alice", user=alice)
    bob_client, alice_client = _as(bob), _as(alice)
    wrong = []
    for name, (method, kwargs) in sorted(MATRIX.items()):
        url = reverse(name, kwargs=kwargs(objects))
        headers = {"HTTP_AUTHORIZATION": f"Bearer {bob_key}"} if name in KEY_AUTH else {}
        response = bob_client.generic(method, url, **headers)
        expected = 403 if name in STAFF_ONLY else 404
        if response.status_code != expected:
            wrong.append((name, url, response.status_code, response.content[:200]))
        elif name in KEY_AUTH and not response["content-type"].startswith("application/json"):
            wrong.append((name, url, "not the API's JSON format", response.content[:200]))
        # The owner reaches it, so the 404 above is about ownership and not a broken URL.
        if name not in STAFF_ONLY and method == "GET":
            headers = {"HTTP_AUTHORIZATION": f"Bearer {alice_key}"} if name in KEY_AUTH else {}
            owner = alice_client.generic(method, url, **headers)
            if owner.status_code != (404 if name in OWNER_404 else 200):
                wrong.append((name, url, f"owner got {owner.status_code}", owner.content[:200]))
    assert not wrong, wrong
    # Nothing of alice's changed hands, moved or vanished.
    assert Conversation.objects.filter(pk=objects["conversation"], owner=alice, pinned=False,
                                       title="secret plans", model="gpt-4o-mini").exists()  # fmt: skip
    assert list(Message.objects.filter(conversation_id=objects["conversation"]).values_list("pk", "content")) == [
        (objects["question"], "hi"), (objects["answer"], "hello")]  # fmt: skip
    assert TranscriptionJob.objects.filter(pk=objects["job"], user=alice).exists()
    prompt = Prompt.objects.get(uuid=objects["prompt"])
    assert (prompt.owner_id, prompt.published_version_id, prompt.versions.count()) == (alice.pk, None, 1)
    assert not prompt.favorites.exists()


def test_usage_and_keys_show_only_the_callers_own(objects: dict[str, Any], alice: Any, bob: Any) -> None:
    """/usage/ and the job and prompt lists name nothing of another user's."""
    key, alice_key = key_issue(name="alice-secret-key-name", user=alice)
    bob_client = _as(bob)
    _, bob_key = key_issue(name="bob", user=bob)
    for url in ("/usage/", "/chat/", "/transcription/", "/transcription/jobs/", "/prompts/"):
        page = bob_client.get(url).content.decode()
        assert "secret plans" not in page and "alice" not in page.lower() and key.hint not in page, url
    listing = Client().get("/v1/transcriptions", HTTP_AUTHORIZATION=f"Bearer {bob_key}").json()
    assert listing["data"] == []
    prompts = Client().get("/api/prompts/", HTTP_AUTHORIZATION=f"Bearer {bob_key}").json()
    assert prompts == []
    assert Client().get("/api/quotas/usage", HTTP_AUTHORIZATION=f"Bearer {bob_key}").status_code == 403
