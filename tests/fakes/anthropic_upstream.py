"""A fake Anthropic Messages API upstream: a real HTTP server on loopback.

The gateway's adapter tests point the official ``anthropic`` SDK (or the gateway) at this server
instead of api.anthropic.com. It is a plain ASGI app served by uvicorn in a background thread, the
same design as :mod:`tests.fakes.openai_upstream`::

    with FakeAnthropic() as fake:
        client = anthropic.Anthropic(base_url=fake.url, api_key=fake.api_key)
        client.messages.create(model="claude-sonnet-4-20250514", max_tokens=64,
                               messages=[{"role": "user", "content": "hi"}])
        assert fake.requests[-1].body["max_tokens"] == 64

What it serves
--------------
``POST /v1/messages`` (stream and not), ``POST /v1/messages/count_tokens``, ``GET /v1/models`` and
``GET /v1/models/{id}``. Every call needs the key, as ``x-api-key: <api_key>`` or ``Authorization:
Bearer <api_key>`` (the installed SDK 2.16.0 sends the latter), else 401 ``authentication_error``;
and an ``anthropic-version`` header from ``versions`` (default :data:`ANTHROPIC_VERSIONS`), else 400
``invalid_request_error``, as the real API answers: a missing version is a request error, not an
authentication one.

Deterministic behaviour
-----------------------
* Reply text: ``reply_text`` if set, else ``"Echo: "`` + the last user text (first
  :data:`ECHO_MAX_WORDS` words). When the last user message carries a ``tool_result`` block the
  reply is ``"Tool result: "`` + that block's content. Image blocks (base64 source) are accepted and
  validated (media type, base64) but do not change the reply.
* One ``text_delta`` per word (``re.findall(r"\\s*\\S+")``), one output token per word;
  ``stream_words`` forces exactly that many words.
* ``stop_sequences``: the reply is cut before the earliest stop sequence it contains and the stop
  reason is ``stop_sequence`` (with ``stop_sequence`` set to the one matched). ``max_tokens`` (required:
  400 when missing) cuts the words and gives ``max_tokens``; otherwise ``end_turn``.
* Tools: with ``tools`` given, ``tool_choice`` not ``none``, and the last user text containing
  "weather" (or ``tool_choice`` ``any``/``tool``), the reply is one ``tool_use`` block calling the
  first (or the named) tool with input ``{"city": "Paris"}``, ``stop_reason: "tool_use"``; streamed
  as ``input_json_delta`` pieces (an empty first piece, then ``{"city": `` and ``"Paris"}``, as the
  API streams them).
* Usage: ``input_tokens`` = words in system + messages + 3 per message + 3 (+ a quarter of the tools'
  JSON length) minus the cache controls; ``cache_read_tokens`` / ``cache_write_tokens`` feed
  ``cache_read_input_tokens`` / ``cache_creation_input_tokens`` (and ``cache_creation``'s 5-minute
  bucket). ``omit_usage`` is ignored here: usage is mandatory in every Messages API response.
* ``error_mid_stream=N``: after N stream events an ``event: error`` (``overloaded_error``, or
  ``error_mid_stream_type``) is sent and the stream ends, as the API does when it fails after the
  200. ``drop_mid_stream=N`` cuts the connection instead.

Controls (thread-safe): ``latency_ms``, ``chunk_delay_ms``, ``reply_text``, ``drop_mid_stream``,
``stream_words``, ``omit_usage``, ``cache_read_tokens``, ``cache_write_tokens``, ``error_mid_stream``,
``error_mid_stream_type``; ``fail_next(status, n=1, retry_after=None, body=None, headers=None,
match=None, error_type=None)``; ``reset()``.

Shared machinery
----------------
The vendor-neutral parts (recorded requests, controls, injected failures, the ASGI send loop with
latency/chunk delay/drops, the threaded uvicorn server, word planning with max tokens and stop
sequences) live in this module and are reused by :mod:`tests.fakes.gemini_upstream` and
:mod:`tests.fakes.bedrock_upstream` (which also reuses the Messages logic for Claude on Bedrock).

References followed
-------------------
* Anthropic API docs, Messages (``POST /v1/messages``: required ``model``, ``messages``,
  ``max_tokens``; the Message object; stop reasons ``end_turn``, ``max_tokens``, ``stop_sequence``,
  ``tool_use``), Streaming Messages (event flow message_start -> content blocks (start, deltas,
  stop) -> message_delta -> message_stop, ``ping`` events, ``text_delta`` / ``input_json_delta``,
  the ``event: error`` example ``{"type": "error", "error": {"type": "overloaded_error", "message":
  "Overloaded"}}``), Errors (400 ``invalid_request_error``, 401 ``authentication_error``, 403
  ``permission_error``, 404 ``not_found_error``, 413 ``request_too_large``, 429 ``rate_limit_error``,
  500 ``api_error``, 529 ``overloaded_error``; body ``{"type":"error","error":{...},"request_id":...}``).
* anthropic-sdk-python: ``tests/lib/streaming/fixtures/basic_response.txt`` and
  ``tool_use_response.txt`` (byte-exact SSE framing; ``data: {"type": "ping"}`` is the one event
  serialised with spaces; the empty first ``partial_json``), the installed SDK's ``types/``
  (``Message``, ``Usage``, ``MessageDeltaUsage``, ``StopReason``), ``_error_classes.py`` (status ->
  exception: 529 -> ``OverloadedError``), ``_base_client.py`` (``retry-after-ms`` / ``retry-after``).
* A recorded stream in the Vercel AI SDK's ``@ai-sdk/anthropic`` fixtures (``model`` first in
  ``message_start``; ``usage`` with ``cache_creation`` and ``service_tier``; ``message_delta``
  usage carrying the cumulative input and cache counts).
* Real error bodies quoted in public issues: ``invalid x-api-key`` and ``x-api-key header is
  required`` (401), ``anthropic-version: header is required`` (400), ``max_tokens: Field required``,
  the 429 ``This request would exceed the rate limit for your organization ...`` message,
  ``Overloaded`` (529).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import logging
import random
import re
import socket
import string
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, fields, replace
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl

import orjson
import uvicorn

__all__ = [
    "ANTHROPIC_VERSIONS",
    "DEFAULT_API_KEY",
    "DEFAULT_MODELS",
    "ECHO_MAX_WORDS",
    "ApiError",
    "Behaviour",
    "Ctx",
    "FakeAnthropic",
    "FakeAnthropicApp",
    "FakeUpstreamApp",
    "FakeUpstreamServer",
    "Failure",
    "MessagePlan",
    "MessagesValidator",
    "RecordedRequest",
    "Reply",
    "TextPlan",
    "UpstreamState",
    "anthropic_error",
    "content_blocks_text",
    "count_words",
    "custom_body",
    "echo",
    "install_log_filter",
    "main",
    "plan_text",
    "rand_chars",
    "split_words",
    "sse_event",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Json = dict[str, Any]

DEFAULT_API_KEY = "sk-ant-api03-fake-upstream-0123456789abcdef"
ECHO_MAX_WORDS = 50
# 2023-06-01 is the documented version; 2026-10-21 is what the installed SDK (2.16.0) sends.
ANTHROPIC_VERSIONS: frozenset[str] = frozenset({"2023-01-01", "2023-06-01", "2026-10-21"})
TOOL_INPUT_PIECES = ("", '{"city": ', '"Paris"}')

# id -> (display_name, created_at). Dates are the models' release dates, as the Models API lists them.
DEFAULT_MODELS: dict[str, tuple[str, str]] = {
    "claude-opus-4-1-20250805": ("Claude Opus 4.1", "2025-08-05T00:00:00Z"),
    "claude-opus-4-20250514": ("Claude Opus 4", "2025-05-22T00:00:00Z"),
    "claude-sonnet-4-5-20250929": ("Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
    "claude-sonnet-4-20250514": ("Claude Sonnet 4", "2025-05-22T00:00:00Z"),
    "claude-haiku-4-5-20251001": ("Claude Haiku 4.5", "2025-10-15T00:00:00Z"),
    "claude-3-7-sonnet-20250219": ("Claude Sonnet 3.7", "2025-02-24T00:00:00Z"),
    "claude-3-5-haiku-20241022": ("Claude Haiku 3.5", "2024-10-22T00:00:00Z"),
    "claude-3-haiku-20240307": ("Claude Haiku 3", "2024-03-07T00:00:00Z"),
}
# The API answers an alias with the snapshot it resolved to.
MODEL_ALIASES: dict[str, str] = {
    "claude-opus-4-1": "claude-opus-4-1-20250805",
    "claude-opus-4-0": "claude-opus-4-20250514",
    "claude-sonnet-4-5": "claude-sonnet-4-5-20250929",
    "claude-sonnet-4-0": "claude-sonnet-4-20250514",
    "claude-haiku-4-5": "claude-haiku-4-5-20251001",
    "claude-3-7-sonnet-latest": "claude-3-7-sonnet-20250219",
    "claude-3-5-haiku-latest": "claude-3-5-haiku-20241022",
}

_JSON = "application/json"
_SSE = "text/event-stream; charset=utf-8"
_WORDS = re.compile(r"\s*\S+")
_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_ALNUM = string.ascii_letters + string.digits
_RANDOM = random.Random()
_IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
# The content block types the fake accepts in requests (the API knows more: the fake says so).
_BLOCK_TYPES = ("text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking")


# ==================================================================================================
# Shared machinery (also used by gemini_upstream and bedrock_upstream)
# ==================================================================================================


def rand_chars(n: int, alphabet: str = _ALNUM) -> str:
    """``n`` random characters of ``alphabet`` (ids only: nothing asserts on them)."""
    return "".join(_RANDOM.choices(alphabet, k=n))


def split_words(text: str) -> list[str]:
    """Split into streamable pieces, each keeping the whitespace before it (like BPE tokens do)."""
    return _WORDS.findall(text)


def count_words(text: str) -> int:
    """The fake's token count for a text: its number of whitespace-separated words."""
    return len(text.split())


