"""The lean ASGI handler of the proxy routes (/v1, /openai, /anthropic), mounted in front of Django.

Django's request cycle costs more than the whole proxy (see DESIGN.md), so these routes are served
by plain ASGI code that still uses Django's settings, apps and (on cold paths) the async ORM.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from django.conf import settings

from config import logs, metrics, tracing
from gateway import edge_anthropic, edge_gemini, entra, idempotency, keyevents, ssrf
from gateway.catalog import Principal
from gateway.errors import GatewayError
from gateway.proxy import Call, proxy_call
from gateway.state import GatewayState, get_state
from prompts.gateway import apply_prompt

logger = logging.getLogger(__name__)

PROXY_PREFIXES = ("/v1/", "/openai/", "/anthropic/", "/gemini/")
PROXY_ENDPOINTS = frozenset(
    {"chat/completions", "completions", "embeddings", "responses", "moderations", "images/generations"}
)
AZURE_ROUTE = re.compile(
    r"^/openai/deployments/(?P<deployment>[^/]+)/(?P<endpoint>chat/completions|completions|embeddings|images/generations)$"
)
GEMINI_ROUTE = re.compile(
    r"^/gemini/v1(?:beta)?/models/(?P<model>[^/:]+):(?P<action>generateContent|streamGenerateContent)$"
)
MODEL_ROUTE = re.compile(r"^/v1/models/(?P<model>.+)$")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def is_proxy_path(path: str) -> bool:
    """True for the paths this handler serves instead of Django."""
    # Speech to text takes multipart uploads: Django views of the transcription app serve it.
    if (
        path.startswith("/v1/audio/")
        or path == "/v1/transcriptions"
        or path.startswith("/v1/transcriptions/")
    ):
        return False
    return path.startswith(PROXY_PREFIXES) or path in ("/v1", "/openai", "/anthropic")


class ASGISink:
    """Writes the proxied response to the ASGI connection."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.status = 0
        self.finished = False

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started, self.status = True, status
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def send(self, chunk: bytes, *, more: bool) -> None:
        if self.finished:
            return
        self.finished = not more
        await self._send({"type": "http.response.body", "body": chunk, "more_body": more})

    async def error(self, error: GatewayError, request_id: str) -> None:
        """Send ``error`` as the whole response, or end a response already under way."""
        if self.started:
            await self.send(b"", more=False)
            return
        body = error.body()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode()),
        ]
        headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
        await self.start(error.status, headers)
        await self.send(body, more=False)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def presented_key(scope: Scope) -> str | None:
    """The key the client sent: `Authorization: Bearer`, Azure's `api-key`, or `x-api-key` on /anthropic.

    Never the query string: keys there end up in access logs.
    """
    auth = _header(scope, b"authorization")
    if auth is not None:
        scheme, _, token = auth.decode("latin-1").strip().partition(" ")
        # Not a list header (RFC 9110): two of them are ambiguous, refused whichever is valid.
        twice = sum(1 for name, _ in scope["headers"] if name == b"authorization") > 1
        if twice or scheme.lower() != "bearer" or not token.strip():
            raise GatewayError(
                401, "Malformed Authorization header: expected `Bearer <key>`.", code="invalid_api_key"
            )
        return token.strip()
    names: tuple[bytes, ...] = (b"api-key",)
    if scope["path"].startswith("/anthropic/"):
        names = (b"api-key", b"x-api-key")
    elif scope["path"].startswith("/gemini/"):
        names = (b"x-goog-api-key",)
    for name in names:
        value = _header(scope, name)
        if value is not None:
            return value.decode("latin-1").strip()
    return None


async def authenticate(state: GatewayState, scope: Scope) -> Principal:
    """The caller's principal, or a 401."""
    key = presented_key(scope)
    if not key:
        raise GatewayError(
            401,
            "You didn't provide an API key. Send it as `Authorization: Bearer <key>` (or the `api-key` header).",
            code="missing_api_key",
        )
    if entra.looks_like_jwt(key):  # an Entra ID access token (service-to-service), not an issued key
        return await state.entra.principal(key)
    principal = await state.principal_for_key(key)
    if principal is None:
        raise GatewayError(401, "Incorrect API key provided.", code="invalid_api_key")
    if principal.revoked:
        await keyevents.key_refused(state, principal, "revoked", scope)
        raise GatewayError(401, "This API key has been revoked.", code="key_revoked")
    if principal.expired():
        await keyevents.key_refused(state, principal, "expired", scope)
        raise GatewayError(401, "This API key has expired.", code="key_expired")
    return principal


