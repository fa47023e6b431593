"""Bad input on the proxy routes: never a 5xx, always a well-formed error, refused before the upstream.

Arbitrary JSON (hypothesis), nonsense `max_tokens`, huge or malformed `messages` and `tools`
(gateway/limits.py), and bodies over GATEWAY_MAX_BODY_BYTES, which must be refused while they are
still being sent (read_body stops at the limit; nothing is buffered whole).
"""

from __future__ import annotations

import select
import socket
import time
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import limits
from tests.fakes.openai_upstream import FakeOpenAI

HELLO = [{"role": "user", "content": "hi"}]
ROUTES = [
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/responses",
    "/anthropic/v1/messages",
]
FIELDS = [
    "messages", "max_tokens", "max_completion_tokens", "max_output_tokens", "tools", "tool_choice", "stream",
    "stream_options", "input", "prompt", "n", "temperature", "top_p", "system", "stop", "stop_sequences",
    "response_format", "instructions", "user", "dimensions", "encoding_format",
]  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool"]) | json_values},
        optional={
            "content": st.text(max_size=12) | json_values,
            "tool_calls": json_values,
            "name": json_values,
        },
    ),
    max_size=3,
)


def near_valid(route: str) -> st.SearchStrategy[Any]:
    """Objects with the route's own fields holding arbitrary values: they get past the first checks."""
    required: dict[str, st.SearchStrategy[Any]] = {
        "model": st.sampled_from(["gpt-4o-mini", "text-embedding-3-small", "gpt-3.5-turbo-instruct"])
        | json_values
    }
    if route.startswith("/anthropic/"):  # max_tokens is required there: mostly a valid one
        required["max_tokens"] = st.integers(min_value=1, max_value=64) | json_values
    optional = {name: (messages | json_values) if name == "messages" else json_values for name in FIELDS}
    return st.fixed_dictionaries(required, optional={k: v for k, v in optional.items() if k not in required})


def well_formed_error(route: str, response: httpx.Response) -> dict[str, Any]:
    """The error object of a refusal, in the route's API format (OpenAI's, or Anthropic's)."""
    assert response.headers["content-type"].startswith("application/json"), response.text[:200]
    payload = response.json()
    if route.startswith("/anthropic/"):
        assert payload["type"] == "error" and set(payload["error"]) == {"type", "message"}
        return dict(payload["error"])
    assert set(payload["error"]) == {"message", "type", "param", "code"}, payload
    return dict(payload["error"])


@pytest.fixture
def client(gateway: Any, alice_key: Any) -> Any:
    headers = {"Authorization": f"Bearer {alice_key[1]}", "x-api-key": alice_key[1]}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=30) as http:
        yield http


@pytest.mark.parametrize("route", ROUTES)
def test_arbitrary_json_never_gets_a_server_error(client: httpx.Client, fake: FakeOpenAI, route: str) -> None:
    @settings(
        max_examples=30, deadline=None, derandomize=True, database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )  # fmt: skip
    @given(body=near_valid(route) | json_values)
    def check(body: Any) -> None:
        headers = {"content-type": "application/json"}
        response = client.post(route, content=orjson.dumps(body), headers=headers)
        assert response.status_code < 500, (body, response.status_code, response.text[:300])
        if response.status_code >= 400:
            well_formed_error(route, response)

    check()


ABSURD_MAX_TOKENS = [-1, 0, 10**12, "100", 1.5, True, [], {}]


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions", "/anthropic/v1/messages"])
def test_absurd_max_tokens_is_a_400_naming_it_before_any_upstream_call(
    client: httpx.Client, fake: FakeOpenAI, route: str
) -> None:
    for value in ABSURD_MAX_TOKENS:
        body: dict[str, Any] = {"model": "gpt-4o-mini", "max_tokens": value}
        body.update({"prompt": "hi"} if route == "/v1/completions" else {"messages": HELLO})
        response = client.post(route, json=body)
        assert response.status_code == 400, (value, response.text)
        error = well_formed_error(route, response)
        if not route.startswith("/anthropic/"):
            assert error["param"] == "max_tokens", value
        assert "max_tokens" in error["message"], value
    assert fake.requests == []