def echo(text: str) -> str:
    """The default reply: ``"Echo: "`` + the first :data:`ECHO_MAX_WORDS` words of ``text``."""
    return " ".join(["Echo:", *text.split()[:ECHO_MAX_WORDS]])


def _cycle_words(words: list[str], n: int) -> list[str]:
    source = words or ["word"]
    out: list[str] = []
    for i in range(max(0, n)):
        piece = source[i % len(source)]
        # Every piece after the first is a new word, so it needs its leading space.
        out.append(piece if i == 0 or piece[:1].isspace() else " " + piece)
    return out


@dataclass(frozen=True)
class TextPlan:
    """The words a text reply streams and why it stopped."""

    pieces: list[str]
    reason: str
    """``"end"`` (natural end), ``"max_tokens"`` or ``"stop_sequence"``."""
    stop_sequence: str | None = None

    @property
    def text(self) -> str:
        """The whole reply."""
        return "".join(self.pieces)


def plan_text(base: str, stream_words: int | None, max_tokens: Any, stop_sequences: Any = None) -> TextPlan:
    """Cut ``base`` at the earliest stop sequence, then to ``max_tokens`` words.

    ``stream_words`` first forces the word count (cycling or cutting the words). A max-tokens cut
    wins over a stop sequence found later in the text, as it would for a real model.
    """
    words = split_words(base)
    if stream_words is not None:
        words = _cycle_words(words, max(0, int(stream_words)))
    text = "".join(words)
    matched: str | None = None
    if isinstance(stop_sequences, str):
        stop_sequences = [stop_sequences]
    if isinstance(stop_sequences, list):
        best = -1
        for seq in stop_sequences:
            if isinstance(seq, str) and seq:
                at = text.find(seq)
                if at >= 0 and (best < 0 or at < best):
                    best, matched = at, seq
        if matched is not None:
            text = text[:best]
            words = split_words(text)
            # Whitespace right before the stop sequence is part of the emitted text.
            trailing = text[len("".join(words)) :]
            if trailing and words:
                words[-1] += trailing
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and 0 <= max_tokens < len(words):
        return TextPlan(words[:max_tokens], "max_tokens")
    if matched is not None:
        return TextPlan(words, "stop_sequence", matched)
    return TextPlan(words, "end")


