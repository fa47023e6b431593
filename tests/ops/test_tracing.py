"""OpenTelemetry tracing of the gateway path: a request span, its admission, upstream and settlement children."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest
from django.contrib.auth.models import User
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from config import tracing
from gateway.models import Deployment, Provider
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.live import LiveServer

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "user", "content": "hello there"}]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
OTEL_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "TRACING_ENABLED",
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
)


@pytest.fixture
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def spans(no_otel_env: None) -> Iterator[InMemorySpanExporter]:
    """Tracing on, through the production set-up, exporting to memory."""
    import config.asgi  # noqa: F401  (its import runs setup() from the environment: before ours)

    exporter = InMemorySpanExporter()
    assert tracing.setup(exporter=exporter)
    yield exporter
    tracing.shutdown()


def finished(exporter: InMemorySpanExporter, count: int, timeout: float = 10.0) -> list[ReadableSpan]:
    """The exported spans once there are ``count`` (settlement may end after the response)."""
    deadline = time.monotonic() + timeout
    while True:
        tracing.force_flush()
        got = list(exporter.get_finished_spans())
        if len(got) >= count or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


def attrs(s: ReadableSpan) -> dict[str, Any]:
    return dict(s.attributes or {})


def assert_no_secret(got: list[ReadableSpan], *secrets: str) -> None:
    for s in got:
        values = [*attrs(s).values(), *s.resource.attributes.values(), s.name]
        for event in s.events:
            values += list((event.attributes or {}).values())
        for secret in secrets:
            assert not any(secret in str(v) for v in values), (s.name, secret)


def the_request_and_children(got: list[ReadableSpan]) -> tuple[ReadableSpan, dict[str, list[ReadableSpan]]]:
    """The one server span and its children by name, checking that every span is in its trace."""
    (request,) = [s for s in got if s.kind is SpanKind.SERVER]
    assert request.context is not None
    children: dict[str, list[ReadableSpan]] = {}
    for s in got:
        if s is request:
            continue
        assert s.context is not None and s.parent is not None, s.name
        assert s.context.trace_id == request.context.trace_id, s.name
        assert s.parent.span_id == request.context.span_id, s.name
        children.setdefault(s.name, []).append(s)
    return request, children


def test_a_chat_is_a_request_span_with_admission_upstream_and_settlement(
    spans: InMemorySpanExporter,
    sdk: openai.OpenAI,
    alice_key: tuple[User, str],
    fake: FakeOpenAI,
    ledger: Any,
) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, extra_headers={"traceparent": TRACEPARENT}
    )  # type: ignore[arg-type]
    usage = raw.parse().usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    got = finished(spans, 4)
    assert sorted(s.name for s in got) == ["POST /v1/chat/completions", "admission", "settlement", "upstream"]
    request, children = the_request_and_children(got)
    # The caller's trace goes on: same trace id, the incoming span as the remote parent.
    assert request.context is not None and request.parent is not None
    assert request.context.trace_id == int(TRACE_ID, 16)
    assert request.parent.span_id == int(PARENT_ID, 16) and request.parent.is_remote
    (event,) = ledger(1)
    user, key = alice_key
    a = attrs(request)
    assert a["http.request.method"] == "POST"
    assert a["http.route"] == "/v1/chat/completions"
    assert a["http.response.status_code"] == 200
    assert a["llmc.request_id"] == raw.headers["x-request-id"] == event.request_id
    assert a["llmc.key_id"] == event.key_id
    assert a["user.id"] == str(user.pk)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "gpt-4o-mini"
    assert a["gen_ai.provider.name"] == a["gen_ai.system"] == "openai_compatible"
    assert a["gen_ai.usage.input_tokens"] == usage.prompt_tokens == event.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == usage.completion_tokens == event.completion_tokens
    assert request.status.status_code is StatusCode.UNSET
    (upstream,) = children["upstream"]
    assert upstream.kind is SpanKind.CLIENT
    assert dict(attrs(upstream)) == {
        "llmc.provider": "local",
        "llmc.deployment": event.deployment,
        "llmc.attempt": 1,
        "http.response.status_code": 200,
        "gen_ai.provider.name": "openai_compatible",
        "gen_ai.system": "openai_compatible",
        "gen_ai.request.model": "gpt-4o-mini",
    }
    # Admission happens before the upstream call; settlement after it.
    (admission,), (settlement,) = children["admission"], children["settlement"]
    assert admission.end_time is not None and upstream.start_time is not None
    assert admission.end_time <= upstream.start_time
    assert upstream.end_time is not None and settlement.start_time is not None
    assert upstream.end_time <= settlement.start_time
    assert_no_secret(got, key, fake.api_key)


def test_a_stream_is_traced_with_its_token_counts(
    spans: InMemorySpanExporter,
    sdk: openai.OpenAI,
    alice_key: tuple[User, str],
    fake: FakeOpenAI,
    ledger: Any,
) -> None:
    stream = sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True)  # type: ignore[arg-type]
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text
    got = finished(spans, 4)
    request, children = the_request_and_children(got)
    assert sorted(children) == ["admission", "settlement", "upstream"]
    assert request.name == "POST /v1/chat/completions"
    # No traceparent came in: the request span starts the trace.
    assert request.parent is None
    (event,) = ledger(1)
    assert event.streamed and event.completion_tokens > 0
    assert attrs(request)["gen_ai.usage.input_tokens"] == event.prompt_tokens
    assert attrs(request)["gen_ai.usage.output_tokens"] == event.completion_tokens
    (upstream,) = children["upstream"]
    assert attrs(upstream)["http.response.status_code"] == 200
    # The upstream span lasts as long as the relayed stream: it ends once the request span's work is done.
    assert upstream.end_time is not None and request.end_time is not None
    assert upstream.end_time <= request.end_time
    assert_no_secret(got, alice_key[1], fake.api_key)


@pytest.fixture
def second(catalog: Any, fake: FakeOpenAI) -> Provider:
    """A second deployment of gpt-4o-mini on the fake, tried after the first (before the gateway starts)."""
    provider = Provider(name="second", kind="openai", base_url=fake.base_url)
    provider.set_api_key(fake.api_key)
    provider.save()
    Deployment.objects.create(
        model=catalog["mini"], provider=provider, provider_model="gpt-4o-mini", priority=1
    )
    return provider


def test_a_fallback_shows_one_upstream_span_per_attempt(
    spans: InMemorySpanExporter, second: Provider, sdk: openai.OpenAI, fake: FakeOpenAI
) -> None:
    fake.fail_next(500)
    assert sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices  # type: ignore[arg-type]
    got = finished(spans, 5)
    request, children = the_request_and_children(got)
    assert attrs(request)["http.response.status_code"] == 200
    first, retry = sorted(children["upstream"], key=lambda s: attrs(s)["llmc.attempt"])
    assert (attrs(first)["llmc.attempt"], attrs(retry)["llmc.attempt"]) == (1, 2)
    assert attrs(first)["llmc.provider"] == "local"
    assert (
        attrs(first)["http.response.status_code"] == 500
    )  # the provider's status (the gateway's would be 502)
    assert attrs(first)["error.type"] == "upstream_server_error"
    assert first.status.status_code is StatusCode.ERROR
    assert attrs(retry)["llmc.provider"] == "second"
    assert attrs(retry)["gen_ai.provider.name"] == "openai"
    assert attrs(retry)["http.response.status_code"] == 200
    assert "error.type" not in attrs(retry)
    assert attrs(request)["llmc.provider"] == "second"
    assert len(children["admission"]) == len(children["settlement"]) == 1


def test_a_refused_request_is_a_request_span_with_its_status(
    spans: InMemorySpanExporter, gateway: LiveServer, alice_key: tuple[User, str]
) -> None:
    headers = {"Authorization": f"Bearer {alice_key[1]}"}
    url = f"{gateway.url}/v1/chat/completions"
    assert (
        httpx.post(url, json={"model": "no-such-model", "messages": HELLO}, headers=headers).status_code
        == 404
    )
    got = finished(spans, 3)  # request, admission (which refused it), settlement (a usage event still)
    request, children = the_request_and_children(got)
    assert attrs(request)["http.response.status_code"] == 404
    assert request.status.status_code is StatusCode.UNSET  # a 4xx is the client's, not the server's error
    (admission,) = children["admission"]
    assert attrs(admission)["error.type"] == "model_not_found"
    assert "upstream" not in children
    # An unknown route is named by its method only (the path is the client's, unbounded).
    assert httpx.post(f"{gateway.url}/v1/no/such/route", json={}, headers=headers).status_code == 404
    unknown = [s for s in finished(spans, 4) if s.kind is SpanKind.SERVER and s is not request]
    assert [s.name for s in unknown] == ["POST"] and "http.route" not in attrs(unknown[0])
    assert_no_secret(list(spans.get_finished_spans()), alice_key[1])


def test_when_tracing_is_off_there_is_no_span_and_no_exporter(
    spans: InMemorySpanExporter, sdk: openai.OpenAI
) -> None:
    assert not tracing.setup()  # the environment asks for nothing: the previous set-up is shut down
    assert not tracing.enabled and tracing._provider is None and tracing._tracer is None
    assert tracing.span("admission") is tracing.NO_SPAN
    assert sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices  # type: ignore[arg-type]
    assert sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True).response.is_success  # type: ignore[arg-type]
    assert spans.get_finished_spans() == ()


class _Collector:
    """An OTLP/HTTP collector on loopback: keeps every decoded ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.path == "/v1/traces" and self.headers["content-type"] == "application/x-protobuf":
                    collector.requests.append(ExportTraceServiceRequest.FromString(body))
                    self.send_response(200)
                else:
                    self.send_response(404)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list[tuple[str, dict[str, Any]]]:
        """(span name, resource attributes) of everything received."""
        out = []
        for request in self.requests:
            for rs in request.resource_spans:
                resource = {a.key: a.value.string_value for a in rs.resource.attributes}
                out += [(s.name, resource) for ss in rs.scope_spans for s in ss.spans]
        return out


