"""Optional OpenTelemetry tracing of the gateway path.

One server span per proxied request (``POST /v1/chat/completions``), with children ``admission``
(authorise and reserve), ``upstream`` (one per attempt, so a fallback shows two) and ``settlement``
(which may end after the response, in its own task: tasks copy the context, so it keeps its parent).
An incoming W3C ``traceparent`` is honoured. Spans go through a BatchSpanProcessor to an OTLP/HTTP
exporter configured by the standard ``OTEL_*`` variables; ``OTEL_SERVICE_NAME`` defaults to
``llm-control``.

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) or
``TRACING_ENABLED`` is set, and the ``otel`` extra is installed. Off, every hook below tests one
module global and returns a shared no-op (or the coroutine it was given), and nothing of
OpenTelemetry is imported. Attributes name the key by id and the user by id, never the key itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

from django.core.exceptions import ImproperlyConfigured

from config import lifespan
from config.env import envbool

logger = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_SERVICE_NAME = "llm-control"

# gen_ai.provider.name (current GenAI conventions) and gen_ai.system (its deprecated predecessor,
# still what many backends read) for each provider kind; other kinds are named as they are.
_GENAI_PROVIDER = {"azure_openai": "azure.ai.openai", "gemini": "gcp.gemini", "bedrock": "aws.bedrock"}
_GENAI_SYSTEM = {"azure_openai": "az.ai.openai", "gemini": "gemini", "bedrock": "aws.bedrock"}
_GENAI_OPERATION = {
    "chat/completions": "chat",
    "responses": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}

enabled = False
_provider: Any = None  # the SDK's TracerProvider while enabled
_tracer: Any = None


class _NoSpan:
    """What the hooks hand out while tracing is off: a context manager that does nothing."""

    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def set_status(self, status: Any) -> None:
        return None


NO_SPAN = _NoSpan()


def wanted() -> bool:
    """Whether the environment asks for tracing (an OTLP endpoint or TRACING_ENABLED)."""
    if envbool("OTEL_SDK_DISABLED"):
        return False
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    return bool(endpoint) or envbool("TRACING_ENABLED")


def setup(*, exporter: Any = None) -> bool:
    """Start tracing if the environment asks for it (or ``exporter`` is given: tests); True when on.

    Called once per process at start (config/asgi.py); calling it again replaces the previous set-up.
    """
    global enabled, _provider, _tracer
    shutdown()
    if exporter is None and not wanted():
        return False
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise ImproperlyConfigured(
            "Tracing is configured (OTEL_EXPORTER_OTLP_ENDPOINT or TRACING_ENABLED) but OpenTelemetry "
            "is not installed: pip install 'llm-control[otel]'."
        ) from None
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # endpoint, headers, timeout from the OTEL_EXPORTER_OTLP_* variables
    # Given attributes win over OTEL_SERVICE_NAME in Resource.create: read it here for the default.
    service = os.environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    # Batched in the SDK's own thread: ending a span only queues it, the export never blocks a request.
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _provider, _tracer = provider, provider.get_tracer("llm-control")
    enabled = True
    logger.info("OpenTelemetry tracing on (service.name=%s)", service)
    return True


def shutdown() -> None:
    """Stop tracing: flush and close the exporter. The hooks are no-ops afterwards."""
    global enabled, _provider, _tracer
    provider, enabled, _provider, _tracer = _provider, False, None, None
    if provider is not None:
        provider.shutdown()


def force_flush(timeout_millis: int = 10_000) -> None:
    """Export every span ended so far (blocking)."""
    if _provider is not None:
        _provider.force_flush(timeout_millis)


async def _flush_at_exit() -> None:
    # A graceful stop exports what is queued before the process goes (its thread would be killed).
    if _provider is not None:
        await asyncio.to_thread(force_flush)


lifespan.on_shutdown(_flush_at_exit)


# --- hooks of the hot path ------------------------------------------------------------------------


class _Request:
    __slots__ = ("span", "token", "request_id")

    def __init__(self, span: Any, token: Any, request_id: str) -> None:
        self.span, self.token, self.request_id = span, token, request_id


def request_start(scope: dict[str, Any], request_id: str) -> _Request | None:
    """Open the server span of one proxied request and make it current (None when tracing is off)."""
    if not enabled:
        return None
    from opentelemetry import context, propagate, trace

    carrier = {}
    for name, value in scope["headers"]:
        if name in (b"traceparent", b"tracestate"):
            carrier[name.decode()] = value.decode("latin-1")
    parent = propagate.extract(carrier) if carrier else None
    method, path = scope["method"], scope["path"]
    route = _route_of(path)
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.path": path,
        "llmc.request_id": request_id,
    }
    if route:
        attributes["http.route"] = route
    span = _tracer.start_span(
        f"{method} {route}" if route else method,
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes=attributes,
    )
    token = context.attach(trace.set_span_in_context(span))
    return _Request(span, token, request_id)


def request_end(request: _Request | None, status: int, call: Any) -> None:
    """Close the request span: status and what ``call`` (a `gateway.proxy.Call`, or None) used."""
    if request is None:
        return
    from opentelemetry import context
    from opentelemetry.trace import Status, StatusCode

    span = request.span
    try:
        if call is not None:
            status = status or call.status
            span.set_attributes(_call_attributes(call))
        if status:
            span.set_attribute("http.response.status_code", status)
        if status >= 500 or not status:
            kind = (call.error_kind if call is not None else "") or str(status or "cancelled")
            span.set_attribute("error.type", kind)
            span.set_status(Status(StatusCode.ERROR))
        elif call is not None and call.error_kind:
            span.set_attribute("error.type", call.error_kind)
    finally:
        span.end()
        context.detach(request.token)


def _call_attributes(call: Any) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    principal = call.principal
    if principal.key_id is not None:
        attributes["llmc.key_id"] = principal.key_id
    if principal.user_id is not None:
        attributes["user.id"] = str(principal.user_id)
    operation = _GENAI_OPERATION.get(call.endpoint)
    if operation:
        attributes["gen_ai.operation.name"] = operation
    requested = call.body.get("model")
    if isinstance(requested, str) and requested:
        attributes["gen_ai.request.model"] = requested[:128]
    served = call.served_model or call.model
    if served is not None:
        attributes["llmc.model"] = served.name
    if call.deployment is not None:
        attributes.update(_provider_attributes(call.deployment))
        attributes["gen_ai.response.model"] = call.deployment.provider_model
    if call.usage is not None:
        attributes["gen_ai.usage.input_tokens"] = call.usage.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = call.usage.completion_tokens
        attributes["llmc.tokens_estimated"] = call.tokens_estimated
    return attributes


def _provider_attributes(dep: Any) -> dict[str, Any]:
    kind = dep.provider.kind
    return {
        "gen_ai.provider.name": _GENAI_PROVIDER.get(kind, kind),
        "gen_ai.system": _GENAI_SYSTEM.get(kind, kind),
        "llmc.provider": dep.provider.name,
        "llmc.deployment": dep.name,
    }


def span(name: str) -> Any:
    """A child span of the current request as a context manager (a shared no-op when off)."""
    if not enabled:
        return NO_SPAN
    return _child(name, {})


def traced(name: str, coro: Coroutine[Any, Any, T]) -> Coroutine[Any, Any, T]:
    """``coro`` run inside a child span ``name`` (``coro`` itself when tracing is off).

    For work handed to another task (settlement): the span opens when the task runs, under the
    span that was current where the task was created.
    """
    if not enabled:
        return coro
    return _traced(name, {}, coro)


def upstream(call: Any, dep: Any, attempt: int, coro: Coroutine[Any, Any, Any]) -> Coroutine[Any, Any, Any]:
    """``coro`` (one upstream attempt of ``call`` on ``dep``) inside an ``upstream`` span."""
    if not enabled:
        return coro
    attributes = {
        **_provider_attributes(dep),
        "llmc.attempt": attempt,
        "gen_ai.request.model": dep.provider_model,
    }
    return _upstream(call, attributes, coro)


async def _traced(name: str, attributes: dict[str, Any], coro: Coroutine[Any, Any, T]) -> T:
    with _child(name, attributes):
        return await coro


async def _upstream(call: Any, attributes: dict[str, Any], coro: Coroutine[Any, Any, Any]) -> Any:
    from opentelemetry.trace import Status, StatusCode

    with _child("upstream", attributes, client=True) as current:
        outcome = await coro  # None: relayed (call.status is the upstream's); else the failure, not raised
        if outcome is None:
            current.set_attribute("http.response.status_code", call.status)
        else:
            if outcome.upstream_status:  # else no answer: a timeout or a connection error
                current.set_attribute("http.response.status_code", outcome.upstream_status)
            current.set_attribute("llmc.gateway_status", outcome.status)
            current.set_attribute("error.type", str(outcome.kind))  # an ErrorKind: upstream_server_error…
            current.set_status(Status(StatusCode.ERROR, outcome.code or None))
        return outcome


class _Child:
    """A child span of the current one, ended on exit (not made current: it has no children)."""

    __slots__ = ("span",)

    def __init__(self, span: Any) -> None:
        self.span = span

    def __enter__(self) -> Any:
        return self.span

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            _failed(self.span, exc)
        self.span.end()


def _child(name: str, attributes: dict[str, Any], *, client: bool = False) -> Any:
    from opentelemetry import trace

    if not trace.get_current_span().get_span_context().is_valid:
        # No request span here (the portal calls the proxy in process): no orphan spans either.
        return NO_SPAN
    kind = trace.SpanKind.CLIENT if client else trace.SpanKind.INTERNAL
    return _Child(_tracer.start_span(name, kind=kind, attributes=attributes))


def _failed(span: Any, exc: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode

    if isinstance(exc, asyncio.CancelledError):
        span.set_attribute("error.type", "cancelled")  # a timeout, or the client went away
        return
    code = getattr(exc, "code", None)  # a GatewayError: our own message, no secret in it
    span.set_attribute("error.type", str(code or type(exc).__qualname__))
    if code is None or getattr(exc, "status", 500) >= 500:
        span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, str(code) if code else None))


def _route_of(path: str) -> str | None:
    """The route template of ``path`` (low cardinality: span names and ``http.route``)."""
    from gateway.asgi import AZURE_ROUTE, GEMINI_ROUTE, MODEL_ROUTE, PROXY_ENDPOINTS

    if path.startswith("/v1/"):
        if path[4:] in PROXY_ENDPOINTS or path == "/v1/models":
            return path
        if MODEL_ROUTE.match(path):
            return "/v1/models/{model}"
    if path == "/anthropic/v1/messages":
        return path
    match = AZURE_ROUTE.match(path)
    if match:
        return f"/openai/deployments/{{deployment}}/{match['endpoint']}"
    match = GEMINI_ROUTE.match(path)
    if match:
        version = "v1beta" if path.startswith("/gemini/v1beta/") else "v1"
        return f"/gemini/{version}/models/{{model}}:{match['action']}"
    return None