@dataclass
class Behaviour:
    """The knobs a test can turn. Every request works on a snapshot taken when it arrives."""

    latency_ms: float = 0.0
    """Sleep this long before the first byte of every response (errors included)."""
    chunk_delay_ms: float = 0.0
    """Sleep this long between two stream events."""
    reply_text: str | None = None
    """A fixed reply instead of the echo of the last user message."""
    drop_mid_stream: int | None = None
    """Close the connection after this many stream events (the chunked body is left unfinished)."""
    stream_words: int | None = None
    """Make every text reply exactly this many words, hence this many text deltas."""
    omit_usage: bool = False
    """Leave usage out where the vendor's format allows it (see each module)."""
    cache_read_tokens: int = 0
    """Prompt tokens reported as read from the prompt cache."""
    cache_write_tokens: int = 0
    """Prompt tokens reported as written to the prompt cache."""
    error_mid_stream: int | None = None
    """After this many stream events, send the vendor's in-stream error and end the stream."""
    error_mid_stream_type: str | None = None
    """The in-stream error's type (vendor default when None)."""


_BEHAVIOUR_FIELDS = frozenset(f.name for f in fields(Behaviour))


@dataclass(frozen=True)
class RecordedRequest:
    """One request as a fake received it."""

    method: str
    path: str
    """The decoded path (``scope["path"]``); ``raw_path`` keeps the percent-encoding."""
    query: dict[str, str]
    headers: dict[str, str]
    """Lower-case names; repeated headers joined with ", "."""
    body: Any
    """The parsed JSON body, or the raw bytes when it is not JSON (``b""`` when empty)."""
    raw_body: bytes
    raw_path: str = ""
    timestamp: float = 0.0

    @property
    def json(self) -> Any:
        """The parsed JSON body (``None`` when the body was not JSON)."""
        return None if isinstance(self.body, bytes) else self.body


@dataclass(frozen=True)
class Failure:
    """An injected error, queued by ``fail_next``."""

    status: int
    retry_after: float | None
    body: Any
    headers: tuple[tuple[str, str], ...]
    match: str | None
    error_type: str | None = None


class UpstreamState:
    """Everything an ASGI app shares with the test thread, behind one lock."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self._lock = threading.Lock()
        self._defaults = behaviour or Behaviour()
        self._behaviour = replace(self._defaults)
        self._requests: list[RecordedRequest] = []
        self._failures: deque[Failure] = deque()

    def behaviour(self) -> Behaviour:
        """A copy of the current controls."""
        with self._lock:
            return replace(self._behaviour)

    def update(self, **changes: Any) -> Behaviour:
        """Change some controls; returns the new full set."""
        unknown = set(changes) - _BEHAVIOUR_FIELDS
        if unknown:
            raise TypeError(f"unknown behaviour control(s): {', '.join(sorted(unknown))}")
        with self._lock:
            self._behaviour = replace(self._behaviour, **changes)
            return replace(self._behaviour)

    def record(self, request: RecordedRequest) -> None:
        """Append one received request."""
        with self._lock:
            self._requests.append(request)

    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the received requests, oldest first."""
        with self._lock:
            return list(self._requests)

    def add_failures(self, failure: Failure, n: int) -> None:
        """Queue ``n`` copies of ``failure``."""
        with self._lock:
            self._failures.extend([failure] * n)

    def take_failure(self, path: str) -> Failure | None:
        """The first pending failure that applies to ``path``, removed from the queue."""
        with self._lock:
            for failure in self._failures:
                if failure.match is None or failure.match in path:
                    self._failures.remove(failure)
                    return failure
            return None

    def reset(self) -> None:
        """Back to the constructor's controls, no requests, no failures."""
        with self._lock:
            self._behaviour = replace(self._defaults)
            self._requests.clear()
            self._failures.clear()


@dataclass
class Reply:
    """What a handler answers: a whole body, or a stream of pre-framed events."""

    status: int
    content_type: str = _JSON
    body: bytes = b""
    events: Iterator[bytes] | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream_error: bytes | None = None
    """The vendor's in-stream error frame, sent instead of the rest when ``error_mid_stream`` hits."""


class ApiError(Exception):
    """Raised by handlers to answer with an error reply."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


class _DropConnection(Exception):
    """Raised after some events to make uvicorn close the socket mid-body (``drop_mid_stream``)."""


class _QuietDrops(logging.Filter):
    """Keeps the deliberate drops out of uvicorn's error log; real app errors still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _DropConnection)


