"""The hot path of one proxied call: authorise, route, call upstream, stream back, settle.

Both the ASGI handler (API clients) and the portal (signed-in users) call `proxy_call`, so a chat
turn in the browser is routed and accounted exactly like an API request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import httpx
import orjson

from config import logs, metrics, tracing
from gateway import routing, tokens
from gateway.catalog import DeploymentInfo, ModelInfo, Principal, Snapshot
from gateway.errors import GatewayError
from gateway.providers import adapter_for
from gateway.providers.base import ErrorKind, UnsupportedOperation
from gateway.sse import StreamMeter, Usage, usage_from
from gateway.state import GatewayState
from gateway.upstream import UpstreamResponse
from quotas.engine import Demand, Reservation, RuleInfo
from quotas.services import usage_admit, usage_settle

logger = logging.getLogger(__name__)

MILLION = Decimal(1_000_000)
STREAMING_ENDPOINTS = frozenset({"chat/completions", "completions", "responses"})
USAGE_OPTION_ENDPOINTS = frozenset({"chat/completions", "completions"})
MAX_ERROR_BODY = 64 * 1024


class Sink(Protocol):
    """Where the response goes: an ASGI connection, or the portal's stream."""

    started: bool

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...

    async def send(self, chunk: bytes, *, more: bool) -> None: ...


@dataclass
class Call:
    """One request through the gateway and what it used."""

    endpoint: str
    body: dict[str, Any]
    principal: Principal
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    ts: float = field(default_factory=time.time)
    model: ModelInfo | None = None
    deployment: DeploymentInfo | None = None
    status: int = 0
    error_kind: str = ""
    streamed: bool = False
    first_byte_at: float | None = None
    usage: Usage | None = None
    tokens_estimated: bool = False
    counted: bool = False
    served_model: ModelInfo | None = None
    images: int = 0
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    prompt_id: str = ""  # a library prompt called by id (prompts.gateway.apply_prompt)
    prompt_version: int | None = None

    def event(self) -> dict[str, Any]:
        """The usage event for the ledger (JSON-safe)."""
        usage = self.usage or Usage()
        cost = Decimal(0)
        m = self.served_model or self.model
        if m is not None:
            uncached = max(usage.prompt_tokens - usage.cached_tokens, 0)
            cost = (
                Decimal(uncached) * m.input_per_mtok
                + Decimal(usage.cached_tokens) * m.cached_input_per_mtok
                + Decimal(usage.completion_tokens) * m.output_per_mtok
            ) / MILLION + Decimal(self.images) * m.per_image
        now = time.perf_counter()
        return {
            "request_id": self.request_id,
            "ts": self.ts,
            "key_id": self.principal.key_id,
            "user_id": self.principal.user_id,
            "group_ids": sorted(self.principal.group_ids),
            "app_id": self.principal.app_id,
            "endpoint": self.endpoint,
            "provider": self.deployment.provider.name if self.deployment else "",
            "deployment": self.deployment.name if self.deployment else "",
            "model": m.name if m else str(self.body.get("model") or "")[:128],
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "cached_tokens": usage.cached_tokens,
            "images": self.images,
            "audio_seconds": "0",
            "cost_usd": str(cost),
            "latency_ms": int((now - self.started) * 1000),
            "ttft_ms": int((self.first_byte_at - self.started) * 1000) if self.first_byte_at else None,
            "status": self.status,
            "error_kind": self.error_kind,
            "streamed": self.streamed,
            "tokens_estimated": self.tokens_estimated,
            "counted": self.counted,
            "prompt_id": self.prompt_id,
            "prompt_version": self.prompt_version,
        }


