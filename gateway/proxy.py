"""The hot path of one proxied call: authorise, route, call upstream, stream back, settle.

Both the ASGI handler (API clients) and the portal (signed-in users) call `proxy_call`, so a chat
turn in the browser is routed and accounted exactly like an API request.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import httpx
import orjson

from gateway import tokens
from gateway.catalog import DeploymentInfo, ModelInfo, Principal, Snapshot
from gateway.errors import GatewayError
from gateway.providers import adapter_for
from gateway.providers.base import ErrorKind, UnsupportedOperation, kind_for_status
from gateway.sse import StreamMeter, Usage, usage_from
from gateway.state import GatewayState
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
    images: int = 0
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def event(self) -> dict[str, Any]:
        """The usage event for the ledger (JSON-safe)."""
        usage = self.usage or Usage()
        cost = Decimal(0)
        if self.model is not None:
            m = self.model
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
            "model": self.model.name if self.model else str(self.body.get("model") or "")[:128],
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


def candidates(model: ModelInfo) -> list[DeploymentInfo]:
    """Deployments in the order to try: by priority, weighted-random within one priority."""
    ordered: list[DeploymentInfo] = []
    by_priority: dict[int, list[DeploymentInfo]] = {}
    for dep in model.deployments:
        by_priority.setdefault(dep.priority, []).append(dep)
    for priority in sorted(by_priority):
        group = list(by_priority[priority])
        while group:
            pick = (
                random.choices(group, weights=[max(d.weight, 0) or 1 for d in group])[0]
                if len(group) > 1
                else group[0]
            )
            ordered.append(pick)
            group.remove(pick)
    return ordered


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


def _upstream_error(
    status: int, body: bytes, kind: ErrorKind, dep: DeploymentInfo, headers: httpx.Headers
) -> GatewayError:
    """The client-facing error for a failed upstream answer (scrubbed of anything internal)."""
    adapter = adapter_for(dep.provider.kind)
    message, code, param, etype = "", None, None, None
    try:
        err = orjson.loads(body).get("error")
        if isinstance(err, dict):
            message, code, param, etype = (
                str(err.get("message") or ""),
                err.get("code"),
                err.get("param"),
                err.get("type"),
            )
        elif isinstance(err, str):
            message = err
    except (orjson.JSONDecodeError, AttributeError):
        message = body[:500].decode("utf-8", "replace")
    message = adapter.scrub(message or f"The provider answered {status}.", dep)
    code = adapter.scrub(str(code), dep) if code is not None else None
    extra = {}
    if kind is ErrorKind.AUTH:
        return GatewayError(502, "The provider refused the gateway's credential; an administrator must fix it.",
                            code="upstream_auth_error", type="upstream_error")  # fmt: skip
    if kind is ErrorKind.SERVER:
        return GatewayError(
            502, f"The provider failed: {message}", code="upstream_error", type="upstream_error"
        )
    if kind is ErrorKind.RATE_LIMITED and headers.get("retry-after"):
        extra["retry-after"] = headers["retry-after"]
    return GatewayError(status, message, code=code, param=param, type=etype, headers=extra)


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
        snapshot = await state.get_snapshot()
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
        await asyncio.shield(
            state.spawn(usage_settle(state=state, reservation=reservation, event=call.event()))
        )


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
    deps = candidates(call.model)
    if not deps:
        raise GatewayError(
            503, f"No deployment can serve `{call.model.name}` right now.", code="no_deployment"
        )
    last_error: GatewayError | None = None
    for attempt, dep in enumerate(deps):
        try:
            request = adapter_for(dep.provider.kind).build(
                call.endpoint, dep, orjson.dumps({**call.body, "model": dep.provider_model})
            )
        except UnsupportedOperation:
            last_error = GatewayError(400, f"The model `{call.model.name}` does not support /{call.endpoint}.",
                                      code="unsupported_endpoint")  # fmt: skip
            continue
        call.deployment = dep
        timeout = httpx.Timeout(dep.provider.timeout, connect=dep.provider.connect_timeout)
        try:
            upstream = await state.http.send(
                state.http.build_request(request.method, request.url, headers=request.headers, content=request.body, timeout=timeout),
                stream=True,
            )  # fmt: skip
        except httpx.TransportError as exc:
            last_error = transport_error(exc)
            logger.warning("upstream %s failed: %s", dep.name, last_error.code)
            continue
        try:
            if upstream.status_code >= 400:
                body = await _read_bounded(upstream)
                kind = kind_for_status(upstream.status_code)
                last_error = _upstream_error(upstream.status_code, body, kind, dep, upstream.headers)
                if kind.retryable and attempt + 1 < len(deps):
                    continue
                raise last_error
            if stream and "text/event-stream" in upstream.headers.get("content-type", ""):
                await _relay_stream(call, upstream, sink, strip_usage)
            else:
                await _relay_body(call, upstream, sink)
            return
        finally:
            await upstream.aclose()
    assert last_error is not None
    raise last_error


async def _read_bounded(upstream: httpx.Response) -> bytes:
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


async def _relay_body(call: Call, upstream: httpx.Response, sink: Sink) -> None:
    body = await upstream.aread()
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
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
    headers = _response_headers(call, upstream.headers.get("content-type", "application/json"))
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


async def _relay_stream(call: Call, upstream: httpx.Response, sink: Sink, strip_usage: bool) -> None:
    meter = StreamMeter(strip_usage_chunk=strip_usage)
    headers = _response_headers(call, upstream.headers.get("content-type", "text/event-stream"))
    headers += [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
    call.status = upstream.status_code
    await sink.start(upstream.status_code, headers)
    try:
        async for chunk in upstream.aiter_raw():
            out = meter.feed(chunk)
            if out:
                if call.first_byte_at is None:
                    call.first_byte_at = time.perf_counter()
                await sink.send(out, more=True)
        tail = meter.finish()
        await sink.send(tail, more=False)
    except httpx.HTTPError:
        # Headers are gone already: the client sees a truncated stream; we account what was sent.
        call.status, call.error_kind = 502, "upstream_stream_broken"
        raise GatewayError(502, "The provider's stream broke off.", code="upstream_stream_broken") from None
    finally:
        call.usage = meter.usage
        if call.usage is None:
            call.usage = Usage(
                prompt_tokens=tokens.count_prompt(call.endpoint, call.body),
                completion_tokens=tokens.count_text(meter.completion_text()),
            )
            call.tokens_estimated = True