def install_log_filter() -> None:
    """Hide the deliberate mid-stream drops from uvicorn's error log."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDrops) for f in logger.filters):
        logger.addFilter(_QuietDrops())


@dataclass
class Ctx:
    """One parsed request, as handlers see it."""

    method: str
    path: str
    raw_path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw_body: bytes
    body: Any
    query_string: str = ""
    """The query string exactly as sent (SigV4 signs it)."""


class FakeUpstreamApp:
    """Base ASGI app: reads and records the request, applies injected failures and latency, and
    sends the reply (one ASGI message per stream event, so each reaches the socket on its own).

    Subclasses implement :meth:`dispatch` and :meth:`failure_reply`, and may override
    :meth:`applies_failures` (which requests consume ``fail_next`` failures),
    :meth:`before_failures` and :meth:`extra_headers`.
    """

    def __init__(self, state: UpstreamState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        raw = await self._read_body(receive)
        ctx = self._context(scope, raw)
        self.state.record(
            RecordedRequest(
                method=ctx.method,
                path=ctx.path,
                query=ctx.query,
                headers=ctx.headers,
                body=ctx.body if ctx.body is not None else raw,
                raw_body=raw,
                raw_path=ctx.raw_path,
                timestamp=time.time(),
            )
        )
        behaviour = self.state.behaviour()
        try:
            failure = None
            if self.applies_failures(ctx):
                self.before_failures(ctx)
                failure = self.state.take_failure(ctx.path)
            reply = self.failure_reply(ctx, failure) if failure else self.dispatch(ctx, behaviour)
        except ApiError as exc:
            reply = exc.reply
        if behaviour.latency_ms > 0:
            await asyncio.sleep(behaviour.latency_ms / 1000)
        await self._send(send, ctx, reply, behaviour)

    # ---- to implement -------------------------------------------------------------------------

    def dispatch(self, ctx: Ctx, behaviour: Behaviour) -> Reply:
        """Answer one request."""
        raise NotImplementedError

    def failure_reply(self, ctx: Ctx, failure: Failure) -> Reply:
        """The vendor's error reply for an injected failure."""
        raise NotImplementedError

    def applies_failures(self, ctx: Ctx) -> bool:
        """Whether this request consumes queued failures (API routes do, health checks don't)."""
        return True

    def before_failures(self, ctx: Ctx) -> None:
        """Checks that come before an injected failure (raise :class:`ApiError`), e.g. SigV4."""

    def extra_headers(self, ctx: Ctx, reply: Reply) -> list[tuple[str, str]]:
        """Vendor headers added to every reply."""
        return []

    # ---- plumbing -----------------------------------------------------------------------------

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    @staticmethod
    async def _read_body(receive: Receive) -> bytes:
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    @staticmethod
    def _context(scope: Scope, raw: bytes) -> Ctx:
        headers: dict[str, str] = {}
        for name, value in scope.get("headers", []):
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        body: Any = None
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = None
        raw_path_bytes = scope.get("raw_path") or scope["path"].encode()
        return Ctx(
            scope["method"],
            scope["path"],
            raw_path_bytes.decode("latin-1"),
            query,
            headers,
            raw,
            body,
            scope.get("query_string", b"").decode("latin-1"),
        )

    async def _send(self, send: Send, ctx: Ctx, reply: Reply, behaviour: Behaviour) -> None:
        headers = [(b"content-type", reply.content_type.encode())]
        if reply.events is None:
            headers.append((b"content-length", str(len(reply.body)).encode()))
        extra = [*self.extra_headers(ctx, reply), *reply.headers]
        headers.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra)
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        if reply.events is None:
            await send({"type": "http.response.body", "body": reply.body, "more_body": False})
            return
        delay = behaviour.chunk_delay_ms / 1000
        drop = behaviour.drop_mid_stream
        fail_at = behaviour.error_mid_stream if reply.stream_error is not None else None
        for sent, event in enumerate(reply.events):
            if drop is not None and sent >= drop:
                raise _DropConnection(f"dropped after {sent} events")
            if sent and delay > 0:
                await asyncio.sleep(delay)
            if fail_at is not None and sent >= fail_at:
                await send({"type": "http.response.body", "body": reply.stream_error, "more_body": True})
                break
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _control(name: str, doc: str) -> Any:
    def getter(self: FakeUpstreamServer) -> Any:
        return getattr(self.state.behaviour(), name)

    def setter(self: FakeUpstreamServer, value: Any) -> None:
        self.state.update(**{name: value})

    return property(getter, setter, doc=doc)