def resolve_model(snapshot: Snapshot, principal: Principal, name: Any) -> ModelInfo:
    """The catalogue entry ``name`` if the principal may use it: 404 unknown, 403 not allowed."""
    if not isinstance(name, str) or not name:
        raise GatewayError(400, "You must provide a model parameter.", code="missing_model", param="model")
    model = snapshot.models.get(name)
    if model is None:
        raise GatewayError(
            404,
            f"The model `{name[:100]}` does not exist or you do not have access to it.",
            code="model_not_found",
        )
    if not principal.may_use(model):
        raise GatewayError(
            403, f"You are not allowed to use the model `{name}`.", code="model_not_allowed", param="model"
        )
    return model


def transport_error(exc: httpx.TransportError) -> GatewayError:
    """504 for a timeout, 502 for a connection that failed (whichever transport raised it).

    httpx-aiohttp maps aiohttp's connection errors to ConnectTimeout, so the cause decides.
    """
    import aiohttp

    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientConnectorError) or isinstance(exc, httpx.ConnectError):
        timed_out = False
    elif isinstance(cause, (aiohttp.ServerTimeoutError, TimeoutError)):
        timed_out = True
    elif isinstance(cause, aiohttp.ClientError):
        timed_out = False
    else:
        timed_out = isinstance(exc, httpx.TimeoutException)
    if timed_out:
        return GatewayError(
            504, "The provider did not answer in time.", code="upstream_timeout", type="timeout"
        )
    return GatewayError(
        502, "The provider could not be reached.", code="upstream_unreachable", type="upstream_error"
    )


def demand_for(call: Call, model: ModelInfo, rules: tuple[RuleInfo, ...]) -> Demand:
    """The worst case of ``call``: prompt tokens plus the output it may ask for, capped by the model."""
    body = call.body
    n = body.get("n", 1)
    images = (n if isinstance(n, int) and n > 0 else 1) if call.endpoint == "images/generations" else 0
    if not any(rule.metric in ("tokens", "cost_usd") for rule in rules):
        return Demand(images=images)  # counting the prompt costs CPU: only when a rule needs it
    prompt = tokens.count_prompt(call.endpoint, body)
    output = 0
    if call.endpoint in STREAMING_ENDPOINTS:
        asked = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
        cap = model.max_output_tokens
        output = min(asked, cap) if isinstance(asked, int) and asked > 0 else cap
    cost = (prompt * float(model.input_per_mtok) + output * float(model.output_per_mtok)) / 1e6
    return Demand(tokens=prompt + output, cost_usd=cost + images * float(model.per_image), images=images)


async def proxy_call(state: GatewayState, call: Call, sink: Sink) -> None:
    """Serve ``call`` into ``sink``; always leaves exactly one usage event."""
    reservation = Reservation()
    try:
        sink = await logs.content_sink(call, sink)  # bodies of LOG_CONTENT_GROUPS members only
        snapshot = await state.get_snapshot()
        with tracing.span("admission"):
            call.model = resolve_model(snapshot, call.principal, call.body.get("model"))
            if snapshot.rules:
                demand = demand_for(call, call.model, snapshot.rules)
                reservation = await usage_admit(
                    state=state,
                    rules=snapshot.rules,
                    principal=call.principal,
                    model=call.model.name,
                    demand=demand,
                )
                call.extra_headers += reservation.headers
        call.counted = True
        await _serve(state, call, sink)
        call.status = call.status or 200
    except GatewayError as exc:
        call.status, call.error_kind = exc.status, exc.code or exc.type or "error"
        raise
    except asyncio.CancelledError:
        # The client went away: account for what was already delivered, then let the cancel go on.
        call.status, call.error_kind = 499, "client_disconnected"
        raise
    finally:
        # Its own task, shielded and tracked: neither a disconnect nor a server shutdown arriving
        # now may cut the settlement short (shutdown waits for it before the last flush).
        event = call.event()
        metrics.call_finished(call, event)
        settle = usage_settle(state=state, reservation=reservation, event=event)
        await asyncio.shield(state.spawn(tracing.traced("settlement", settle)))


