"""Every failure is OpenAI-shaped with the right status, and surfaces as the SDK's own exception."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import openai
import pytest
from django.utils import timezone

from gateway import keys
from gateway.services import key_issue, key_revoke
from tests.fakes.openai_upstream import FakeOpenAI

HELLO = [{"role": "user", "content": "hi"}]


def _sdk(gateway: Any, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def _shape(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_missing_malformed_and_unknown_keys_are_401(gateway: Any) -> None:
    url = f"{gateway.url}/v1/chat/completions"
    body = {"model": "gpt-4o-mini", "messages": HELLO}
    assert _shape(httpx.post(url, json=body))["code"] == "missing_api_key"
    assert (
        _shape(httpx.post(url, json=body, headers={"Authorization": "Basic abc"}))["code"]
        == "invalid_api_key"
    )
    assert (
        _shape(httpx.post(url, json=body, headers={"Authorization": "Bearer nope"}))["code"]
        == "invalid_api_key"
    )
    # Well-formed, valid checksum, but never issued.
    assert (
        _shape(httpx.post(url, json=body, headers={"Authorization": f"Bearer {keys.generate()}"}))["code"]
        == "invalid_api_key"
    )
    # Keys are never taken from the query string.
    assert httpx.post(f"{url}?api-key=whatever&key=whatever", json=body).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        _sdk(gateway, "llmc-wrong").chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]


def test_a_mistyped_key_is_refused_without_a_database_lookup(alice_key: Any) -> None:
    plaintext = alice_key[1]
    typo = plaintext[:-8] + ("A" if plaintext[-8] != "A" else "B") + plaintext[-7:]
    assert keys.well_formed(plaintext)
    assert not keys.well_formed(typo)


def test_revoked_and_expired_keys_are_401(gateway: Any, alice_key: Any) -> None:
    user = alice_key[0]
    revoked, revoked_key = key_issue(name="r", user=user)
    key_revoke(key=revoked)
    _, expired_key = key_issue(name="e", user=user, expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(openai.AuthenticationError) as exc:
        _sdk(gateway, revoked_key).chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    assert exc.value.code == "key_revoked"
    with pytest.raises(openai.AuthenticationError) as exc:
        _sdk(gateway, expired_key).chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    assert exc.value.code == "key_expired"


def test_a_model_outside_the_keys_list_or_the_groups_is_403(gateway: Any, alice_key: Any) -> None:
    _, narrow = key_issue(name="narrow", user=alice_key[0], models=["gpt-4o"])
    with pytest.raises(openai.PermissionDeniedError) as exc:
        _sdk(gateway, narrow).chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    assert exc.value.code == "model_not_allowed"
    with pytest.raises(openai.PermissionDeniedError):
        _sdk(gateway, alice_key[1]).chat.completions.create(model="gpt-4.1", messages=HELLO)  # type: ignore[arg-type]


def test_unknown_model_and_route_are_404(sdk: openai.OpenAI, gateway: Any, alice_key: Any) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        sdk.chat.completions.create(model="no-such-model", messages=HELLO)  # type: ignore[arg-type]
    assert exc.value.code == "model_not_found"
    response = httpx.post(
        f"{gateway.url}/v1/nothing/here", headers={"Authorization": f"Bearer {alice_key[1]}"}, json={}
    )
    assert response.status_code == 404 and _shape(response)["code"] == "unknown_route"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_body"),
        (b'{"model": "gpt-4o-mini"}', "invalid_value"),
        (b'{"model": "gpt-4o-mini", "messages": "hi"}', "invalid_value"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "missing_model"),
        (
            b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
            "invalid_type",
        ),
        (b"\xff\xfe", "invalid_json"),
    ],
)
def test_malformed_bodies_are_400_never_500(
    gateway: Any, alice_key: Any, fake: FakeOpenAI, raw: bytes, code: str
) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", content=raw,
        headers={"Authorization": f"Bearer {alice_key[1]}", "content-type": "application/json"},
    )  # fmt: skip
    assert response.status_code == 400
    assert _shape(response)["code"] == code
    assert fake.requests == []


def test_a_body_over_the_limit_is_413(gateway: Any, alice_key: Any, settings: Any) -> None:
    settings.GATEWAY_MAX_BODY_BYTES = 1000
    big = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]}'
    headers = {"Authorization": f"Bearer {alice_key[1]}", "content-type": "application/json"}
    declared = httpx.post(f"{gateway.url}/v1/chat/completions", content=big, headers=headers)
    assert declared.status_code == 413 and _shape(declared)["code"] == "request_too_large"

    def chunks() -> Any:  # no Content-Length: chunked transfer encoding
        for i in range(0, len(big), 500):
            yield big[i : i + 500]

    chunked = httpx.post(f"{gateway.url}/v1/chat/completions", content=chunks(), headers=headers)
    assert chunked.status_code == 413


def test_an_upstream_429_is_relayed_and_its_retry_after_honoured(
    sdk: openai.OpenAI, fake: FakeOpenAI
) -> None:
    fake.fail_next(429, retry_after=1)
    with pytest.raises(openai.RateLimitError) as exc:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    assert exc.value.response.headers["retry-after"] == "1"
    calls = len(fake.requests)
    # Within the Retry-After the deployment is not asked again: the gateway answers 429 itself.
    with pytest.raises(openai.RateLimitError) as again:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    assert again.value.code == "upstream_rate_limited"
    assert len(fake.requests) == calls
    import time

    time.sleep(1.1)
    assert sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices  # type: ignore[arg-type]


def test_provider_client_errors_are_relayed_with_status_and_message(
    sdk: openai.OpenAI, fake: FakeOpenAI
) -> None:
    fake.fail_next(
        400,
        body={
            "error": {
                "message": "Invalid value for temperature",
                "type": "invalid_request_error",
                "param": "temperature",
                "code": "invalid_value",
            }
        },
    )
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    assert bad.value.param == "temperature"


def test_provider_failure_is_502_and_timeout_504(
    sdk: openai.OpenAI, fake: FakeOpenAI, catalog: Any, ledger: Any
) -> None:
    fake.fail_next(500)
    with pytest.raises(openai.InternalServerError) as exc:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    assert exc.value.status_code == 502
    local = catalog["local"]
    local.timeout_seconds = 0.3
    local.save()
    fake.behaviour(latency_ms=2000)
    import time

    time.sleep(0.4)  # let the change signal reach the gateway
    with pytest.raises(openai.InternalServerError) as slow:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    assert slow.value.status_code == 504
    statuses = sorted(e.status for e in ledger(2))
    assert statuses == [502, 504]


def test_upstream_unreachable_is_502(sdk: openai.OpenAI, catalog: Any) -> None:
    local = catalog["local"]
    local.base_url = "http://127.0.0.1:9/v1"  # discard port: nothing listens
    local.save()
    import time

    time.sleep(0.4)
    with pytest.raises(openai.InternalServerError) as exc:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    assert exc.value.status_code == 502
    assert exc.value.code == "upstream_unreachable"
