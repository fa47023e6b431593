"""A chat completion through the gateway's service layer, in process, as a stream of text deltas.

The portal never calls its own HTTP API: a :class:`Turn` builds a gateway ``Call`` for the signed-in
user's principal and runs ``proxy_call`` with a sink of its own, so the turn is admitted by the
quotas, routed and written to the usage ledger exactly like an API request. The sink reads the SSE
bytes the gateway relays and hands text deltas to whoever iterates :meth:`Turn.events`.

The gateway call runs in a task of its own, outside the request's context: when the browser goes
away (the user pressed Stop) the request is cancelled, :meth:`Turn.stop` cancels the upstream call,
the gateway charges what was delivered, and the ``on_finish`` hook still runs to keep the partial
answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from gateway.catalog import Principal
from gateway.errors import GatewayError
from gateway.proxy import Call, proxy_call
from gateway.state import GatewayState, get_state

logger = logging.getLogger(__name__)

_EVENT_END = (b"\n\n", b"\r\n\r\n")
# Proxies close idle connections (nginx after 60 s by default): a comment line keeps the stream alive.
HEARTBEAT_SECONDS = 15.0


def gateway_state() -> GatewayState:
    """This process's gateway state, created outside the request's context when this is the first use.

    Its background tasks copy the context they start in; inside a Django request they would inherit
    the request's thread-sensitive executor, which is shut down when the request ends.
    """
    return contextvars.Context().run(get_state)


def friendly_error(error: GatewayError) -> str:
    """What to tell a person in the page about a gateway refusal or failure."""
    code = error.code or ""
    if code in ("quota_exceeded", "budget_exceeded") or (
        error.status == 429 and error.type == "insufficient_quota"
    ):
        return f"Your quota is used up: {error.message}"
    if error.status == 429:
        retry = error.headers.get("retry-after")
        hint = f" Try again in {retry} s." if retry else " Try again shortly."
        return f"Too many requests: {error.message}{hint}"
    if code == "policy_denied":
        return f"Your department's data policy does not allow this: {error.message}"
    if error.status in (403, 404) and code in ("model_not_allowed", "model_not_found"):
        return f"This model is not available to you: {error.message} Pick another model."
    if code == "quota_unavailable":
        return "Usage limits cannot be checked right now, so the request was not sent. Try again shortly."
    if (
        error.status >= 500
        or code.startswith("upstream")
        or code in ("no_deployment", "deployments_unavailable")
    ):
        return f"The model provider failed: {error.message}"
    return f"The request was refused: {error.message}"


@dataclass
class Outcome:
    """How a turn ended, with what the ledger charged for it."""

    request_id: str
    text: str = ""
    status: str = "complete"  # complete, stopped or error (the Message.Status values)
    error: str = ""
    error_code: str = ""
    finish_reason: str = ""
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    latency_ms: int = 0
    ttft_ms: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class DeltaSink:
    """A gateway sink that parses the relayed chat-completions SSE into text deltas."""

    def __init__(self, deliver: Callable[[str], None]) -> None:
        self.started = False
        self.deliver = deliver
        self.text: list[str] = []
        self.error: dict[str, Any] | None = None
        self.finish_reason = ""
        self.event_stream = True
        self._pending = b""

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        content_type = dict(headers).get(b"content-type", b"")
        self.event_stream = b"text/event-stream" in content_type

    async def send(self, chunk: bytes, *, more: bool) -> None:
        self._pending += chunk
        if not self.event_stream:
            # A provider that answered a stream request with one JSON body: take it whole at the end.
            if not more:
                self._payload(self._pending)
                self._pending = b""
            return
        while True:
            ends = [(i, sep) for sep in _EVENT_END if (i := self._pending.find(sep)) >= 0]
            if not ends:
                break
            index, sep = min(ends)
            event, self._pending = self._pending[:index], self._pending[index + len(sep) :]
            self._event(event)
        if not more and self._pending.strip():
            self._event(self._pending)
            self._pending = b""

    def _event(self, event: bytes) -> None:
        data = b"\n".join(line[5:].lstrip() for line in event.splitlines() if line.startswith(b"data:"))
        if data and data != b"[DONE]":
            self._payload(data)

    def _payload(self, data: bytes) -> None:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(obj, dict):
            return
        if isinstance(obj.get("error"), dict):
            self.error = obj["error"]
            return
        for choice in obj.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            piece = choice.get("delta") or choice.get("message") or {}
            content = piece.get("content") if isinstance(piece, dict) else None
            if isinstance(content, str) and content:
                self.text.append(content)
                self.deliver(content)
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])


FinishHook = Callable[[Outcome], Awaitable[dict[str, Any]]]


class Turn:
    """One streamed completion. ``events()`` yields ``("delta", text)`` items, then ``("done", payload)``.

    ``on_finish`` gets the :class:`Outcome` once the gateway call is over (however it ended) and
    returns the ``done`` payload; it runs even when nobody listens any more.
    """

    def __init__(
        self, *, principal: Principal, body: dict[str, Any], request_id: str, on_finish: FinishHook
    ) -> None:
        self.principal = principal
        self.body = {**body, "stream": True}
        self.request_id = request_id
        self.on_finish = on_finish
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.sink = DeltaSink(lambda text: self.queue.put_nowait(("delta", text)))
        self._stopped = False
        self._proxy: asyncio.Future[None] | None = None
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the gateway call in the background (in a fresh context, tracked by the gateway's
        shutdown so the outcome is saved even while the server stops)."""
        state = gateway_state()
        self._worker = contextvars.Context().run(state.spawn, self._run(state))

    def stop(self) -> None:
        """Cancel the upstream call (Stop, or the browser left). What was delivered is kept."""
        self._stopped = True
        if self._proxy is not None and not self._proxy.done():
            self._proxy.cancel()

    async def events(self, heartbeat: float = HEARTBEAT_SECONDS) -> AsyncIterator[tuple[str, Any]]:
        """The deltas as they arrive, then the ``done`` payload; ``("ping", None)`` after each
        ``heartbeat`` seconds without one (a slow model must not look like a dead connection)."""
        if self._worker is None:
            self.start()
        while True:
            try:
                kind, data = await asyncio.wait_for(self.queue.get(), heartbeat)
            except TimeoutError:
                yield "ping", None
                continue
            yield kind, data
            if kind == "done":
                return

    async def _run(self, state: GatewayState) -> None:
        call = Call(
            endpoint="chat/completions", body=self.body, principal=self.principal, request_id=self.request_id
        )
        if not self._stopped:
            self._proxy = asyncio.ensure_future(proxy_call(state, call, self.sink))
            await asyncio.wait({self._proxy})
        outcome = self._outcome(call)
        try:
            payload = await self.on_finish(outcome)
        except Exception:
            logger.exception("saving the outcome of %s failed", self.request_id)
            payload = {"status": "error", "error": "The answer could not be saved."}
        self.queue.put_nowait(("done", payload))

    def _outcome(self, call: Call) -> Outcome:
        event = call.event()
        outcome = Outcome(
            request_id=self.request_id, text="".join(self.sink.text), finish_reason=self.sink.finish_reason,
            model=str(event.get("model") or self.body.get("model") or ""), prompt_tokens=int(event["prompt_tokens"]),
            completion_tokens=int(event["completion_tokens"]), cost_usd=Decimal(str(event["cost_usd"])),
            latency_ms=int(event["latency_ms"]), ttft_ms=event["ttft_ms"],
        )  # fmt: skip
        proxy = self._proxy
        if proxy is None or proxy.cancelled():
            outcome.status = "stopped"
            return outcome
        exc = proxy.exception()
        if isinstance(exc, GatewayError):
            outcome.status, outcome.error, outcome.error_code = "error", friendly_error(exc), exc.code or ""
        elif exc is not None:
            logger.error("portal turn %s failed", self.request_id, exc_info=exc)
            outcome.status, outcome.error = "error", "Something went wrong while getting the answer."
        elif self.sink.error is not None:
            message = str(self.sink.error.get("message") or "The provider's stream broke off.")
            outcome.status, outcome.error = "error", f"The model provider failed: {message}"
            outcome.error_code = str(self.sink.error.get("code") or "")
        return outcome