async def _serve(state: GatewayState, call: Call, sink: Sink) -> None:
    assert call.model is not None
    stream = bool(call.body.get("stream")) and call.endpoint in STREAMING_ENDPOINTS
    call.streamed = stream
    strip_usage = False
    if stream and call.endpoint in USAGE_OPTION_ENDPOINTS:
        options = call.body.get("stream_options")
        asked = isinstance(options, dict) and bool(options.get("include_usage"))
        if not asked:
            call.body["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
            strip_usage = True
    snapshot = await state.get_snapshot()
    last_error: GatewayError | None = None
    tried = 0
    attempts = routing.plan(snapshot, call.principal, call.model)
    for model, dep in attempts:
        breaker = routing.breaker(dep.id)
        now = time.monotonic()
        if not breaker.allow(now):
            continue
        metrics.upstream_attempt(dep, breaker.state)  # a probe: half open
        adapter = adapter_for(dep.provider.kind)
        try:
            request = adapter.build(call.endpoint, dep, {**call.body, "model": dep.provider_model}, call)
        except UnsupportedOperation:
            last_error = GatewayError(400, f"The model `{model.name}` does not support /{call.endpoint}.",
                                      code="unsupported_endpoint")  # fmt: skip
            continue
        tried += 1
        call.deployment, call.served_model = dep, model
        started = time.perf_counter()
        try:
            # The total timeout covers the whole call; before the first byte a timeout moves on.
            async with asyncio.timeout(dep.total_timeout):
                attempt = _attempt(state, call, sink, adapter, dep, request, stream, strip_usage)
                outcome = await tracing.upstream(call, dep, tried, attempt)
        except TimeoutError:
            if sink.started:  # mid-stream: the client has a truncated answer, accounted as such
                call.status, call.error_kind = 504, "upstream_timeout_mid_stream"
                breaker.failure(time.monotonic())
                metrics.upstream_attempt(dep, breaker.state, "timeout_mid_stream")
                await sink.send(
                    stream_error("The provider's stream stalled.", "upstream_timeout"), more=False
                )
                return
            outcome = _failed(GatewayError(504, "The provider did not answer in time.", code="upstream_timeout",
                                           type="timeout"), ErrorKind.TIMEOUT)  # fmt: skip
        if outcome is None:
            breaker.success(time.perf_counter() - started)
            metrics.upstream_attempt(dep, breaker.state)
            return
        error, kind = outcome, outcome.kind
        last_error = error
        if kind.retryable:
            retry_after = _retry_after(error)
            breaker.failure(time.monotonic(), retry_after if kind is ErrorKind.RATE_LIMITED else None)
            metrics.upstream_attempt(dep, breaker.state, kind)
            continue
        if kind in (ErrorKind.AUTH,):
            breaker.failure(time.monotonic())
        metrics.upstream_attempt(dep, breaker.state, kind)
        raise error
    if last_error is not None:
        raise last_error
    blocked = [routing.breaker(d.id).blocked_until for _, d in attempts]
    wait = min(blocked) - time.monotonic() if blocked else 0
    if wait > 0:  # every deployment asked us to wait (429 with Retry-After): pass that on
        raise GatewayError(429, "The provider is rate limiting this model; retry after the indicated time.",
                           code="upstream_rate_limited", type="requests", headers={"retry-after": str(int(wait) + 1)})  # fmt: skip
    raise GatewayError(
        503, f"Every deployment of `{call.model.name}` is out of rotation after repeated failures; try again shortly.",
        code="deployments_unavailable", type="service_unavailable", headers={"retry-after": "5"},
    )  # fmt: skip


def stream_error(message: str, code: str) -> bytes:
    """An SSE event that ends a broken stream: the openai SDK raises APIError on an `error` object."""
    payload = {"error": {"message": message, "type": "upstream_error", "param": None, "code": code}}
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _retry_after(error: GatewayError) -> float | None:
    value = error.headers.get("retry-after")
    try:
        return float(value) if value else None
    except ValueError:
        return None


class AttemptFailed(GatewayError):
    """An attempt that failed before anything reached the client; `kind` decides whether to move on."""

    kind: ErrorKind = ErrorKind.SERVER
    upstream_status = 0  # the provider's HTTP status, when it answered (for tracing)


def _failed(error: GatewayError, kind: ErrorKind) -> AttemptFailed:
    failed = AttemptFailed(error.status, error.message, code=error.code, param=error.param, type=error.type,
                           headers=dict(error.headers))  # fmt: skip
    failed.kind = kind
    return failed


def _transport_failed(dep: DeploymentInfo, exc: httpx.TransportError, what: str) -> AttemptFailed:
    """An attempt whose connection failed or timed out before anything reached the client."""
    error = transport_error(exc)
    logger.warning("upstream %s %s: %s", dep.name, what, error.code)
    return _failed(error, ErrorKind.TIMEOUT if error.status == 504 else ErrorKind.CONNECTION)


# Headers of every upstream call, under the adapter's own. `identity`: the gateway reads what it
# relays (usage, token counts), so it never asks for a compressed body.
UPSTREAM_HEADERS = {"accept": "*/*", "accept-encoding": "identity", "user-agent": "llm-control-gateway"}


async def _attempt(
    state: GatewayState,
    call: Call,
    sink: Sink,
    adapter: Any,
    dep: DeploymentInfo,
    request: Any,
    stream: bool,
    strip_usage: bool,
) -> AttemptFailed | None:
    """One upstream call. None when the answer was relayed; the failure (not raised) otherwise."""
    # Straight to the pool (gateway.upstream): nothing of a client's cookies, auth or redirects applies.
    sent = state.upstream.send(
        request.method, request.url, {**UPSTREAM_HEADERS, **request.headers}, request.body,
        read_timeout=dep.chunk_timeout or dep.total_timeout, connect_timeout=dep.connect_timeout,
    )  # fmt: skip
    started = time.monotonic()
    try:
        if dep.first_byte_timeout:  # asyncio.timeout: Python 3.11's wait_for costs a task
            async with asyncio.timeout(dep.first_byte_timeout):
                upstream = await sent
        else:
            upstream = await sent
    except TimeoutError:
        return _failed(GatewayError(504, "The provider did not start answering in time.", code="upstream_timeout",
                                    type="timeout"), ErrorKind.TIMEOUT)  # fmt: skip
    except httpx.TransportError as exc:
        return _transport_failed(dep, exc, "failed")
    chunks = upstream.aiter_raw()
    first = b""
    if upstream.status_code < 400:
        # The first byte of the body too must come within first_byte_timeout: until it has
        # arrived nothing reached the client, so a timeout still moves on to the next deployment.
        left = (dep.first_byte_timeout - (time.monotonic() - started)) if dep.first_byte_timeout else None
        try:
            if left is None:
                first = await anext(chunks, b"")
            else:
                async with asyncio.timeout(left):
                    first = await anext(chunks, b"")
        except TimeoutError:
            await upstream.aclose()
            return _failed(GatewayError(504, "The provider did not start answering in time.", code="upstream_timeout",
                                        type="timeout"), ErrorKind.TIMEOUT)  # fmt: skip
        except httpx.TransportError as exc:
            await upstream.aclose()
            return _failed(transport_error(exc), ErrorKind.CONNECTION)
    body = _Prefetched(first, chunks)
    try:
        if upstream.status_code >= 400:
            error_body = await _read_bounded(upstream)
            error, kind = adapter.error_for(upstream.status_code, error_body, upstream.headers, dep)
            failed = _failed(error, kind)
            failed.upstream_status = upstream.status_code
            return failed
        if stream and not adapter.passthrough:
            await _relay_stream(
                call, upstream, body, sink, adapter.stream_decoder(call.endpoint, dep, call, strip_usage)
            )
            return None
        if stream and "text/event-stream" in upstream.headers.get("content-type", ""):
            await _relay_stream(call, upstream, body, sink, StreamMeter(strip_usage_chunk=strip_usage))
            return None
        await _relay_body(call, upstream, body, sink, adapter, dep)
        return None
    except httpx.TransportError as exc:
        if sink.started:
            raise
        # A body (answer or error) that broke off or stalled before anything reached the client:
        # as if no answer had come, so the next deployment is tried.
        return _transport_failed(dep, exc, "failed mid-body")
    finally:
        await upstream.aclose()


class _Prefetched:
    """The upstream body with its first chunk already read."""

    def __init__(self, first: bytes, rest: Any) -> None:
        self.first, self.rest = first, rest

    async def __aiter__(self) -> Any:
        if self.first:
            yield self.first
        async for chunk in self.rest:
            yield chunk

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self])