async def read_body(scope: Scope, receive: Receive) -> bytes:
    """The request body, refusing (413) anything over GATEWAY_MAX_BODY_BYTES without buffering it."""
    limit = settings.GATEWAY_MAX_BODY_BYTES
    declared = _header(scope, b"content-length")
    too_large = GatewayError(413, f"Request body larger than {limit} bytes.", code="request_too_large")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def parse_json(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body, or a 400."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise GatewayError(
            400, "We could not parse the JSON body of your request. Send valid JSON.", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise GatewayError(400, "The request body must be a JSON object.", code="invalid_body")
    return body


def validate(endpoint: str, body: dict[str, Any]) -> None:
    """The few shape checks the gateway needs before it can route (the provider checks the rest)."""
    from gateway.limits import check_request  # imported here: the one hook of gateway/limits.py

    check_request(endpoint, body)
    if endpoint == "chat/completions":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise GatewayError(
                400, "`messages` must be a non-empty array.", code="invalid_value", param="messages"
            )
    if "stream" in body and not isinstance(body["stream"], bool):
        raise GatewayError(400, "`stream` must be a boolean.", code="invalid_type", param="stream")
    if (
        "stream_options" in body
        and body["stream_options"] is not None
        and not isinstance(body["stream_options"], dict)
    ):
        raise GatewayError(
            400, "`stream_options` must be an object.", code="invalid_type", param="stream_options"
        )


async def _json(send: Send, status: int, payload: Any, request_id: str) -> None:
    body = orjson.dumps(payload)
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", request_id.encode())],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})


async def list_models(state: GatewayState, call: Call, send: Send, only: str | None = None) -> None:
    """GET /v1/models (only what the caller may use) and GET /v1/models/{id}."""
    snapshot = await state.get_snapshot()
    visible = [m for m in snapshot.models.values() if call.principal.may_use(m) and m.deployments]
    entries = [
        {"id": m.name, "object": "model", "created": m.created, "owned_by": "llm-control"} for m in visible
    ]
    if only is None:
        payload: Any = {"object": "list", "data": entries}
    else:
        match = [e for e in entries if e["id"] == only]
        if not match:
            raise GatewayError(404, f"The model `{only[:100]}` does not exist or you do not have access to it.",
                               code="model_not_found")  # fmt: skip
        payload = match[0]
    call.status = 200
    await _json(send, 200, payload, call.request_id)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Serve one proxy request."""
    request_id = logs.new_request_id()
    log_token = logs.request_id.set(request_id)
    traced = tracing.request_start(scope, request_id)  # None unless tracing is on
    sink = ASGISink(send)
    path, method = scope["path"], scope["method"]
    state = get_state()
    call: Call | None = None
    try:
        principal = await authenticate(state, scope)
        endpoint, model_override, only_model = _route(method, path, scope)
        if endpoint == "models":
            call = Call(endpoint="models", body={}, principal=principal, request_id=request_id)
            try:
                await list_models(state, call, send, only_model)
            except GatewayError as exc:
                call.status, call.error_kind = exc.status, exc.code or "error"
                raise
            finally:
                event = call.event()
                metrics.call_finished(call, event)
                await state.buffer.put(event)
            return
        body = parse_json(await read_body(scope, receive))
        ssrf.check_body(body)  # a client never chooses the upstream
        if model_override is not None and not endpoint.startswith("gemini/"):
            body["model"] = model_override
        client_sink: Any = sink
        if endpoint.startswith("gemini/"):
            stream = endpoint == "gemini/stream"
            body = edge_gemini.to_openai(body, str(model_override), stream)
            client_sink = edge_gemini.GeminiSink(sink, str(model_override), stream)
            endpoint = "chat/completions"
        if endpoint == "anthropic/messages":
            endpoint, native = "chat/completions", body
            body = edge_anthropic.to_openai(native)
            client_sink = edge_anthropic.AnthropicSink(
                sink, str(native.get("model") or ""), bool(body.get("stream"))
            )
        call = Call(endpoint=endpoint, body=body, principal=principal, request_id=request_id)
        if "prompt" in body and endpoint in ("chat/completions", "responses"):
            await apply_prompt(state, call)  # a library prompt called by id, rendered before validation
        validate(endpoint, body)
        await idempotency.serve(state, scope, call, client_sink,
                                lambda out: _run_watching_disconnect(state, call, out, receive))  # fmt: skip
    except GatewayError as exc:
        if call is None or not call.status:  # refused before a usage event recorded it
            metrics.request_refused(path, exc.status)
        if path.startswith("/gemini/") and not sink.started:
            exc = GatewayError(
                exc.status,
                exc.message,
                code=exc.code,
                headers=exc.headers,
                body_override=edge_gemini.error_body(exc),
            )
        if path.startswith("/anthropic/") and not sink.started:
            exc = GatewayError(
                exc.status,
                exc.message,
                code=exc.code,
                headers=exc.headers,
                body_override=edge_anthropic.error_body(exc),
            )
        await sink.error(exc, request_id)
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("gateway failure on %s %s (%s)", method, path, request_id)
        if call is None:
            metrics.request_refused(path, 500)
        await sink.error(
            GatewayError(500, "The gateway failed to handle the request.", code="internal_error"), request_id
        )
    finally:
        tracing.request_end(traced, sink.status, call)
        logs.request_id.reset(log_token)


def _route(method: str, path: str, scope: Scope) -> tuple[str, str | None, str | None]:
    """(endpoint, model from the path, model id for GET /v1/models/{id})."""
    gemini = GEMINI_ROUTE.match(path)
    if gemini:
        if method != "POST":
            raise GatewayError(405, f"Method {method} not allowed on {path}.", code="method_not_allowed")
        return (
            ("gemini/stream" if gemini["action"] == "streamGenerateContent" else "gemini/generate"),
            gemini["model"],
            None,
        )
    if path == "/anthropic/v1/messages":
        if method != "POST":
            raise GatewayError(405, f"Method {method} not allowed on {path}.", code="method_not_allowed")
        return "anthropic/messages", None, None
    if path.startswith("/v1/"):
        endpoint = path[4:]
        if endpoint == "models" or MODEL_ROUTE.match(path):
            if method != "GET":
                raise GatewayError(405, f"Method {method} not allowed on {path}.", code="method_not_allowed")
            match = MODEL_ROUTE.match(path)
            return "models", None, match["model"] if match else None
        if endpoint in PROXY_ENDPOINTS:
            if method != "POST":
                raise GatewayError(405, f"Method {method} not allowed on {path}.", code="method_not_allowed")
            return endpoint, None, None
    match = AZURE_ROUTE.match(path)
    if match:
        if method != "POST":
            raise GatewayError(405, f"Method {method} not allowed on {path}.", code="method_not_allowed")
        query = scope.get("query_string", b"").decode("latin-1")
        if "api-version=" not in query:
            raise GatewayError(404, "Resource not found: the api-version query parameter is required.",
                               code="missing_api_version", param="api-version")  # fmt: skip
        return match["endpoint"], match["deployment"], None
    raise GatewayError(404, f"Unknown route {method} {path[:200]}.", code="unknown_route")


async def _run_watching_disconnect(state: GatewayState, call: Call, sink: ASGISink, receive: Receive) -> None:
    """Run the proxy while listening for the client leaving; a disconnect cancels the upstream call."""
    task = asyncio.current_task()
    assert task is not None
    left = False

    async def watch() -> None:
        nonlocal left
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not sink.finished:  # after a complete response a disconnect is just the end
                    left = True
                    task.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        await proxy_call(state, call, sink)
    except asyncio.CancelledError:
        # The client left: the call was cancelled and accounted. Any other cancel goes on.
        if left and task.uncancel() == 0:
            return
        raise
    finally:
        watcher.cancel()