class FakeUpstreamServer:
    """Runs a :class:`FakeUpstreamApp` with uvicorn on 127.0.0.1 in a daemon thread.

    Subclasses build ``self.state`` and ``self.app`` and call :meth:`_init_server`.
    """

    latency_ms = _control("latency_ms", "Milliseconds to wait before the first byte of a response.")
    chunk_delay_ms = _control("chunk_delay_ms", "Milliseconds to wait between two stream events.")
    reply_text = _control("reply_text", "Fixed reply text instead of the echo (None: echo).")
    drop_mid_stream = _control(
        "drop_mid_stream", "Close the connection after this many stream events (None: never)."
    )
    stream_words = _control(
        "stream_words", "Force text replies to exactly this many words/deltas (None: natural)."
    )
    omit_usage = _control("omit_usage", "Leave usage out where the vendor's format allows it.")
    cache_read_tokens = _control("cache_read_tokens", "Reported prompt tokens read from the cache.")
    cache_write_tokens = _control("cache_write_tokens", "Reported prompt tokens written to the cache.")
    error_mid_stream = _control(
        "error_mid_stream", "Send the vendor's in-stream error after this many events (None: never)."
    )
    error_mid_stream_type = _control("error_mid_stream_type", "Type of the in-stream error.")

    state: UpstreamState
    app: FakeUpstreamApp
    _label = "fake-upstream"

    def _init_server(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @staticmethod
    def _behaviour_from(controls: Mapping[str, Any]) -> Behaviour:
        unknown = set(controls) - _BEHAVIOUR_FIELDS
        if unknown:
            raise TypeError(f"unknown behaviour control(s): {', '.join(sorted(unknown))}")
        return Behaviour(**controls)

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Self:
        """Bind the port (a free one when ``port=0``), serve in a daemon thread, wait until ready."""
        if self._thread is not None:
            return self
        install_log_filter()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        sock.listen(2048)
        self._port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            host=self._host,
            port=self._port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
            # Open streams must not hold up stop() for long.
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"{self._label}-{self._port}", daemon=True
        )
        self._server, self._thread, self._socket = server, thread, sock
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the {self._label} server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and join the thread. Safe to call twice."""
        server, thread, sock = self._server, self._thread, self._socket
        self._server = self._thread = self._socket = None
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout)
        if sock is not None:
            sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- addresses ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port served on (known once started)."""
        if self._thread is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the base URL to give the vendor's SDK."""
        return f"http://{self._host}:{self.port}"

    # ---- observation and control --------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        return self.state.requests()

    @property
    def last_request(self) -> RecordedRequest:
        """The most recent request (raises ``IndexError`` if there was none)."""
        return self.state.requests()[-1]

    def behaviour(self, **changes: Any) -> Behaviour:
        """Set several controls at once (``fake.behaviour(latency_ms=20, reply_text="hi")``);
        returns the resulting :class:`Behaviour`. With no arguments, just returns the current one."""
        return self.state.update(**changes) if changes else self.state.behaviour()

    def fail_next(
        self,
        status: int = 500,
        n: int = 1,
        retry_after: float | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        match: str | None = None,
        error_type: str | None = None,
    ) -> None:
        """Answer the next ``n`` API requests (those whose path contains ``match``, if given) with
        the vendor's error for ``status``.

        ``error_type`` overrides the vendor's error type/status/exception name for that status;
        ``body`` replaces the whole body (bytes/str sent as is, anything else as JSON); ``headers``
        are added. How ``retry_after`` is conveyed is the vendor's (see each module).
        """
        if n < 1:
            raise ValueError("n must be at least 1")
        failure = Failure(status, retry_after, body, tuple((headers or {}).items()), match, error_type)
        self.state.add_failures(failure, n)

    def reset(self) -> None:
        """Forget recorded requests and pending failures; restore the constructor's controls."""
        self.state.reset()


def custom_body(body: Any) -> bytes:
    """A ``fail_next(body=...)`` value as bytes: bytes/str as is, anything else as JSON."""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return orjson.dumps(body)


def content_blocks_text(content: Any) -> str:
    """The text of a message's ``content`` (a string, or the ``text`` of its text blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for block in content:
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                parts.append(block["text"])
        return " ".join(parts)
    return ""


# ==================================================================================================
# The Anthropic Messages API
# ==================================================================================================


def request_id() -> str:
    """An Anthropic request id, ``req_011C`` + 20 base58 characters (the observed shape)."""
    return "req_011C" + rand_chars(20, _BASE58)


def _error_body(type_: str, message: str, req_id: str | None = None) -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": type_, "message": message}, "request_id": req_id or request_id()}
    )


def anthropic_error(status: int, type_: str, message: str, headers: Sequence[tuple[str, str]] = ()) -> Reply:
    """An Anthropic error reply: ``{"type":"error","error":{"type","message"},"request_id"}``."""
    req_id = request_id()
    return Reply(status, body=_error_body(type_, message, req_id), headers=[("request-id", req_id), *headers])


# Default error type and message per status, as the API words them.
ERROR_TYPES: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: (
        "rate_limit_error",
        "This request would exceed the rate limit for your organization (fake-org) of 50 requests per "
        "minute. For details, refer to: https://docs.anthropic.com/en/api/rate-limits. You can see the "
        "response headers for current usage. Please reduce the prompt length or the maximum tokens "
        "requested, or try again later. You may also contact sales at https://www.anthropic.com/contact-sales "
        "to discuss your options for a rate limit increase.",
    ),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


def failure_error(status: int, error_type: str | None = None) -> tuple[str, str]:
    """The (type, message) the API sends for ``status`` (4xx default to ``invalid_request_error``)."""
    known = ERROR_TYPES.get(status)
    if known is None:
        known = (
            ("api_error", "Internal server error")
            if status >= 500
            else ("invalid_request_error", "Invalid request.")
        )
    return (error_type or known[0], known[1])


@dataclass
class MessagePlan:
    """What a Messages request answers, independent of the wire format."""

    model: str
    message_id: str
    text: TextPlan | None
    tool_name: str | None
    tool_id: str | None
    input_tokens: int
    cache_read: int
    cache_write: int

    @property
    def stop_reason(self) -> str:
        """The Messages API stop reason."""
        if self.tool_name is not None:
            return "tool_use"
        assert self.text is not None
        return {"end": "end_turn", "max_tokens": "max_tokens", "stop_sequence": "stop_sequence"}[
            self.text.reason
        ]

    @property
    def stop_sequence(self) -> str | None:
        """The stop sequence matched, if that is why the reply stopped."""
        return self.text.stop_sequence if self.text is not None else None

    @property
    def output_tokens(self) -> int:
        """Words of text, or JSON pieces of the tool input."""
        if self.tool_name is not None:
            return len([p for p in TOOL_INPUT_PIECES if p])
        assert self.text is not None
        return len(self.text.pieces)

    def usage(self) -> Json:
        """The Message object's ``usage``, in the API's key order."""
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_write,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation": {"ephemeral_5m_input_tokens": self.cache_write, "ephemeral_1h_input_tokens": 0},
            "output_tokens": self.output_tokens,
            "service_tier": "standard",
        }

    def content(self) -> list[Json]:
        """The Message object's ``content`` blocks."""
        if self.tool_name is not None:
            return [
                {"type": "tool_use", "id": self.tool_id, "name": self.tool_name, "input": {"city": "Paris"}}
            ]
        assert self.text is not None
        return [{"type": "text", "text": self.text.text}]

    def message(self) -> Json:
        """The non-streaming Message object (``model`` first, as the API now orders it)."""
        return {
            "model": self.model,
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "content": self.content(),
            "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence,
            "usage": self.usage(),
        }

    def events(self, *, ping: bool = True) -> Iterator[Json]:
        """The stream events, in order (``ping`` after the first block start, as the API sends)."""
        start_usage = {**self.usage(), "output_tokens": 1}
        yield {
            "type": "message_start",
            "message": {
                "model": self.model,
                "id": self.message_id,
                "type": "message",
                "role": "assistant",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": start_usage,
            },
        }
        if self.tool_name is not None:
            block: Json = {"type": "tool_use", "id": self.tool_id, "name": self.tool_name, "input": {}}
            pieces = [{"type": "input_json_delta", "partial_json": p} for p in TOOL_INPUT_PIECES]
        else:
            assert self.text is not None
            block = {"type": "text", "text": ""}
            pieces = [{"type": "text_delta", "text": p} for p in self.text.pieces]
        yield {"type": "content_block_start", "index": 0, "content_block": block}
        if ping:
            yield {"type": "ping"}
        for delta in pieces:
            yield {"type": "content_block_delta", "index": 0, "delta": delta}
        yield {"type": "content_block_stop", "index": 0}
        yield {
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
            "usage": {
                "input_tokens": self.input_tokens,
                "cache_creation_input_tokens": self.cache_write,
                "cache_read_input_tokens": self.cache_read,
                "output_tokens": self.output_tokens,
            },
        }
        yield {"type": "message_stop"}