async def _read_bounded(upstream: UpstreamResponse) -> bytes:
    data = b""
    async for chunk in upstream.aiter_raw():
        data += chunk
        if len(data) > MAX_ERROR_BODY:
            break
    return data


def _response_headers(call: Call, content_type: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", content_type.encode()),
        (b"x-request-id", call.request_id.encode()),
        *call.extra_headers,
    ]


async def _relay_body(
    call: Call,
    upstream: UpstreamResponse,
    body_chunks: _Prefetched,
    sink: Sink,
    adapter: Any,
    dep: DeploymentInfo,
) -> None:
    raw = await body_chunks.read()
    body, parsed = adapter.decode(call.endpoint, dep, raw, call)
    if isinstance(parsed, dict):
        call.usage = usage_from(parsed.get("usage"))
        if call.endpoint == "images/generations" and isinstance(parsed.get("data"), list):
            call.images = len(parsed["data"])
    if call.usage is None and call.endpoint in ("chat/completions", "completions", "responses", "embeddings"):
        call.usage = Usage(prompt_tokens=tokens.count_prompt(call.endpoint, call.body))
        if isinstance(parsed, dict):
            call.usage.completion_tokens = tokens.count_text(_text_of(parsed))
        call.tokens_estimated = True
    call.status = upstream.status_code
    content_type = (
        upstream.headers.get("content-type", "application/json")
        if adapter.passthrough
        else "application/json"
    )
    headers = _response_headers(call, content_type)
    headers.append((b"content-length", str(len(body)).encode()))
    await sink.start(upstream.status_code, headers)
    call.first_byte_at = time.perf_counter()
    await sink.send(body, more=False)


