"""Prompts through the API: the management API lists and reads them, the gateway calls them by id
(rendered server-side, accounted to the prompt), and visibility holds on both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from django.contrib.auth.models import User

from gateway.services import key_issue
from gateway.state import shutdown
from prompts import services
from prompts.models import Prompt
from tests.fakes.openai_upstream import FakeOpenAI
from tests.prompts.conftest import Library, fresh
from tests.support.live import LiveServer
from tests.support.queries import count_queries

pytestmark = pytest.mark.django_db(transaction=True)


def key_of(user: User) -> str:
    return key_issue(name=f"{user.username}'s key", user=user)[1]


@pytest.fixture
def sue_sdk(gateway: LiveServer, live_library: Library) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key=key_of(live_library.users["sue"]), max_retries=0
    )


def test_a_prompt_called_by_id_is_rendered_before_the_upstream_sees_it(
    sue_sdk: openai.OpenAI, live_library: Library, fake: FakeOpenAI, ledger: Any
) -> None:
    prompt = live_library.prompts["groups"]
    answer = sue_sdk.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "And keep it short."}],
        extra_body={"prompt": {"id": str(prompt.uuid), "variables": {"tone": "casual", "product": "{{tone}}"}}},
    )  # fmt: skip
    assert answer.choices[0].message.content
    sent = fake.requests[-1].json
    assert sent["messages"] == [
        {"role": "system", "content": "You write casual pitches."},
        {"role": "user", "content": "Pitch {{tone}} to ."},
        {"role": "user", "content": "And keep it short."},
    ]
    assert "prompt" not in sent and sent["temperature"] == 0.3  # the prompt's recommended parameters
    (row,) = ledger(1, prompt_id=str(prompt.uuid))
    assert row.prompt_version == 1 and row.user == live_library.users["sue"] and row.status == 200


def test_the_model_and_a_version_can_come_from_the_prompt(
    sue_sdk: openai.OpenAI, live_library: Library, fake: FakeOpenAI, ledger: Any
) -> None:
    prompt = live_library.prompts["groups"]
    services.prompt_update(prompt=prompt, actor=fresh(live_library.users["sam"]), title=prompt.title, system="",
                           user_template="v2 for {{product}}", model="gpt-4o-mini")  # fmt: skip
    sue_sdk.chat.completions.create(model="", messages=[],
                                    extra_body={"prompt": {"id": str(prompt.uuid), "version": "1",
                                                           "variables": {"product": "tea"}}})  # fmt: skip
    assert fake.requests[-1].json["model"] == "gpt-4o-mini"
    assert fake.requests[-1].json["messages"][1] == {"role": "user", "content": "Pitch tea to ."}
    sue_sdk.chat.completions.create(model="gpt-4o-mini", messages=[],
                                    extra_body={"prompt": {"id": str(prompt.uuid), "version": 2,
                                                           "variables": {"product": "tea"}}})  # fmt: skip
    assert fake.requests[-1].json["messages"] == [{"role": "user", "content": "v2 for tea"}]
    rows = ledger(2, prompt_id=str(prompt.uuid))
    assert sorted(r.prompt_version for r in rows) == [1, 2]


def test_the_responses_api_takes_a_prompt_too(
    sue_sdk: openai.OpenAI, live_library: Library, fake: FakeOpenAI, ledger: Any
) -> None:
    prompt = live_library.prompts["groups"]
    response = sue_sdk.responses.create(
        model="gpt-4o-mini", input="Thanks!",
        extra_body={"prompt": {"id": str(prompt.uuid), "variables": {"product": "coffee", "customer": "Ann"}}},
    )  # fmt: skip
    assert response.output_text
    sent = fake.requests[-1].json
    assert sent["instructions"] == "You write formal pitches."
    assert sent["input"] == [
        {"role": "user", "content": "Pitch coffee to Ann."},
        {"role": "user", "content": "Thanks!"},
    ]
    assert ledger(1, prompt_id=str(prompt.uuid))[0].endpoint == "responses"


@pytest.mark.parametrize(
    ("variables", "param", "code"),
    [
        ({}, "prompt.variables.product", "missing_prompt_variable"),
        ({"product": "x", "tone": "rude"}, "prompt.variables.tone", "invalid_prompt_variable"),
        ({"product": "x", "colour": "red"}, "prompt.variables.colour", "unknown_prompt_variable"),
    ],
)
def test_a_bad_variable_is_a_400_naming_it(
    sue_sdk: openai.OpenAI,
    live_library: Library,
    fake: FakeOpenAI,
    variables: dict[str, str],
    param: str,
    code: str,
) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        sue_sdk.chat.completions.create(model="gpt-4o-mini", messages=[], extra_body={
            "prompt": {"id": str(live_library.prompts["groups"].uuid), "variables": variables}})  # fmt: skip
    body = error.value.body
    assert isinstance(body, dict)
    assert body["param"] == param and body["code"] == code and body["type"] == "invalid_request_error"
    assert error.value.response.json()["error"]["param"] == param
    assert fake.requests == []


def test_a_prompt_outside_the_callers_scope_is_a_404(
    gateway: LiveServer, live_library: Library, fake: FakeOpenAI
) -> None:
    hal = openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key=key_of(live_library.users["hal"]), max_retries=0
    )
    for prompt_id in (str(live_library.prompts["groups"].uuid), str(live_library.prompts["personal"].uuid),
                      "00000000-0000-0000-0000-000000000000", "not-a-uuid"):  # fmt: skip
        with pytest.raises(openai.NotFoundError) as error:
            hal.chat.completions.create(
                model="gpt-4o-mini", messages=[], extra_body={"prompt": {"id": prompt_id}}
            )
        assert error.value.response.json()["error"]["code"] == "prompt_not_found"
    assert fake.requests == []
    # A draft is not callable either, not even by a member of its department.
    draft = services.prompt_create(actor=live_library.users["sam"], title="Draft", user_template="d",
                                   scope=Prompt.Scope.GROUPS, groups=[live_library.sales])  # fmt: skip
    sue = openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key=key_of(live_library.users["sue"]), max_retries=0
    )
    with pytest.raises(openai.NotFoundError):
        sue.chat.completions.create(
            model="gpt-4o-mini", messages=[], extra_body={"prompt": {"id": str(draft.uuid)}}
        )


@pytest.fixture
async def asgi_client(catalog: Any, fast_flush: None) -> AsyncIterator[httpx.AsyncClient]:
    from config.asgi import application

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application), base_url="http://gw"
    ) as client:
        yield client
    await shutdown()


async def test_a_warm_prompt_costs_no_sql_query_and_a_change_is_seen(
    asgi_client: httpx.AsyncClient, live_library: Library, fake: FakeOpenAI, settings: Any
) -> None:
    from asgiref.sync import sync_to_async

    @sync_to_async
    def setup() -> tuple[str, str]:
        return key_of(live_library.users["sue"]), str(live_library.prompts["company"].uuid)

    key, prompt_id = await setup()
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "gpt-4o-mini", "messages": [], "prompt": {"id": prompt_id, "variables": {"text": "abc"}}}
    with count_queries() as cold:
        assert (await asgi_client.post("/v1/chat/completions", json=body, headers=headers)).status_code == 200
    assert any("prompts_prompt" in sql for sql in cold), (
        "the first call loads the prompt (the counter counts)"
    )
    with count_queries() as warm:
        for _ in range(3):
            assert (
                await asgi_client.post("/v1/chat/completions", json=body, headers=headers)
            ).status_code == 200
    assert warm == []

    @sync_to_async
    def publish_v2() -> None:
        cora = fresh(live_library.users["cora"])
        prompt = Prompt.objects.get(uuid=prompt_id)
        services.prompt_update(
            prompt=prompt, actor=cora, title=prompt.title, system="", user_template="TL;DR: {{text}}"
        )
        services.prompt_publish(prompt=prompt, actor=cora)

    await publish_v2()
    import asyncio

    for _ in range(100):  # the config poller notices the bumped generation (GATEWAY_CONFIG_POLL_SECONDS=0.1)
        assert (await asgi_client.post("/v1/chat/completions", json=body, headers=headers)).status_code == 200
        if fake.requests[-1].json["messages"][0]["content"] == "TL;DR: abc":
            break
        await asyncio.sleep(0.05)
    assert fake.requests[-1].json["messages"] == [{"role": "user", "content": "TL;DR: abc"}]


def test_the_management_api_lists_and_reads_what_the_caller_may_see(
    live_library: Library, client: Any
) -> None:
    sue, hal = key_of(live_library.users["sue"]), key_of(live_library.users["hal"])
    listed = client.get("/api/prompts/", headers={"Authorization": f"Bearer {sue}"})
    assert listed.status_code == 200
    assert {p["title"] for p in listed.json()} == {"Summarise", "Sales pitch", "My notes"}
    assert {
        p["title"] for p in client.get("/api/prompts/", headers={"Authorization": f"Bearer {hal}"}).json()
    } == {"Summarise"}
    tagged = client.get("/api/prompts/?tag=sales", headers={"Authorization": f"Bearer {sue}"}).json()
    assert [p["title"] for p in tagged] == ["Sales pitch"]
    pitch = live_library.prompts["groups"]
    read = client.get(f"/api/prompts/{pitch.uuid}", headers={"Authorization": f"Bearer {sue}"}).json()
    assert read["version"] == 1 and read["user"].startswith("Pitch {{product}}")
    assert [v["name"] for v in read["variables"]] == ["tone", "product", "customer"]
    assert read["variables"][0]["choices"] == ["formal", "casual"]
    hidden = client.get(f"/api/prompts/{pitch.uuid}", headers={"Authorization": f"Bearer {hal}"})
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "prompt_not_found"
    assert client.get("/api/prompts/nope", headers={"Authorization": f"Bearer {sue}"}).status_code == 404
    assert client.get("/api/prompts/").status_code == 401
    assert client.get("/api/prompts/", headers={"Authorization": "Bearer llmc-wrong"}).status_code == 401