def sse(kind: str, data: Any) -> bytes:
    """One server-sent event for the browser."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


DISCONNECTED = "llmc.disconnected"  # the scope key of the event config.asgi sets when the client leaves


def client_left(request: Any) -> asyncio.Event | None:
    """The event set when the client of ``request`` disconnects (None outside config.asgi)."""
    event = getattr(request, "scope", {}).get(DISCONNECTED)
    return event if isinstance(event, asyncio.Event) else None


async def _stop_when(left: asyncio.Event, turn: Turn) -> None:
    await left.wait()
    turn.stop()


async def relay(turn: Turn, left: asyncio.Event | None = None) -> AsyncGenerator[bytes, None]:
    """The browser's event stream of ``turn``; the client leaving stops the turn.

    Closing the stream stops it too, but Django does not close a streaming response whose request
    was cancelled (it only drops it, and the generator's ``finally`` then waits for the garbage
    collector), so ``left``, the disconnect of the request, stops the turn at once.
    """
    started = time.perf_counter()
    watcher = asyncio.ensure_future(_stop_when(left, turn)) if left is not None else None
    try:
        async for kind, data in turn.events(HEARTBEAT_SECONDS):
            if kind == "delta":
                yield sse("delta", {"t": data})
            elif kind == "ping":
                yield b": ping\n\n"
            else:
                yield sse("done", {**data, "elapsed_ms": int((time.perf_counter() - started) * 1000)})
    finally:
        if watcher is not None:
            watcher.cancel()
        turn.stop()