def _text_of(parsed: dict[str, Any]) -> str:
    parts = []
    for choice in parsed.get("choices") or ():
        if isinstance(choice, dict):
            message = choice.get("message") or {}
            parts.append(
                str(choice.get("text") or (message.get("content") if isinstance(message, dict) else "") or "")
            )
    return "".join(parts)


async def _relay_stream(
    call: Call, upstream: UpstreamResponse, body_chunks: _Prefetched, sink: Sink, meter: Any
) -> None:
    headers = _response_headers(call, "text/event-stream; charset=utf-8")
    headers += [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
    call.status = upstream.status_code
    await sink.start(upstream.status_code, headers)
    try:
        async for chunk in body_chunks:
            out = meter.feed(chunk)
            if out:
                if call.first_byte_at is None:
                    call.first_byte_at = time.perf_counter()
                await sink.send(out, more=True)
        tail = meter.finish()
        await sink.send(tail, more=False)
    except httpx.HTTPError:
        # Headers are gone already: an error event tells the client (the SDKs raise on it) and the
        # call is accounted for what was sent.
        call.status, call.error_kind = 502, "upstream_stream_broken"
        await sink.send(stream_error("The provider's stream broke off.", "upstream_stream_broken"), more=True)
        raise GatewayError(502, "The provider's stream broke off.", code="upstream_stream_broken") from None
    finally:
        call.usage = meter.usage
        if call.usage is None:
            call.usage = Usage(
                prompt_tokens=tokens.count_prompt(call.endpoint, call.body),
                completion_tokens=tokens.count_text(meter.completion_text()),
            )
            call.tokens_estimated = True