@pytest.fixture
def collector() -> Iterator[_Collector]:
    c = _Collector()
    yield c
    c.server.shutdown()
    c.server.server_close()


def test_the_otlp_endpoint_variable_turns_tracing_on_and_exports_over_http(
    no_otel_env: None,
    monkeypatch: pytest.MonkeyPatch,
    collector: _Collector,
    sdk: openai.OpenAI,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    try:
        assert tracing.setup()
        assert sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices  # type: ignore[arg-type]
        deadline = time.monotonic() + 10
        while len(collector.spans()) < 4 and time.monotonic() < deadline:
            tracing.force_flush()
            time.sleep(0.02)
    finally:
        tracing.shutdown()
    received = collector.spans()
    assert sorted(name for name, _ in received) == [
        "POST /v1/chat/completions",
        "admission",
        "settlement",
        "upstream",
    ]
    assert {resource["service.name"] for _, resource in received} == {"llm-control"}


def test_the_service_name_and_the_switches_come_from_the_environment(
    no_otel_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not tracing.wanted()
    monkeypatch.setenv("TRACING_ENABLED", "true")
    assert tracing.wanted()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")  # the standard kill switch wins
    assert not tracing.wanted()
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-eu")
    try:
        assert tracing.setup(exporter=InMemorySpanExporter())
        assert tracing._provider.resource.attributes["service.name"] == "gateway-eu"
    finally:
        tracing.shutdown()