def sse_event(event: Json) -> bytes:
    """One Anthropic SSE event: ``event: <type>\\ndata: <json>\\n\\n``."""
    kind = event["type"]
    # The API serialises ping (and only ping) with spaces: `data: {"type": "ping"}`.
    data = b'{"type": "ping"}' if kind == "ping" else orjson.dumps(event)
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


def stream_error_event(error_type: str | None) -> bytes:
    """The ``event: error`` the API sends when a stream fails after the 200.

    Serialised with spaces, exactly like the example on the Streaming Messages page.
    """
    type_ = error_type or "overloaded_error"
    message = next((m for t, m in ERROR_TYPES.values() if t == type_), "Internal server error")
    data = json.dumps({"type": "error", "error": {"type": type_, "message": message}})
    return b"event: error\ndata: " + data.encode() + b"\n\n"


class MessagesValidator:
    """Checks a Messages body the way the API does and plans the reply.

    Shared by the Anthropic API and Claude on Bedrock (``invoke``); ``field`` names the error
    prefix and ``error`` builds the flavour's error reply.
    """

    def __init__(self, error: Callable[[int, str, str], ApiError]) -> None:
        self._error = error

    def invalid(self, message: str) -> ApiError:
        """A 400 ``invalid_request_error``."""
        return self._error(400, "invalid_request_error", message)

    def check(self, body: Json, *, require_model: bool = True) -> None:
        """Raise the API's 400 for a malformed body."""
        if require_model and not body.get("model"):
            raise self.invalid("model: Field required")
        if "messages" not in body:
            raise self.invalid("messages: Field required")
        if "max_tokens" not in body:
            raise self.invalid("max_tokens: Field required")
        max_tokens = body["max_tokens"]
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            raise self.invalid("max_tokens: Input should be a valid integer")
        if max_tokens < 1:
            raise self.invalid("max_tokens: Input should be greater than or equal to 1")
        messages = body["messages"]
        if not isinstance(messages, list):
            raise self.invalid("messages: Input should be a valid list")
        if not messages:
            raise self.invalid("messages: at least one message is required")
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise self.invalid(f"messages.{i}: Input should be a valid dictionary")
            role = message.get("role")
            if role not in ("user", "assistant"):
                raise self.invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
            content = message.get("content")
            if isinstance(content, str):
                continue
            if not isinstance(content, list):
                raise self.invalid(f"messages.{i}.content: Input should be a valid list")
            for j, block in enumerate(content):
                self._check_block(i, j, role, block)
        stops = body.get("stop_sequences")
        if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
            raise self.invalid("stop_sequences: Input should be a valid list")

    def _check_block(self, i: int, j: int, role: str, block: Any) -> None:
        where = f"messages.{i}.content.{j}"
        if not isinstance(block, dict):
            raise self.invalid(f"{where}: Input should be a valid dictionary")
        kind = block.get("type")
        if kind not in _BLOCK_TYPES:
            raise self.invalid(
                f"{where}: Input tag '{kind}' found using 'type' does not match any of the expected tags: "
                + ", ".join(f"'{t}'" for t in _BLOCK_TYPES)
            )
        if kind == "text" and not isinstance(block.get("text"), str):
            raise self.invalid(f"{where}.text.text: Field required")
        if kind == "image":
            source = block.get("source")
            if not isinstance(source, dict):
                raise self.invalid(f"{where}.image.source: Field required")
            if source.get("type") == "base64":
                media_type = source.get("media_type")
                if media_type not in _IMAGE_MEDIA_TYPES:
                    raise self.invalid(
                        f"{where}.image.source.base64.media_type: Input should be 'image/jpeg', "
                        "'image/png', 'image/gif' or 'image/webp'"
                    )
                data = source.get("data")
                try:
                    if not isinstance(data, str) or not data:
                        raise ValueError
                    base64.b64decode(data, validate=True)
                except (ValueError, binascii.Error):
                    raise self.invalid("Could not process image") from None
        if kind == "tool_result" and not isinstance(block.get("tool_use_id"), str):
            raise self.invalid(f"{where}.tool_result.tool_use_id: Field required")

    @staticmethod
    def prompt_tokens(body: Json) -> int:
        """Words in system + messages, 3 per message + 3, plus a quarter of the tools' JSON."""
        total = 3 + count_words(content_blocks_text(body.get("system")))
        for message in body.get("messages") or []:
            if isinstance(message, dict):
                total += 3 + count_words(content_blocks_text(message.get("content")))
                content = message.get("content")
                if isinstance(content, list):
                    for block in content:
                        if isinstance(block, dict) and block.get("type") == "tool_result":
                            total += count_words(content_blocks_text(block.get("content")))
        tools = body.get("tools")
        if tools:
            total += len(orjson.dumps(tools)) // 4
        return total

    @staticmethod
    def pick_tool(body: Json, last_text: str) -> str | None:
        """The name of the tool the fake model calls, or None for a text reply."""
        tools = body.get("tools")
        if not isinstance(tools, list) or not tools:
            return None
        names = [t["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]
        if not names:
            return None
        choice = body.get("tool_choice") or {}
        kind = choice.get("type") if isinstance(choice, dict) else None
        if kind == "none":
            return None
        if kind == "tool" and isinstance(choice.get("name"), str):
            return str(choice["name"])
        if kind == "any" or "weather" in last_text.lower():
            return names[0]
        return None

    def plan(self, body: Json, behaviour: Behaviour, model: str, message_id: str) -> MessagePlan:
        """Plan the reply to a (checked) Messages body."""
        messages = body["messages"]
        last = messages[-1]
        last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
        last_user_text = content_blocks_text(last_user.get("content")) if last_user else ""
        tool_result = None
        if last.get("role") == "user" and isinstance(last.get("content"), list):
            tool_result = next(
                (b for b in last["content"] if isinstance(b, dict) and b.get("type") == "tool_result"), None
            )
        prompt = self.prompt_tokens(body)
        cache_read = min(max(0, behaviour.cache_read_tokens), prompt)
        cache_write = min(max(0, behaviour.cache_write_tokens), prompt - cache_read)
        common = {
            "model": model,
            "message_id": message_id,
            "input_tokens": prompt - cache_read - cache_write,
            "cache_read": cache_read,
            "cache_write": cache_write,
        }
        tool_name = None if tool_result is not None else self.pick_tool(body, last_user_text)
        if tool_name is not None:
            return MessagePlan(
                text=None, tool_name=tool_name, tool_id="toolu_01" + rand_chars(22, _BASE58), **common
            )
        if behaviour.reply_text is not None:
            base = behaviour.reply_text
        elif tool_result is not None:
            base = "Tool result: " + content_blocks_text(tool_result.get("content"))
        else:
            base = echo(last_user_text)
        text = plan_text(base, behaviour.stream_words, body.get("max_tokens"), body.get("stop_sequences"))
        return MessagePlan(text=text, tool_name=None, tool_id=None, **common)


class FakeAnthropicApp(FakeUpstreamApp):
    """The ASGI application for the Anthropic API (mountable in any ASGI server)."""

    def __init__(
        self,
        state: UpstreamState | None = None,
        *,
        api_key: str = DEFAULT_API_KEY,
        models: Mapping[str, tuple[str, str]] | None = None,
        versions: Iterable[str] | None = None,
    ) -> None:
        super().__init__(state or UpstreamState())
        self.api_key = api_key
        self.models: dict[str, tuple[str, str]] = dict(DEFAULT_MODELS if models is None else models)
        self.versions: set[str] = set(ANTHROPIC_VERSIONS if versions is None else versions)
        self.validator = MessagesValidator(lambda s, t, m: ApiError(anthropic_error(s, t, m)))

    def applies_failures(self, ctx: Ctx) -> bool:
        """Only API routes consume injected failures."""
        return ctx.path.startswith("/v1/")

    def extra_headers(self, ctx: Ctx, reply: Reply) -> list[tuple[str, str]]:
        """The API's organisation and rate-limit headers."""
        limited = reply.status == 429
        headers = [
            ("anthropic-organization-id", "00000000-0000-4000-8000-00000000fa4e"),
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "0" if limited else "49"),
            ("anthropic-ratelimit-requests-reset", "2030-01-01T00:00:01Z"),
            ("anthropic-ratelimit-input-tokens-limit", "40000"),
            ("anthropic-ratelimit-input-tokens-remaining", "0" if limited else "40000"),
            ("anthropic-ratelimit-input-tokens-reset", "2030-01-01T00:00:01Z"),
            ("anthropic-ratelimit-output-tokens-limit", "8000"),
            ("anthropic-ratelimit-output-tokens-remaining", "0" if limited else "8000"),
            ("anthropic-ratelimit-output-tokens-reset", "2030-01-01T00:00:01Z"),
        ]
        if not any(k == "request-id" for k, _ in reply.headers):
            headers.append(("request-id", request_id()))
        return headers

    def failure_reply(self, ctx: Ctx, failure: Failure) -> Reply:
        """The API's error for an injected status (429 always carries ``retry-after``)."""
        headers = list(failure.headers)
        retry_after = failure.retry_after
        if failure.status == 429 and retry_after is None:
            retry_after = 1
        if retry_after is not None:
            headers.append(
                (
                    "retry-after",
                    str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after),
                )
            )
        if failure.body is not None:
            return Reply(failure.status, body=custom_body(failure.body), headers=headers)
        type_, message = failure_error(failure.status, failure.error_type)
        return anthropic_error(failure.status, type_, message, headers)

    def dispatch(self, ctx: Ctx, behaviour: Behaviour) -> Reply:
        """Route one request."""
        if ctx.method == "GET" and ctx.path in ("/", "/health", "/healthz"):
            return Reply(200, body=b'{"status":"ok"}')
        if not ctx.path.startswith("/v1/"):
            return anthropic_error(404, "not_found_error", "Not Found")
        key = ctx.headers.get("x-api-key")
        if key is None:
            # The API also takes the key as a bearer token, which is how SDK 2.x sends it.
            scheme, _, token = ctx.headers.get("authorization", "").partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else None
        if not key:
            return anthropic_error(401, "authentication_error", "x-api-key header is required")
        if key != self.api_key:
            return anthropic_error(401, "authentication_error", "invalid x-api-key")
        version = ctx.headers.get("anthropic-version")
        if not version:
            return anthropic_error(400, "invalid_request_error", "anthropic-version: header is required")
        if version not in self.versions:
            return anthropic_error(
                400, "invalid_request_error", f'anthropic-version: "{version}" is not a valid version'
            )
        if ctx.method == "GET" and ctx.path == "/v1/models":
            return self._list_models()
        if ctx.method == "GET" and ctx.path.startswith("/v1/models/"):
            return self._get_model(ctx.path[len("/v1/models/") :])
        if ctx.method == "POST" and ctx.path == "/v1/messages":
            return self._messages(ctx, behaviour)
        if ctx.method == "POST" and ctx.path == "/v1/messages/count_tokens":
            return self._count_tokens(ctx)
        return anthropic_error(404, "not_found_error", "Not Found")

    def _json_body(self, ctx: Ctx) -> Json:
        if not isinstance(ctx.body, dict):
            raise self.validator.invalid("There was an error parsing the body of your request.")
        return ctx.body

    def _resolve_model(self, model: str) -> str:
        resolved = MODEL_ALIASES.get(model, model)
        if resolved not in self.models:
            raise ApiError(anthropic_error(404, "not_found_error", f"model: {model}"))
        return resolved

    def _messages(self, ctx: Ctx, behaviour: Behaviour) -> Reply:
        body = self._json_body(ctx)
        self.validator.check(body)
        model = self._resolve_model(str(body["model"]))
        plan = self.validator.plan(body, behaviour, model, "msg_01" + rand_chars(22, _BASE58))
        if body.get("stream") is True:
            return Reply(
                200,
                content_type=_SSE,
                events=(sse_event(e) for e in plan.events()),
                headers=[("cache-control", "no-cache")],
                stream_error=stream_error_event(behaviour.error_mid_stream_type),
            )
        return Reply(200, body=orjson.dumps(plan.message()))

    def _count_tokens(self, ctx: Ctx) -> Reply:
        body = self._json_body(ctx)
        if not body.get("model"):
            raise self.validator.invalid("model: Field required")
        if "messages" not in body:
            raise self.validator.invalid("messages: Field required")
        self._resolve_model(str(body["model"]))
        return Reply(200, body=orjson.dumps({"input_tokens": self.validator.prompt_tokens(body)}))

    def _model_object(self, model_id: str) -> Json:
        display, created = self.models[model_id]
        return {"type": "model", "id": model_id, "display_name": display, "created_at": created}

    def _list_models(self) -> Reply:
        data = [self._model_object(m) for m in self.models]
        page = {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
        return Reply(200, body=orjson.dumps(page))

    def _get_model(self, model_id: str) -> Reply:
        resolved = MODEL_ALIASES.get(model_id, model_id)
        if resolved not in self.models:
            return anthropic_error(404, "not_found_error", f"model: {model_id}")
        return Reply(200, body=orjson.dumps(self._model_object(resolved)))


class FakeAnthropic(FakeUpstreamServer):
    """A fake Anthropic API on 127.0.0.1, run by uvicorn in a background thread.

    ``FakeAnthropic(api_key=..., models=..., versions=..., host=..., port=0, **controls)``; ``controls`` are initial
    values of the :class:`Behaviour` fields, which :meth:`reset` returns to.
    """

    _label = "fake-anthropic"

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        models: Mapping[str, tuple[str, str]] | Iterable[str] | None = None,
        versions: Iterable[str] | None = None,
        **controls: Any,
    ) -> None:
        model_table: dict[str, tuple[str, str]] = dict(DEFAULT_MODELS)
        if isinstance(models, Mapping):
            model_table.update(models)
        elif models is not None:
            model_table.update(dict.fromkeys(models, ("Fake model", "2025-01-01T00:00:00Z")))
        self.state = UpstreamState(self._behaviour_from(controls))
        self.app = FakeAnthropicApp(self.state, api_key=api_key, models=model_table, versions=versions)
        self._init_server(host, port)

    @property
    def anthropic(self) -> FakeAnthropicApp:
        """The ASGI app (typed)."""
        assert isinstance(self.app, FakeAnthropicApp)
        return self.app

    @property
    def api_key(self) -> str:
        """The only key accepted (``x-api-key`` or ``Authorization: Bearer``)."""
        return self.anthropic.api_key

    @property
    def models(self) -> dict[str, tuple[str, str]]:
        """The served model table (mutable: add ``id: (display_name, created_at)``)."""
        return self.anthropic.models

    @property
    def versions(self) -> set[str]:
        """Accepted ``anthropic-version`` values (mutable)."""
        return self.anthropic.versions


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the fake in the foreground: ``python -m tests.fakes.anthropic_upstream --port 18001``."""
    parser = argparse.ArgumentParser(description="Fake Anthropic Messages API upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18001)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    state = UpstreamState(Behaviour(latency_ms=args.latency_ms, chunk_delay_ms=args.chunk_delay_ms))
    install_log_filter()
    print(f"fake Anthropic upstream on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(
        FakeAnthropicApp(state, api_key=args.api_key),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
    )


if __name__ == "__main__":
    main()
