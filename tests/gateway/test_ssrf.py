"""SSRF: a client never chooses the upstream; an admin only a public one, unless a network is allowed."""

from __future__ import annotations

import socket
import time
from io import StringIO
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from openai.types.chat import ChatCompletionMessageParam

from gateway import ssrf
from gateway.catalog import load_snapshot
from gateway.errors import GatewayError
from gateway.models import CatalogModel, Deployment, Provider
from tests.fakes.openai_upstream import FakeOpenAI

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


# --- request bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "base_url": "http://169.254.169.254/"}, "base_url"),
        ({"model": "m", "metadata": {"base_url": "http://10.0.0.1"}}, "metadata.base_url"),
        ({"model": "m", "metadata": {"Base_URL": "x"}}, "metadata.Base_URL"),
        ({"model": "m", "extra_body": {"baseURL": "x"}}, "extra_body.baseURL"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "api_base": "x"}]}]},
            "messages[0].content[0].api_base",
        ),
        ({"a": [[{"b": {"c": [{"azure_endpoint": "x"}]}}]]}, "a[0][0].b.c[0].azure_endpoint"),
        ({"api_key": "sk-other"}, "api_key"),
        ({"proxy": "http://attacker"}, "proxy"),
        ({"x": {"Upstream": "x"}}, "x.Upstream"),
        ({"endpoint": "/v1/x"}, "endpoint"),
        ({"api-host": "x"}, "api-host"),
        ({"base_path": "/x"}, "base_path"),
    ],
)
def test_a_body_naming_an_upstream_anywhere_is_refused_with_its_path(
    body: dict[str, Any], param: str
) -> None:
    with pytest.raises(GatewayError) as exc:
        ssrf.check_body(body)
    assert (exc.value.status, exc.value.code, exc.value.param) == (400, "forbidden_parameter", param)


def test_legitimate_openai_fields_pass() -> None:
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "base_url api_base proxy"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
                {"type": "file", "file": {"file_url": "https://example.com/a.pdf", "filename": "a.pdf"}},
            ]},
            {"role": "assistant", "content": "x", "annotations": [
                {"type": "url_citation", "url_citation": {"url": "https://example.com", "title": "t"}}
            ]},
        ],
        "tools": [
            {"type": "function", "function": {"name": "call_api", "parameters": {
                "type": "object",
                "properties": {"endpoint": {"type": "string"}, "base_url": {"type": "string"},
                               "proxy": {"type": "object", "properties": {"url": {"type": "string"}}}},
            }}},
            {"type": "mcp", "server_label": "docs", "server_url": "https://mcp.example.com/sse"},
        ],
        "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {
            "type": "object", "properties": {"api_key": {"type": "string"}}}}},
        "metadata": {"team": "search", "url": "https://intranet/x"},
        "input": [{"type": "input_image", "image_url": "https://example.com/x.png"}],
    }  # fmt: skip
    ssrf.check_body(body)


def test_a_forbidden_parameter_is_400_and_nothing_is_sent_upstream(
    sdk: openai.OpenAI, fake: FakeOpenAI, gateway: Any, alice_key: Any
) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        sdk.chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, metadata={"base_url": "http://169.254.169.254/latest"}
        )
    assert exc.value.code == "forbidden_parameter"
    assert exc.value.param == "metadata.base_url"
    assert exc.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as nested:
        sdk.embeddings.create(model="text-embedding-3-small", input="x",
                              extra_body={"options": [{"API_BASE": "http://10.0.0.1"}]})  # fmt: skip
    assert nested.value.param == "options[0].API_BASE"
    # The Azure route and the Anthropic edge go through the same check.
    azure = httpx.post(
        f"{gateway.url}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        json={"messages": HELLO, "azure_endpoint": "https://evil.example"}, headers={"api-key": alice_key[1]},
    )  # fmt: skip
    assert azure.status_code == 400 and azure.json()["error"]["code"] == "forbidden_parameter"
    anthropic = httpx.post(
        f"{gateway.url}/anthropic/v1/messages",
        json={"model": "gpt-4o-mini", "max_tokens": 5, "messages": HELLO, "metadata": {"base_url": "x"}},
        headers={"x-api-key": alice_key[1]},
    )
    assert anthropic.status_code == 400
    assert fake.requests == []
    # And a legitimate request still goes through.
    sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO, metadata={"url": "https://x.example"})
    assert len(fake.requests) == 1


def test_the_scan_is_cheap_on_a_large_body() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "word " * 50} for _ in range(2000)]}
    times = []
    for _ in range(10):
        started = time.perf_counter()
        ssrf.check_body(body)
        times.append(time.perf_counter() - started)
    assert min(times) < 0.02, times  # the fastest scan: a stall of the machine shows in one, a cost in all


# --- admin-set provider URLs ---------------------------------------------------------------------


