"""Logs: JSON lines with the request id, no content or key unless content logging allows content."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User

from config import logs
from gateway.models import CatalogModel, Deployment, Provider
from gateway.services import key_issue
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.live import LiveServer
from tests.support.processes import free_port

pytestmark = pytest.mark.django_db(transaction=True)

SECRET_PROMPT = "the launch code is pineapple-orbit-7731"


class Captured:
    """Everything logged while the fixture is active, as the configured handler formats it."""

    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]


def _capture(content: bool) -> Iterator[Captured]:
    """The settings' own logging configuration (JSON, DEBUG everywhere) into a string."""
    logs._content_groups = ((), frozenset(), 0.0)
    config = logs.logging_config(
        fmt="json", level="DEBUG", key_prefix=settings.API_KEY_PREFIX, content=content
    )
    logging.config.dictConfig(config)
    stream = io.StringIO()
    handlers = {h for name in ("", "uvicorn", "uvicorn.error") for h in logging.getLogger(name).handlers}
    for handler in handlers:
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)
    try:
        yield Captured(stream)
    finally:
        logging.config.dictConfig(settings.LOGGING)
        logs._content_groups = ((), frozenset(), 0.0)


# After the live server: importing the ASGI app runs django.setup(), which reconfigures logging.
@pytest.fixture
def captured(gateway: LiveServer) -> Iterator[Captured]:
    yield from _capture(content=False)


@pytest.fixture
def captured_with_content(gateway: LiveServer, settings: Any) -> Iterator[Captured]:
    settings.LOG_CONTENT_GROUPS = ["trusted"]
    yield from _capture(content=True)


@pytest.fixture
def unreachable(catalog: dict[str, Any]) -> str:
    """A model whose only provider listens nowhere: every call logs a warning, then a 502."""
    provider = Provider(name="gone", kind="openai_compatible", base_url=f"http://127.0.0.1:{free_port()}/v1")
    provider.set_api_key("sk-provider-secret-0123456789abcdef")
    provider.save()
    model = CatalogModel.objects.create(name="gone-model", input_per_mtok=Decimal("1"))
    Deployment.objects.create(model=model, provider=provider, provider_model="gone-model")
    return "gone-model"


def _chat(gateway: LiveServer, key: str, **body: Any) -> httpx.Response:
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": SECRET_PROMPT}], **body}
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=payload,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_a_gateway_line_is_json_with_the_request_id_of_its_request(
    captured: Captured, gateway: LiveServer, alice_key: tuple[User, str], unreachable: str
) -> None:
    response = _chat(gateway, alice_key[1], model=unreachable)
    assert response.status_code == 502
    request_id = response.headers["x-request-id"]
    warnings = [r for r in captured.records() if r["logger"] == "gateway.proxy" and r["level"] == "WARNING"]
    assert warnings, captured.text
    assert warnings[0]["request_id"] == request_id
    assert warnings[0]["message"] == "upstream gone/gone-model failed: upstream_unreachable"
    assert {"ts", "level", "logger", "message", "request_id"} <= set(warnings[0])
    assert warnings[0]["ts"].endswith("+00:00")


def test_a_django_line_carries_the_request_id_of_its_request(captured: Captured, gateway: LiveServer) -> None:
    response = httpx.get(f"{gateway.url}/api/no-such-route")
    request_id = response.headers["x-request-id"]
    assert request_id.startswith("req_")
    lines = [r for r in captured.records() if r["request_id"] == request_id]
    assert any(r["logger"] == "django.request" and "/api/no-such-route" in r["message"] for r in lines), (
        captured.text
    )
    outside = [r for r in captured.records() if r["logger"] == "django.request" and not r["request_id"]]
    assert outside == []


def test_by_default_no_prompt_and_no_key_is_logged_even_at_debug(
    captured: Captured, gateway: LiveServer, alice_key: tuple[User, str], unreachable: str, fake: FakeOpenAI
) -> None:
    key = alice_key[1]
    assert _chat(gateway, key).status_code == 200
    assert _chat(gateway, key, stream=True).status_code == 200
    assert _chat(gateway, key, model=unreachable).status_code == 502
    fake.fail_next(400)
    assert _chat(gateway, key).status_code == 400
    assert captured.records(), "nothing was captured: the test would prove nothing"
    assert "pineapple" not in captured.text
    assert key not in captured.text
    assert key[:20] not in captured.text
    assert "sk-provider-secret" not in captured.text
    assert fake.api_key not in captured.text


def test_content_logging_shows_the_bodies_of_its_groups_but_never_a_key(
    captured_with_content: Captured, gateway: LiveServer, alice_key: tuple[User, str], django_user_model: Any
) -> None:
    alice, key = alice_key
    alice.groups.add(Group.objects.create(name="trusted"))
    _, bob_key = key_issue(name="bob's", user=django_user_model.objects.create_user("bob"))
    leaked = f"{SECRET_PROMPT}; my key is {key}, authorization: Bearer {bob_key}"
    body = {"messages": [{"role": "user", "content": leaked}]}
    assert _chat(gateway, key, **body).status_code == 200
    assert _chat(gateway, key, stream=True, **body).status_code == 200
    records = captured_with_content.records()
    requests = [r for r in records if r["logger"] == "gateway.content" and r["message"] == "request body"]
    responses = [r for r in records if r["logger"] == "gateway.content" and r["message"] == "response body"]
    assert len(requests) == 2 and len(responses) == 2
    assert all(r["level"] == "DEBUG" and r["request_id"].startswith("req_") for r in requests + responses)
    assert "pineapple-orbit-7731" in requests[0]["content"]
    assert "pineapple" in responses[0]["content"]  # the fake echoes the prompt
    assert "<redacted>" in requests[0]["content"]
    assert key not in captured_with_content.text and bob_key not in captured_with_content.text
    # Bob is not in a content group: his call is not logged.
    seen = len(requests)
    assert _chat(gateway, bob_key).status_code == 200
    again = [r for r in captured_with_content.records() if r["logger"] == "gateway.content"]
    assert len(again) == seen * 2


def test_the_json_formatter_keeps_extras_and_puts_a_traceback_on_one_line() -> None:
    record = logging.LogRecord("x.y", logging.ERROR, __file__, 1, "failed %s", ("here",), None)
    try:
        raise RuntimeError("boom with llmc-" + "A" * 46)
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    record.job = "job_1"
    token = logs.request_id.set("req_abc")
    try:
        logs.RequestIdFilter().filter(record)
    finally:
        logs.request_id.reset(token)
    logs.RedactSecrets("llmc").filter(record)
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert out["message"] == "failed here" and out["level"] == "ERROR" and out["logger"] == "x.y"
    assert out["request_id"] == "req_abc" and out["job"] == "job_1"
    assert "RuntimeError: boom with <redacted>" in out["exc"]


def test_text_stays_the_default_format() -> None:
    config = logs.logging_config(fmt="text", level="INFO", key_prefix="llmc", content=False)
    assert config["handlers"]["console"]["formatter"] == "plain"
    assert config["formatters"]["plain"]["format"] == "%(asctime)s %(levelname)s %(name)s %(message)s"
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        logs.logging_config(fmt="xml", level="INFO", key_prefix="llmc", content=False)