FUNCTION: dict[str, Any] = {"name": "get_weather", "parameters": {"type": "object"}}
TOOL: dict[str, Any] = {"type": "function", "function": FUNCTION}
BAD_CHAT_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("10,000 messages", {"messages": HELLO * 10_000}, "messages"),
    ("messages not a list", {"messages": {"role": "user", "content": "hi"}}, "messages"),
    ("a message not an object", {"messages": ["hi"]}, "messages[0]"),
    ("a message without role", {"messages": [{"content": "hi"}]}, "messages[0].role"),
    ("an unknown role", {"messages": [*HELLO, {"role": "wizard", "content": "hi"}]}, "messages[1].role"),
    ("content not text", {"messages": [{"role": "user", "content": 42}]}, "messages[0].content"),
    ("tools not a list", {"messages": HELLO, "tools": TOOL}, "tools"),
    ("a tool without function name", {"messages": HELLO, "tools": [{"type": "function", "function": {}}]},
     "tools[0].function.name"),
    ("a tool without function", {"messages": HELLO, "tools": [{"type": "function"}]}, "tools[0].function"),
    ("parameters not an object",
     {"messages": HELLO, "tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
     "tools[0].function.parameters"),
    ("1,000 tools", {"messages": HELLO, "tools": [TOOL] * 1000}, "tools"),
    ("a tool not an object", {"messages": HELLO, "tools": ["get_weather"]}, "tools[0]"),
]  # fmt: skip


def test_malformed_messages_and_tools_are_a_400_naming_the_param_before_any_upstream_call(
    client: httpx.Client, fake: FakeOpenAI
) -> None:
    for label, fields, param in BAD_CHAT_BODIES:
        response = client.post("/v1/chat/completions", json={"model": "gpt-4o-mini", **fields})
        assert response.status_code == 400, (label, response.text)
        error = well_formed_error("/v1/chat/completions", response)
        assert (error["param"], error["type"]) == (param, "invalid_request_error"), label
    assert fake.requests == []


def test_the_responses_api_checks_its_flat_function_tools(client: httpx.Client, fake: FakeOpenAI) -> None:
    body = {"model": "gpt-4o-mini", "input": "hi", "tools": [{"type": "function", "parameters": {}}]}
    response = client.post("/v1/responses", json=body)
    assert (
        response.status_code == 400
        and well_formed_error("/v1/responses", response)["param"] == "tools[0].name"
    )
    # Built-in tools have shapes of their own and pass through.
    limits.check_request("responses", {"tools": [{"type": "web_search"}]})
    assert fake.requests == []


def test_bodies_at_the_limits_still_pass(client: httpx.Client, fake: FakeOpenAI) -> None:
    many = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": "hi"}
        for i in range(limits.MAX_MESSAGES - 1)
    ]
    body = {"model": "gpt-4o-mini", "messages": [*many, *HELLO], "max_tokens": 5,
            "tools": [{**TOOL, "function": {**FUNCTION, "name": f"t{i}"}} for i in range(limits.MAX_TOOLS)]}  # fmt: skip
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert len(fake.requests) == 1


def test_a_chunked_body_over_the_limit_is_refused_while_it_is_still_being_sent(
    gateway: Any, alice_key: Any, fake: FakeOpenAI, settings: Any
) -> None:
    """50 MB sent chunked by a generator: the 413 arrives long before the client has sent it all."""
    settings.GATEWAY_MAX_BODY_BYTES = 1024 * 1024
    total = 50 * 1024 * 1024
    chunk = b"x" * 65536
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {alice_key[1]}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        pending = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock] if sent < total else [], [], 1)
            if readable:
                data = sock.recv(65536)
                answer += data
                if not data or b"\r\n\r\n" in answer:
                    break
            if writable:
                pending = pending or frame
                try:
                    n = sock.send(pending)
                except (BrokenPipeError, ConnectionResetError):
                    break
                pending = pending[n:]
                sent += n
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < total / 4, f"the client had sent {sent} of {total} bytes before the 413"
    assert fake.requests == []


def test_a_declared_content_length_over_the_limit_is_refused_before_the_body_is_read(
    gateway: Any, alice_key: Any, fake: FakeOpenAI, settings: Any
) -> None:
    settings.GATEWAY_MAX_BODY_BYTES = 1024 * 1024
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {alice_key[1]}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {50 * 1024 * 1024}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(head + b"{")  # one byte of the fifty megabytes
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    body = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "request_too_large"
    assert fake.requests == []