@pytest.fixture
def no_private(settings: Any) -> None:
    settings.GATEWAY_UPSTREAM_ALLOWED_NETWORKS = []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/v1",
        "http://localhost:11434/v1",
        "http://169.254.169.254/latest/meta-data",
        "http://10.1.2.3/v1",
        "http://192.168.0.10/v1",
        "http://172.16.5.5/v1",
        "http://[::1]:8000/v1",
        "http://[fd00::1]/v1",
        "http://[fe80::1]/v1",
        "http://[::ffff:127.0.0.1]/v1",
        "http://0.0.0.0/v1",
        "http://224.0.0.1/v1",
    ],
)
def test_internal_addresses_are_refused_when_no_network_is_allowed(no_private: None, url: str) -> None:
    problem = ssrf.upstream_problem(url)
    assert problem is not None and "GATEWAY_UPSTREAM_ALLOWED_NETWORKS" in problem


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://api.example.com/v1", "http"),
        ("file:///etc/passwd", "http"),
        ("gopher://127.0.0.1:6379/_", "http"),
        ("https://user:secret@api.openai.com/v1", "credentials"),
        ("https://token@api.openai.com/v1", "credentials"),
    ],
)
def test_other_schemes_and_credentials_are_refused(url: str, reason: str) -> None:
    problem = ssrf.upstream_problem(url)
    assert problem is not None and reason in problem


def test_listed_networks_are_allowed(settings: Any) -> None:
    settings.GATEWAY_UPSTREAM_ALLOWED_NETWORKS = ["10.20.0.0/16"]
    assert ssrf.upstream_problem("http://10.20.3.4:8000/v1") is None
    assert ssrf.upstream_problem("http://10.21.3.4:8000/v1") is not None
    assert ssrf.upstream_problem("https://8.8.8.8/v1") is None  # public: always allowed


@pytest.mark.django_db
def test_provider_clean_refuses_an_internal_url(no_private: None) -> None:
    provider = Provider(name="p", kind="openai_compatible", base_url="http://169.254.169.254/v1")
    with pytest.raises(ValidationError) as exc:
        provider.full_clean()
    assert "base_url" in exc.value.message_dict
    assert "link-local" in exc.value.message_dict["base_url"][0]


def _add_provider(client: Any, url: str) -> Any:
    return client.post("/admin/gateway/provider/add/", {
        "name": "vllm", "kind": "openai_compatible", "base_url": url, "api_key": "", "api_key_env": "",
        "api_version": "", "region": "", "enabled": "on", "timeout_seconds": "600",
        "connect_timeout_seconds": "10", "extra_headers": "{}", "flags": "[]", "options": "{}",
    })  # fmt: skip


@pytest.mark.django_db
def test_the_admin_form_refuses_an_internal_url_and_accepts_an_allowed_one(
    client: Any, django_user_model: type[User], settings: Any
) -> None:
    admin = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(admin)
    settings.GATEWAY_UPSTREAM_ALLOWED_NETWORKS = []
    refused = _add_provider(client, "http://10.20.0.5:8000/v1")
    assert refused.status_code == 200
    assert "private address" in refused.content.decode()
    assert not Provider.objects.exists()
    settings.GATEWAY_UPSTREAM_ALLOWED_NETWORKS = ["10.20.0.0/16"]
    accepted = _add_provider(client, "http://10.20.0.5:8000/v1")
    assert accepted.status_code == 302, accepted.content.decode()[:2000]
    assert Provider.objects.get().base_url == "http://10.20.0.5:8000/v1"


def _sync(tmp_path: Path, url: str) -> str:
    path = tmp_path / "gw.yaml"
    path.write_text(f"providers:\n  - {{name: ollama, kind: openai_compatible, base_url: '{url}'}}\n")
    out = StringIO()
    call_command("gateway_sync", str(path), stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_gateway_sync_refuses_an_internal_url_naming_the_provider(tmp_path: Path, settings: Any) -> None:
    settings.GATEWAY_UPSTREAM_ALLOWED_NETWORKS = []
    with pytest.raises(CommandError, match=r"ollama.*loopback"):
        _sync(tmp_path, "http://127.0.0.1:11434/v1")
    with pytest.raises(CommandError, match=r"ollama.*credentials"):
        _sync(tmp_path, "https://u:p@api.example.com/v1")
    assert not Provider.objects.exists()
    settings.GATEWAY_UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    assert "created provider ollama" in _sync(tmp_path, "http://127.0.0.1:11434/v1")


@pytest.mark.django_db
def test_the_snapshot_skips_a_provider_that_now_resolves_inside(
    settings: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """DNS rebinding: the host was public at the save, is the metadata service at the next load."""
    answer = {"llm.example.com": "93.184.215.14"}
    real = socket.getaddrinfo

    def fake_getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answer:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answer[host], port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    settings.GATEWAY_UPSTREAM_ALLOWED_NETWORKS = []
    remote = Provider(name="remote", kind="openai_compatible", base_url="https://llm.example.com/v1")
    remote.full_clean()
    remote.save()
    local = Provider.objects.create(name="local", kind="openai_compatible", base_url="http://127.0.0.1:9/v1")
    model = CatalogModel.objects.create(name="m")
    Deployment.objects.create(model=model, provider=remote, provider_model="m")
    Deployment.objects.create(model=model, provider=local, provider_model="m", priority=1)
    assert [d.provider.name for d in load_snapshot().models["m"].deployments] == ["remote"]
    assert "provider local skipped" in caplog.text
    answer["llm.example.com"] = "169.254.169.254"
    assert load_snapshot().models["m"].deployments == ()
    assert "provider remote skipped" in caplog.text
    settings.GATEWAY_UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    assert [d.provider.name for d in load_snapshot().models["m"].deployments] == ["local"]
