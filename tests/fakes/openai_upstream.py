"""A fake OpenAI and Azure OpenAI upstream: a real HTTP server on loopback.

The gateway's acceptance tests and benchmarks point at this server instead of api.openai.com or an
``*.openai.azure.com`` resource. It is a plain ASGI app (no Django) served by uvicorn, either in a
background thread (:class:`FakeOpenAI`, for tests) or in the foreground (the CLI, for benchmarks)::

    with FakeOpenAI() as fake:
        client = openai.OpenAI(base_url=fake.base_url, api_key=fake.api_key)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert fake.requests[-1].body["model"] == "gpt-4o-mini"

    python -m tests.fakes.openai_upstream --port 18000 --latency-ms 50 --api-key sk-x

What it serves
--------------
OpenAI, under ``/v1`` (``Authorization: Bearer <api_key>``):
``POST chat/completions`` (stream and not), ``POST completions`` (legacy), ``POST embeddings``,
``GET models``, ``GET models/{id}``, ``POST responses`` (stream and not), ``POST moderations``,
``POST images/generations``. Azure, with the ``api-key`` header and an ``api-version`` query:
``POST /openai/deployments/{deployment}/chat/completions|completions|embeddings``.
``GET /fake-images/<id>.png`` serves the images that ``images/generations`` hands out by URL.

Deterministic behaviour (so tests can assert on it)
---------------------------------------------------
* Reply text: ``reply_text`` if set, else ``"Echo: "`` + the last user message (its first
  :data:`ECHO_MAX_WORDS` words). After a ``tool`` message it is ``"Tool result: "`` + its content.
* One streamed chunk per word (``re.findall(r"\\s*\\S+")``), and one completion token per word;
  ``stream_words`` forces exactly that many words (the reply is cycled or cut).
* ``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens`` cut the reply to that many words
  and set ``finish_reason: "length"`` (Responses: ``status: "incomplete"``). Legacy completions
  default to 16, as the real endpoint does.
* Tools: when the request has function tools, ``tool_choice`` is not ``"none"``, and either the
  last message is a user message containing "weather", or ``tool_choice`` is ``"required"`` or names a
  function, the reply is a call to the first (or the named) tool with arguments ``{"city":"Paris"}``
  and ``finish_reason: "tool_calls"``, streamed as tool-call argument deltas as the real API does.
* Token counts: prompt tokens = words in the messages + 3 per message + 3 (+ a quarter of the
  tools' JSON length); ``cached_tokens`` and ``reasoning_tokens`` controls feed the usage details.
* Embeddings: a unit vector derived from SHA-256 of the input (:func:`embedding_for`), dimension 8
  or ``dimensions``; ``encoding_format: "base64"`` (the openai SDK's default) returns the same
  float32 values little-endian and base64-encoded.
* Only ``n=1`` is supported: ``n`` > 1 is answered with a 400 (a fake limitation, said so in the
  message) rather than silently returning one choice.
* Moderations flag ``violence`` when the input contains "kill" or "murder".
* Azure: a user message containing :data:`AZURE_CONTENT_FILTER_TRIGGER` gets Azure's 400
  ``content_filter`` error, with ``innererror.content_filter_result``.
* Non-streaming chat responses carry an unknown extra field ``"x_fake_extra": "kept"`` so tests can
  check that unknown response fields survive a proxy. Every request is recorded in ``.requests``.

Controls (thread-safe; set them from the test thread while the server runs)
---------------------------------------------------------------------------
``latency_ms`` (before the first byte), ``chunk_delay_ms`` (between SSE events), ``omit_usage``
(never send usage, not even when ``include_usage`` is asked), ``reply_text``, ``drop_mid_stream``
(close the connection, without finishing the chunked body, after that many SSE events),
``stream_words``, ``cached_tokens``, ``reasoning_tokens``, ``obfuscation`` (the ``obfuscation`` field
of OpenAI stream events), and ``fail_next(status, n=1, retry_after=None, body=None)``. They are
attributes of :class:`FakeOpenAI` and can be set together with :meth:`FakeOpenAI.behaviour`;
:meth:`FakeOpenAI.reset` restores the defaults and forgets recorded requests and pending failures.

References followed (looked up, not guessed)
--------------------------------------------
* OpenAI API reference, Chat Completions (create, the chunk object, ``stream_options``):
  "If set, an additional chunk will be streamed before the ``data: [DONE]`` message. The ``usage``
  field on this chunk shows the token usage statistics for the entire request, and the ``choices``
  field will always be an empty array. All other chunks will also include a ``usage`` field, but
  with a null value." and ``include_obfuscation`` ("adds random characters to an ``obfuscation``
  field on streaming delta events ... included by default"), as quoted by the generated SDK docs.
* openai-python (the installed SDK's source): ``_streaming.py`` (SSE decoding, stop at ``[DONE]``,
  ``event:`` lines), ``lib/_parsing/_embeddings.py`` (``encoding_format`` defaults to ``"base64"``
  and is decoded as native float32), ``lib/azure.py`` (``/deployments/{model}`` rewrite for
  chat/completions, completions, embeddings, images; ``api-key`` header; ``api-version`` query),
  ``_base_client.py`` (``retry-after-ms`` then ``retry-after``), ``types/`` for every shape
  (``ChatCompletionChunk``, ``CompletionUsage``, ``Response*Event``, ``Moderation``, ...).
* openai-python's live-recorded fixtures: ``.inline-snapshot/external/*.bin`` (byte-exact chat chunk
  streams: key order, the role chunk ``{"role":"assistant","content":"","refusal":null}``, tool-call
  argument deltas ``{"`` ``city`` ``":"`` ..., the ``choices: []`` usage chunk), and
  ``tests/lib/responses/test_responses.py`` (the Response object and its key order).
* A recorded Responses stream (prism-php's ``tests/Fixtures/openai/stream-*-responses-*.json``):
  ``event: <type>\\ndata: {"type":...,"sequence_number":N,...}`` framing.
* OpenAI error bodies (4-space indented ``{"error": {"message","type","param","code"}}``): raw bodies
  in syuchua/QFurina#9 (missing key), chatanywhere/GPT_API_free#427 (``invalid_api_key``),
  many RateLimitError dumps (``'type': 'requests', 'code': 'rate_limit_exceeded'``).
* Azure: MicrosoftDocs/azure-docs#114602 (no ``api-version`` -> 404 ``{"error":{"code":"404",
  "message": "Resource not found"}}``, byte-exact including the space), openai/codex#3725 (unsupported
  version -> 400 ``{"error":{"code":"BadRequest","message":"API version not supported"}}``),
  SciSharp/BotSharp#386 (401 body), Azure-Samples/azure-search-openai-demo-csharp#379
  (``DeploymentNotFound``), alex-wolf-ps/dbchatprov2#2 (429 message), Gitlawb/openclaude#273 and
  openai/openai-python#331 (``content_filter`` 400), the Azure content-filtering docs and recorded
  streams in microsoft/autogen#6465, langchain4j/langchain4j#2385, AbanteAI mentat#429 (first chunk
  ``{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[...]}``,
  alphabetically ordered keys, per-choice ``content_filter_results``).

Where sources disagree or are silent, the choice is noted in a comment at that spot (e.g. model
``created`` timestamps are approximate, Azure 5xx bodies use the OpenAI shape it passes through).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import hashlib
import json
import logging
import math
import random
import re
import socket
import string
import struct
import sys
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import (
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from dataclasses import dataclass, field, fields, replace
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qsl

import orjson
import uvicorn

__all__ = [
    "AZURE_API_VERSIONS",
    "AZURE_CONTENT_FILTER_TRIGGER",
    "DEFAULT_API_KEY",
    "DEFAULT_AZURE_DEPLOYMENTS",
    "DEFAULT_MODELS",
    "ECHO_MAX_WORDS",
    "Behaviour",
    "FakeOpenAI",
    "FakeOpenAIApp",
    "RecordedRequest",
    "UpstreamState",
    "embedding_for",
    "main",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Json = dict[str, Any]

DEFAULT_API_KEY = "sk-fake-upstream-0123456789abcdef"
ECHO_MAX_WORDS = 50
AZURE_CONTENT_FILTER_TRIGGER = "FAKE_CONTENT_FILTER"
SYSTEM_FINGERPRINT = "fp_8b0a5ec0de"
EMBEDDING_DIMENSIONS = 8
TOOL_ARGUMENT_PIECES = ('{"', "city", '":"', "Paris", '"}')

# id -> (created, owned_by). The created values are approximate (taken from /v1/models listings of
# the time); nothing in the gateway should depend on them.
DEFAULT_MODELS: dict[str, tuple[int, str]] = {
    "gpt-4o-mini": (1721172741, "system"),
    "gpt-4o-mini-2024-07-18": (1721172717, "system"),
    "gpt-4o": (1715367049, "system"),
    "gpt-4o-2024-08-06": (1722814719, "system"),
    "gpt-4.1": (1744316542, "system"),
    "gpt-4.1-2025-04-14": (1744315746, "system"),
    "gpt-4.1-mini": (1744318173, "system"),
    "gpt-4.1-mini-2025-04-14": (1744317547, "system"),
    "gpt-3.5-turbo": (1677610602, "openai"),
    "gpt-3.5-turbo-0125": (1706048358, "system"),
    "gpt-3.5-turbo-instruct": (1692901427, "system"),
    "text-embedding-3-small": (1705948997, "system"),
    "text-embedding-3-large": (1705953180, "system"),
    "text-embedding-ada-002": (1671217299, "openai-internal"),
    "omni-moderation-latest": (1731689265, "system"),
    "omni-moderation-2024-09-26": (1732734466, "system"),
    "text-moderation-latest": (1692901427, "system"),
    "dall-e-2": (1698798177, "system"),
    "dall-e-3": (1698785189, "system"),
    "gpt-image-1": (1745517030, "system"),
}

# The API answers an alias with the snapshot it resolved to (e.g. "gpt-4o-mini" ->
# "gpt-4o-mini-2024-07-18" in the recorded fixtures); other ids come back as sent.
MODEL_SNAPSHOTS: dict[str, str] = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-3.5-turbo": "gpt-3.5-turbo-0125",
}

# deployment name -> underlying model name, which is what Azure puts in the `model` field.
DEFAULT_AZURE_DEPLOYMENTS: dict[str, str] = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-35-turbo-instruct": "gpt-35-turbo-instruct",
    "text-embedding-3-small": "text-embedding-3-small",
    "text-embedding-ada-002": "text-embedding-ada-002",
}

# Data-plane inference versions that Azure OpenAI has served (GA and preview). Anything else is
# "API version not supported".
AZURE_API_VERSIONS: frozenset[str] = frozenset(
    {
        "2022-12-01",
        "2023-05-15",
        "2023-06-01-preview",
        "2023-07-01-preview",
        "2023-08-01-preview",
        "2023-09-01-preview",
        "2023-10-01-preview",
        "2023-12-01-preview",
        "2024-02-01",
        "2024-02-15-preview",
        "2024-03-01-preview",
        "2024-04-01-preview",
        "2024-05-01-preview",
        "2024-06-01",
        "2024-07-01-preview",
        "2024-08-01-preview",
        "2024-09-01-preview",
        "2024-10-01-preview",
        "2024-10-21",
        "2024-12-01-preview",
        "2025-01-01-preview",
        "2025-02-01-preview",
        "2025-03-01-preview",
        "2025-04-01-preview",
    }
)

_AZURE_OPERATIONS = {
    "chat/completions": "ChatCompletions_Create",
    "completions": "Completions_Create",
    "embeddings": "Embeddings_Create",
}
_AZURE_PATH = re.compile(r"^/openai/deployments/([^/]+)/(.+)$")

_JSON = "application/json"
_SSE = "text/event-stream; charset=utf-8"
_WORDS = re.compile(r"\s*\S+")
_ALNUM = string.ascii_letters + string.digits
_OBFUSCATION_ALPHABET = "qX7vLm2PzR9kT4wBnH6cJd8sYf3gVa5e"
_RANDOM = random.Random()

# Real Azure bodies, byte for byte (note the space after "message": in the 404).
_AZURE_404 = b'{"error":{"code":"404","message": "Resource not found"}}'
_AZURE_BAD_VERSION = b'{"error":{"code":"BadRequest","message":"API version not supported"}}'
_AZURE_401 = orjson.dumps(
    {
        "error": {
            "code": "401",
            "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
            "provide a valid key for an active subscription and use a correct regional API endpoint "
            "for your resource.",
        }
    }
)
_AZURE_DEPLOYMENT_NOT_FOUND = orjson.dumps(
    {
        "error": {
            "code": "DeploymentNotFound",
            "message": "The API deployment for this resource does not exist. If you created the deployment "
            "within the last 5 minutes, please wait a moment and try again.",
        }
    }
)

_SAFE = {"filtered": False, "severity": "safe"}
_NOT_DETECTED = {"filtered": False, "detected": False}
# Prompt annotations carry a jailbreak verdict; completions carry protected-material verdicts.
_AZURE_PROMPT_FILTER = {
    "hate": _SAFE,
    "jailbreak": _NOT_DETECTED,
    "self_harm": _SAFE,
    "sexual": _SAFE,
    "violence": _SAFE,
}
_AZURE_OUTPUT_FILTER = {
    "hate": _SAFE,
    "protected_material_code": _NOT_DETECTED,
    "protected_material_text": _NOT_DETECTED,
    "self_harm": _SAFE,
    "sexual": _SAFE,
    "violence": _SAFE,
}
# Streamed content chunks carry the four harm categories only (as in the recorded streams).
_AZURE_STREAM_FILTER = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}
_AZURE_PROMPT_FILTER_RESULTS = [{"prompt_index": 0, "content_filter_results": _AZURE_PROMPT_FILTER}]

_MODERATION_CATEGORIES = (
    "sexual",
    "sexual/minors",
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "violence",
    "violence/graphic",
)
_VIOLENT_WORDS = ("kill", "murder")


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def _rand_alnum(n: int) -> str:
    return "".join(_RANDOM.choices(_ALNUM, k=n))


def _rand_hex(n: int) -> str:
    return f"{_RANDOM.getrandbits(4 * n):0{n}x}"


def _split_words(text: str) -> list[str]:
    """Split into streamable pieces, each keeping the whitespace before it (like BPE tokens do)."""
    return _WORDS.findall(text)


def _count_words(text: str) -> int:
    return len(text.split())


def _cycle_words(words: list[str], n: int) -> list[str]:
    """Exactly ``n`` pieces: the reply repeated or cut, every repeat separated by a space."""
    source = words or ["lorem"]
    out: list[str] = []
    while len(out) < n:
        for piece in source:
            if len(out) == n:
                break
            out.append(piece if not out or piece[:1].isspace() else " " + piece)
    return out


def _content_text(content: Any) -> str:
    """The text of a message ``content``: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part.get("text", "") for part in content if isinstance(part, dict)]
        return " ".join(t for t in texts if isinstance(t, str) and t)
    return ""


def _pretty(obj: Any) -> bytes:
    # api.openai.com pretty-prints its JSON responses with two spaces (streams are compact).
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2)


def _compact(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _fmt_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _mask_key(key: str) -> str:
    # The API echoes a wrong key masked, e.g. "sk-4sJHr*****...w8ZP".
    if len(key) <= 12:
        return "*" * len(key)
    return key[:8] + "*" * (len(key) - 12) + key[-4:]


def _obfuscation(piece: str) -> str:
    # Real obfuscation is random padding that evens out event sizes; a deterministic stand-in keeps
    # byte-level assertions possible.
    return _OBFUSCATION_ALPHABET[: max(2, 16 - len(piece))]


def embedding_for(text: str | Sequence[int], dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """The vector the fake returns for one embeddings input (a string or a list of token ids).

    Values are float32 (so the base64 and float encodings decode to exactly the same numbers) and
    the vector has unit length, like OpenAI's embeddings.
    """
    return _embedding_array(text, dimensions).tolist()


def _embedding_array(text: str | Sequence[int], dimensions: int) -> array.array[float]:
    seed = text.encode() if isinstance(text, str) else b"tokens:" + ",".join(map(str, text)).encode()
    raw: list[float] = []
    counter = 0
    while len(raw) < dimensions:
        digest = hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        raw.extend(v / 2**31 - 1.0 for v in struct.unpack("<8I", digest))
        counter += 1
    raw = raw[:dimensions]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return array.array("f", (v / norm for v in raw))


def _embedding_base64(values: array.array[float]) -> str:
    data = values
    if sys.byteorder == "big":  # the SDK decodes little-endian float32 on every platform we run
        data = array.array("f", values)
        data.byteswap()
    return base64.b64encode(data.tobytes()).decode()


def _png_1x1() -> bytes:
    """A valid 1x1 transparent PNG, built here rather than pasted as an opaque blob."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x00\x00\x00\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


_PNG = _png_1x1()
_PNG_B64 = base64.b64encode(_PNG).decode()


class _Template:
    """A serialised JSON document with holes, so the streaming hot loop only serialises the values.

    Holes are marked in ``doc`` with :meth:`slot` strings; :meth:`render` fills them in the order of
    their slot numbers, whatever order they end up in the bytes.
    """

    def __init__(self, doc: Any, prefix: bytes = b"data: ", suffix: bytes = b"\n\n") -> None:
        raw = orjson.dumps(doc)
        found: list[tuple[int, int, int]] = []
        index = 0
        while True:
            marker = orjson.dumps(self.slot(index))
            at = raw.find(marker)
            if at < 0:
                break
            found.append((at, len(marker), index))
            index += 1
        found.sort()
        self._parts: list[bytes] = []
        self._order = [slot for _, _, slot in found]
        cursor = 0
        for at, length, _ in found:
            self._parts.append(raw[cursor:at])
            cursor = at + length
        self._parts.append(raw[cursor:])
        self._parts[0] = prefix + self._parts[0]
        self._parts[-1] = self._parts[-1] + suffix

    @staticmethod
    def slot(index: int) -> str:
        """The placeholder string for hole number ``index``."""
        return f"\ue000slot{index}\ue000"

    def render(self, *values: Any) -> bytes:
        """The document with each hole replaced by the JSON of ``values[slot]``."""
        out = [self._parts[0]]
        for slot, part in zip(self._order, self._parts[1:], strict=True):
            out.append(orjson.dumps(values[slot]))
            out.append(part)
        return b"".join(out)


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _sse_event(event: str, obj: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


_DONE = b"data: [DONE]\n\n"


# --------------------------------------------------------------------------------------------------
# State: behaviour controls, recorded requests, injected failures
# --------------------------------------------------------------------------------------------------


@dataclass
class Behaviour:
    """The knobs a test can turn. Every request works on a snapshot taken when it arrives."""

    latency_ms: float = 0.0
    """Sleep this long before the first byte of every response (errors included)."""
    chunk_delay_ms: float = 0.0
    """Sleep this long between two SSE events of a stream."""
    omit_usage: bool = False
    """Never send usage: no ``usage`` in bodies, no usage chunk even with ``include_usage``."""
    reply_text: str | None = None
    """A fixed reply instead of the echo of the last user message."""
    drop_mid_stream: int | None = None
    """Close the connection after this many SSE events (the chunked body is left unfinished)."""
    stream_words: int | None = None
    """Make every text reply exactly this many words, hence this many content chunks."""
    cached_tokens: int = 0
    """Reported as ``prompt_tokens_details.cached_tokens`` / ``input_tokens_details.cached_tokens``."""
    reasoning_tokens: int = 0
    """Reported as reasoning tokens (and counted in the completion tokens)."""
    obfuscation: bool = True
    """Add the ``obfuscation`` field to OpenAI stream events, as the API does by default."""


_BEHAVIOUR_FIELDS = frozenset(f.name for f in fields(Behaviour))


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    """Lower-case names; repeated headers joined with ", "."""
    body: Any
    """The parsed JSON body, or the raw bytes when it is not JSON (``b""`` when empty)."""
    raw_body: bytes
    flavour: Literal["openai", "azure", "other"]
    deployment: str | None = None
    """Azure: the deployment named in the path."""
    api_version: str | None = None
    """Azure: the ``api-version`` query parameter."""
    timestamp: float = 0.0

    @property
    def json(self) -> Any:
        """The parsed JSON body (``None`` when the body was not JSON)."""
        return None if isinstance(self.body, bytes) else self.body


@dataclass(frozen=True)
class _Failure:
    status: int
    retry_after: float | None
    body: Any
    headers: tuple[tuple[str, str], ...]
    match: str | None


class UpstreamState:
    """Everything the ASGI app shares with the test thread, behind one lock."""

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        models: Mapping[str, tuple[int, str]] | Iterable[str] | None = None,
        azure_deployments: Mapping[str, str] | None = None,
        azure_api_versions: Iterable[str] | None = None,
        behaviour: Behaviour | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self.api_key = api_key
        self.models: dict[str, tuple[int, str]] = dict(DEFAULT_MODELS)
        if isinstance(models, Mapping):
            self.models.update(models)
        elif models is not None:
            self.models.update(dict.fromkeys(models, (1700000000, "system")))
        self.azure_deployments: dict[str, str] = dict(
            DEFAULT_AZURE_DEPLOYMENTS if azure_deployments is None else azure_deployments
        )
        self.azure_api_versions: set[str] = set(
            AZURE_API_VERSIONS if azure_api_versions is None else azure_api_versions
        )
        self._defaults = behaviour or Behaviour()
        self._behaviour = replace(self._defaults)
        self._requests: list[RecordedRequest] = []
        self._failures: deque[_Failure] = deque()

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
        with self._lock:
            self._requests.append(request)

    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def add_failures(self, failure: _Failure, n: int) -> None:
        with self._lock:
            self._failures.extend([failure] * n)

    def take_failure(self, path: str) -> _Failure | None:
        """The first pending failure that applies to ``path``, removed from the queue."""
        with self._lock:
            for failure in self._failures:
                if failure.match is None or failure.match in path:
                    self._failures.remove(failure)
                    return failure
            return None

    def reset(self) -> None:
        with self._lock:
            self._behaviour = replace(self._defaults)
            self._requests.clear()
            self._failures.clear()


# --------------------------------------------------------------------------------------------------
# The ASGI app
# --------------------------------------------------------------------------------------------------


@dataclass
class _Reply:
    status: int
    content_type: str = _JSON
    body: bytes = b""
    events: Iterator[bytes] | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)


class _ApiError(Exception):
    """Raised by handlers to answer with an error reply."""

    def __init__(self, reply: _Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


class _DropConnection(Exception):
    """Raised after some SSE events to make uvicorn close the socket mid-body (``drop_mid_stream``)."""


class _QuietDrops(logging.Filter):
    """Keeps the deliberate drops out of uvicorn's error log; real app errors still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _DropConnection)


def _install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDrops) for f in logger.filters):
        logger.addFilter(_QuietDrops())


@dataclass
class _Ctx:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw_body: bytes
    body: Any
    flavour: Literal["openai", "azure", "other"]
    deployment: str | None
    operation: str | None
    api_version: str | None


@dataclass
class _Plan:
    """What a completion-like request will answer, independent of the wire format."""

    pieces: list[str]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    tool_name: str | None = None
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def is_tool_call(self) -> bool:
        return self.tool_name is not None


def _openai_error(
    status: int, message: str, type_: str | None, param: str | None = None, code: Any = None
) -> _Reply:
    # api.openai.com indents error bodies with four spaces and ends them with a newline.
    body = json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}, indent=4)
    return _Reply(status, body=(body + "\n").encode())


def _openai_error_compact(
    status: int, message: str, type_: str | None, param: Any = None, code: Any = None
) -> _Reply:
    # Errors Azure passes through from the model service keep the OpenAI shape, serialised compactly.
    return _Reply(
        status, body=_compact({"error": {"message": message, "type": type_, "param": param, "code": code}})
    )


def _rate_limit_message(model: str) -> str:
    return (
        f"Rate limit reached for {model} in organization org-fake on requests per min (RPM): Limit 500, "
        "Used 500, Requested 1. Please try again in 120ms. Visit https://platform.openai.com/account/rate-limits "
        "to learn more."
    )


_SERVER_ERROR_MESSAGE = "The server had an error while processing your request. Sorry about that!"
_PARSE_ERROR_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
    "library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you "
    "have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)"
)
_MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer "
    "auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're "
    "accessing the API from your browser and are prompted for a username and password. You can obtain an API "
    "key from https://platform.openai.com/account/api-keys."
)


class FakeOpenAIApp:
    """The ASGI application: ``FakeOpenAIApp(UpstreamState(...))`` can be mounted in any ASGI server;
    :class:`FakeOpenAI` builds one and runs it with uvicorn."""

    def __init__(self, state: UpstreamState | None = None) -> None:
        self.state = state or UpstreamState()

    # ---- ASGI entry point ---------------------------------------------------------------------

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
                flavour=ctx.flavour,
                deployment=ctx.deployment,
                api_version=ctx.api_version,
                timestamp=time.time(),
            )
        )
        behaviour = self.state.behaviour()
        try:
            reply = self._dispatch(ctx, behaviour)
        except _ApiError as exc:
            reply = exc.reply
        if behaviour.latency_ms > 0:
            await asyncio.sleep(behaviour.latency_ms / 1000)
        await self._send(send, ctx, reply, behaviour)

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
    def _context(scope: Scope, raw: bytes) -> _Ctx:
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
        path: str = scope["path"]
        flavour: Literal["openai", "azure", "other"] = "other"
        deployment = operation = api_version = None
        if path == "/v1" or path.startswith("/v1/"):
            flavour = "openai"
        elif path.startswith("/openai/"):
            flavour = "azure"
            api_version = query.get("api-version")
            match = _AZURE_PATH.match(path)
            if match:
                deployment, operation = match.group(1), match.group(2)
        return _Ctx(
            scope["method"], path, query, headers, raw, body, flavour, deployment, operation, api_version
        )

    async def _send(self, send: Send, ctx: _Ctx, reply: _Reply, behaviour: Behaviour) -> None:
        headers = [(b"content-type", reply.content_type.encode())]
        if reply.events is None:
            headers.append((b"content-length", str(len(reply.body)).encode()))
        headers.extend(self._flavour_headers(ctx, reply, behaviour))
        headers.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers)
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        if reply.events is None:
            await send({"type": "http.response.body", "body": reply.body, "more_body": False})
            return
        delay = behaviour.chunk_delay_ms / 1000
        drop = behaviour.drop_mid_stream
        for sent, event in enumerate(reply.events):
            if drop is not None and sent >= drop:
                raise _DropConnection(f"dropped after {sent} events")
            if sent and delay > 0:
                await asyncio.sleep(delay)
            # One ASGI message per SSE event: uvicorn writes each to the socket as its own chunk.
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    def _flavour_headers(ctx: _Ctx, reply: _Reply, behaviour: Behaviour) -> list[tuple[bytes, bytes]]:
        limited = reply.status == 429
        if ctx.flavour == "openai":
            return [
                (b"x-request-id", f"req_{uuid.uuid4().hex}".encode()),
                (b"openai-organization", b"fake-org"),
                (b"openai-processing-ms", str(int(behaviour.latency_ms)).encode()),
                (b"openai-project", b"proj_fake"),
                (b"openai-version", b"2020-10-01"),
                (b"x-ratelimit-limit-requests", b"10000"),
                (b"x-ratelimit-limit-tokens", b"30000000"),
                (b"x-ratelimit-remaining-requests", b"0" if limited else b"9999"),
                (b"x-ratelimit-remaining-tokens", b"0" if limited else b"29999990"),
                (b"x-ratelimit-reset-requests", b"6ms"),
                (b"x-ratelimit-reset-tokens", b"0s"),
                (b"x-content-type-options", b"nosniff"),
            ]
        if ctx.flavour == "azure":
            headers = [
                (b"apim-request-id", str(uuid.uuid4()).encode()),
                (b"x-request-id", str(uuid.uuid4()).encode()),
                (b"x-ms-region", b"East US"),
                (b"x-content-type-options", b"nosniff"),
                (b"strict-transport-security", b"max-age=31536000; includeSubDomains; preload"),
                (b"x-ratelimit-remaining-requests", b"0" if limited else b"99"),
                (b"x-ratelimit-remaining-tokens", b"0" if limited else b"99990"),
            ]
            if ctx.deployment:
                headers.append((b"x-ms-deployment-name", ctx.deployment.encode("latin-1")))
                headers.append((b"x-ms-rai-invoked", b"true"))
            return headers
        return []

    # ---- routing ------------------------------------------------------------------------------

    def _dispatch(self, ctx: _Ctx, behaviour: Behaviour) -> _Reply:
        if ctx.flavour in ("openai", "azure"):
            failure = self.state.take_failure(ctx.path)
            if failure is not None:
                return self._failure_reply(ctx, failure)
        if ctx.flavour == "openai":
            return self._dispatch_openai(ctx, behaviour)
        if ctx.flavour == "azure":
            return self._dispatch_azure(ctx, behaviour)
        if ctx.method == "GET" and ctx.path.startswith("/fake-images/") and ctx.path.endswith(".png"):
            return _Reply(200, content_type="image/png", body=_PNG)
        if ctx.method == "GET" and ctx.path in ("/", "/health", "/healthz"):
            return _Reply(200, body=b'{"status":"ok"}')
        return _openai_error(404, f"Invalid URL ({ctx.method} {ctx.path})", "invalid_request_error")

    def _dispatch_openai(self, ctx: _Ctx, behaviour: Behaviour) -> _Reply:
        auth = ctx.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if not auth or scheme.lower() != "bearer" or not token.strip():
            return _openai_error(401, _MISSING_KEY_MESSAGE, "invalid_request_error")
        if token.strip() != self.state.api_key:
            return _openai_error(
                401,
                f"Incorrect API key provided: {_mask_key(token.strip())}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                code="invalid_api_key",
            )
        sub = ctx.path[len("/v1") :]
        if ctx.method == "GET" and sub == "/models":
            return self._list_models()
        if ctx.method == "GET" and sub.startswith("/models/"):
            return self._retrieve_model(sub[len("/models/") :])
        handlers: dict[str, Callable[[_Ctx, Behaviour, Json], _Reply]] = {
            "/chat/completions": self._chat,
            "/completions": self._completions,
            "/embeddings": self._embeddings,
            "/responses": self._responses,
            "/moderations": self._moderations,
            "/images/generations": self._images,
        }
        handler = handlers.get(sub)
        if ctx.method != "POST" or handler is None:
            return _openai_error(404, f"Invalid URL ({ctx.method} {ctx.path})", "invalid_request_error")
        return handler(ctx, behaviour, self._json_body(ctx))

    def _dispatch_azure(self, ctx: _Ctx, behaviour: Behaviour) -> _Reply:
        # Azure's front door answers a missing api-version with a bare 404 before looking at the key.
        if not ctx.api_version:
            return _Reply(404, body=_AZURE_404)
        if ctx.api_version not in self.state.azure_api_versions:
            return _Reply(400, body=_AZURE_BAD_VERSION)
        if ctx.headers.get("api-key") != self.state.api_key:
            return _Reply(401, body=_AZURE_401)
        if ctx.method != "POST" or ctx.deployment is None or ctx.operation not in _AZURE_OPERATIONS:
            return _Reply(404, body=_AZURE_404)
        model = self.state.azure_deployments.get(ctx.deployment)
        if model is None:
            return _Reply(404, body=_AZURE_DEPLOYMENT_NOT_FOUND)
        body = self._json_body(ctx, azure=True)
        body = {**body, "model": model}
        if ctx.operation == "chat/completions":
            return self._chat(ctx, behaviour, body)
        if ctx.operation == "completions":
            return self._completions(ctx, behaviour, body)
        return self._embeddings(ctx, behaviour, body)

    # ---- shared validation --------------------------------------------------------------------

    @staticmethod
    def _json_body(ctx: _Ctx, azure: bool = False) -> Json:
        if not isinstance(ctx.body, dict):
            error = _openai_error_compact if azure else _openai_error
            raise _ApiError(error(400, _PARSE_ERROR_MESSAGE, "invalid_request_error"))
        return ctx.body

    def _error(
        self, ctx: _Ctx, status: int, message: str, param: str | None = None, code: Any = None
    ) -> _ApiError:
        make = _openai_error_compact if ctx.flavour == "azure" else _openai_error
        return _ApiError(make(status, message, "invalid_request_error", param, code))

    def _resolve_model(self, ctx: _Ctx, body: Json) -> str:
        """The model name the response reports; raises the API's errors for a missing/unknown one."""
        model = body.get("model")
        if ctx.flavour == "azure":
            return str(model)
        if not model:
            raise self._error(ctx, 400, "you must provide a model parameter")
        if not isinstance(model, str) or model not in self.state.models:
            raise _ApiError(
                _openai_error(
                    404,
                    f"The model `{model}` does not exist or you do not have access to it.",
                    "invalid_request_error",
                    code="model_not_found",
                )
            )
        return MODEL_SNAPSHOTS.get(model, model)

    def _require(self, ctx: _Ctx, body: Json, name: str) -> Any:
        value = body.get(name)
        if value is None:
            raise self._error(
                ctx, 400, f"Missing required parameter: '{name}'.", name, "missing_required_parameter"
            )
        return value

    def _check_n(self, ctx: _Ctx, body: Json) -> None:
        n = body.get("n")
        if n not in (None, 1):
            raise self._error(ctx, 400, f"The fake upstream only supports n=1 (got n={n}).", "n")

    def _check_azure_filter(self, ctx: _Ctx, text: str) -> None:
        if ctx.flavour != "azure" or AZURE_CONTENT_FILTER_TRIGGER not in text:
            return
        violent = {**_AZURE_PROMPT_FILTER, "violence": {"filtered": True, "severity": "medium"}}
        body = {
            "error": {
                "message": "The response was filtered due to the prompt triggering Azure OpenAI's content "
                "management policy. Please modify your prompt and retry. To learn more about our content "
                "filtering policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766",
                "type": None,
                "param": "prompt",
                "code": "content_filter",
                "status": 400,
                "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": violent},
            }
        }
        raise _ApiError(_Reply(400, body=_compact(body)))

    # ---- planning replies ---------------------------------------------------------------------

    @staticmethod
    def _prompt_tokens(messages: Iterable[Any], tools: Any = None) -> int:
        total = 3
        for message in messages:
            if isinstance(message, dict):
                total += 3 + _count_words(_content_text(message.get("content")))
            elif isinstance(message, str):
                total += 3 + _count_words(message)
        if tools:
            total += len(orjson.dumps(tools)) // 4
        return total

    @staticmethod
    def _text_pieces(base: str, behaviour: Behaviour, limit: Any) -> tuple[list[str], bool]:
        words = _split_words(base)
        if behaviour.stream_words is not None:
            words = _cycle_words(words, max(0, int(behaviour.stream_words)))
        if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit < len(words):
            return words[:limit], True
        return words, False

    @staticmethod
    def _echo(text: str) -> str:
        words = text.split()
        return " ".join(["Echo:", *words[:ECHO_MAX_WORDS]])

    @staticmethod
    def _pick_tool(tools: Any, tool_choice: Any, last_role: str | None, last_text: str) -> str | None:
        """The name of the function the fake model calls, or None for a text reply."""
        if not isinstance(tools, list) or not tools or tool_choice == "none":
            return None
        names: list[str] = []
        for tool in tools:
            if not isinstance(tool, dict) or tool.get("type", "function") != "function":
                continue
            # Chat Completions nests the name under "function"; the Responses API does not.
            fn = tool.get("function")
            name = fn.get("name") if isinstance(fn, dict) else tool.get("name")
            if isinstance(name, str):
                names.append(name)
        if not names:
            return None
        if isinstance(tool_choice, dict):
            fn = tool_choice.get("function")
            forced = fn.get("name") if isinstance(fn, dict) else tool_choice.get("name")
            if isinstance(forced, str):
                return forced
        if tool_choice == "required":
            return names[0]
        if last_role == "user" and "weather" in last_text.lower():
            return names[0]
        return None

    def _plan(
        self,
        behaviour: Behaviour,
        *,
        prompt_tokens: int,
        last_role: str | None,
        last_text: str,
        tools: Any,
        tool_choice: Any,
        limit: Any,
    ) -> _Plan:
        cached = min(max(0, behaviour.cached_tokens), prompt_tokens)
        reasoning = max(0, behaviour.reasoning_tokens)
        tool_name = self._pick_tool(tools, tool_choice, last_role, last_text)
        if tool_name is not None:
            pieces = list(TOOL_ARGUMENT_PIECES)
            return _Plan(
                pieces=pieces,
                finish_reason="tool_calls",
                prompt_tokens=prompt_tokens,
                completion_tokens=len(pieces) + reasoning,
                cached_tokens=cached,
                reasoning_tokens=reasoning,
                tool_name=tool_name,
                tool_call_id=f"call_{_rand_alnum(24)}",
            )
        if behaviour.reply_text is not None:
            base = behaviour.reply_text
        elif last_role == "tool":
            base = "Tool result: " + last_text
        else:
            base = self._echo(last_text)
        pieces, truncated = self._text_pieces(base, behaviour, limit)
        return _Plan(
            pieces=pieces,
            finish_reason="length" if truncated else "stop",
            prompt_tokens=prompt_tokens,
            completion_tokens=len(pieces) + reasoning,
            cached_tokens=cached,
            reasoning_tokens=reasoning,
        )

    @staticmethod
    def _chat_usage(plan: _Plan, azure: bool) -> Json:
        if azure:  # Azure serialises every object with its keys in alphabetical order.
            return {
                "completion_tokens": plan.completion_tokens,
                "completion_tokens_details": {
                    "accepted_prediction_tokens": 0,
                    "audio_tokens": 0,
                    "reasoning_tokens": plan.reasoning_tokens,
                    "rejected_prediction_tokens": 0,
                },
                "prompt_tokens": plan.prompt_tokens,
                "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": plan.cached_tokens},
                "total_tokens": plan.prompt_tokens + plan.completion_tokens,
            }
        return {
            "prompt_tokens": plan.prompt_tokens,
            "completion_tokens": plan.completion_tokens,
            "total_tokens": plan.prompt_tokens + plan.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": plan.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": plan.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    @staticmethod
    def _service_tier(body: Json) -> str:
        requested = body.get("service_tier")
        if requested in ("flex", "scale", "priority"):
            return str(requested)
        return "priority" if requested == "fast" else "default"

    # ---- POST chat/completions ----------------------------------------------------------------

    def _chat(self, ctx: _Ctx, behaviour: Behaviour, body: Json) -> _Reply:
        model = self._resolve_model(ctx, body)
        messages = self._require(ctx, body, "messages")
        if not isinstance(messages, list) or not messages:
            raise self._error(
                ctx,
                400,
                "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty "
                "array instead.",
                "messages",
                "empty_array",
            )
        self._check_n(ctx, body)
        last = messages[-1] if isinstance(messages[-1], dict) else {}
        last_role = last.get("role")
        last_user_text = next(
            (
                _content_text(m.get("content"))
                for m in reversed(messages)
                if isinstance(m, dict) and m.get("role") == "user"
            ),
            "",
        )
        last_text = _content_text(last.get("content")) if last_role == "tool" else last_user_text
        self._check_azure_filter(ctx, last_user_text)
        limit = body.get("max_completion_tokens")
        if limit is None:
            limit = body.get("max_tokens")
        plan = self._plan(
            behaviour,
            prompt_tokens=self._prompt_tokens(messages, body.get("tools")),
            last_role=last_role,
            last_text=last_text,
            tools=body.get("tools"),
            tool_choice=body.get("tool_choice"),
            limit=limit,
        )
        azure = ctx.flavour == "azure"
        cid = f"chatcmpl-{_rand_alnum(29)}"
        created = int(time.time())
        if body.get("stream") is True:
            options = body.get("stream_options") or {}
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            include_usage = include_usage and not behaviour.omit_usage
            if azure:
                events = self._chat_stream_azure(plan, model, cid, created, include_usage)
            else:
                obfuscate = behaviour.obfuscation and not (
                    isinstance(options, dict) and options.get("include_obfuscation") is False
                )
                tier = self._service_tier(body)
                events = self._chat_stream_openai(plan, model, cid, created, tier, include_usage, obfuscate)
            return _Reply(200, content_type=_SSE, events=events)
        usage = None if behaviour.omit_usage else self._chat_usage(plan, azure)
        if azure:
            return _Reply(200, body=_compact(self._chat_body_azure(plan, model, cid, created, usage)))
        return _Reply(
            200,
            body=_pretty(self._chat_body_openai(plan, model, cid, created, self._service_tier(body), usage)),
        )

    @staticmethod
    def _chat_body_openai(
        plan: _Plan, model: str, cid: str, created: int, tier: str, usage: Json | None
    ) -> Json:
        message: Json
        if plan.is_tool_call:
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": plan.tool_call_id,
                        "type": "function",
                        "function": {"name": plan.tool_name, "arguments": plan.text},
                    }
                ],
                "refusal": None,
                "annotations": [],
            }
        else:
            message = {"role": "assistant", "content": plan.text, "refusal": None, "annotations": []}
        out: Json = {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": plan.finish_reason}
            ],
        }
        if usage is not None:
            out["usage"] = usage
        out["service_tier"] = tier
        out["system_fingerprint"] = SYSTEM_FINGERPRINT
        out["x_fake_extra"] = "kept"
        return out

    @staticmethod
    def _chat_body_azure(plan: _Plan, model: str, cid: str, created: int, usage: Json | None) -> Json:
        message: Json
        if plan.is_tool_call:
            message = {
                "annotations": [],
                "content": None,
                "refusal": None,
                "role": "assistant",
                "tool_calls": [
                    {
                        "function": {"arguments": plan.text, "name": plan.tool_name},
                        "id": plan.tool_call_id,
                        "type": "function",
                    }
                ],
            }
            filters: Json = {}  # tool calls are not annotated
        else:
            message = {"annotations": [], "content": plan.text, "refusal": None, "role": "assistant"}
            filters = _AZURE_OUTPUT_FILTER
        out: Json = {
            "choices": [
                {
                    "content_filter_results": filters,
                    "finish_reason": plan.finish_reason,
                    "index": 0,
                    "logprobs": None,
                    "message": message,
                }
            ],
            "created": created,
            "id": cid,
            "model": model,
            "object": "chat.completion",
            "prompt_filter_results": _AZURE_PROMPT_FILTER_RESULTS,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        if usage is not None:
            out["usage"] = usage
        out["x_fake_extra"] = "kept"
        return out

    def _chat_stream_openai(
        self,
        plan: _Plan,
        model: str,
        cid: str,
        created: int,
        tier: str,
        include_usage: bool,
        obfuscate: bool,
    ) -> Iterator[bytes]:
        head: Json = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": tier,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

        def chunk(choices: list[Json], usage: Json | None = None, pad: str = "") -> bytes:
            doc = {**head, "choices": choices}
            if include_usage:
                doc["usage"] = usage
            if obfuscate:
                doc["obfuscation"] = _obfuscation(pad)
            return _sse(doc)

        def choice(delta: Json, finish_reason: str | None = None) -> list[Json]:
            return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

        if plan.is_tool_call:
            yield chunk(
                choice(
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": plan.tool_call_id,
                                "type": "function",
                                "function": {"name": plan.tool_name, "arguments": ""},
                            }
                        ],
                        "refusal": None,
                    }
                )
            )
            for piece in plan.pieces:
                yield chunk(
                    choice({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}), pad=piece
                )
        else:
            yield chunk(choice({"role": "assistant", "content": "", "refusal": None}))
            # The hot loop of the benchmarks: serialise the chunk once, then only the piece per event.
            doc: Json = {**head, "choices": choice({"content": _Template.slot(0)})}
            if include_usage:
                doc["usage"] = None
            if obfuscate:
                doc["obfuscation"] = _Template.slot(1)
            template = _Template(doc)
            for piece in plan.pieces:
                yield template.render(piece, _obfuscation(piece))
        yield chunk(choice({}, plan.finish_reason))
        if include_usage:
            yield chunk([], self._chat_usage(plan, azure=False))
        yield _DONE

    def _chat_stream_azure(
        self, plan: _Plan, model: str, cid: str, created: int, include_usage: bool
    ) -> Iterator[bytes]:
        def chunk(choices: list[Json], usage: Json | None = None) -> bytes:
            doc: Json = {
                "choices": choices,
                "created": created,
                "id": cid,
                "model": model,
                "object": "chat.completion.chunk",
                "system_fingerprint": SYSTEM_FINGERPRINT,
            }
            if include_usage:
                doc["usage"] = usage
            return _sse(doc)

        def choice(delta: Json, filters: Json, finish_reason: str | None = None) -> list[Json]:
            return [
                {
                    "content_filter_results": filters,
                    "delta": delta,
                    "finish_reason": finish_reason,
                    "index": 0,
                    "logprobs": None,
                }
            ]

        # Azure opens every stream with the prompt annotations, in a chunk with empty metadata.
        first: Json = {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": _AZURE_PROMPT_FILTER_RESULTS,
        }
        if include_usage:
            first["usage"] = None
        yield _sse(first)
        if plan.is_tool_call:
            yield chunk(
                choice(
                    {
                        "content": None,
                        "refusal": None,
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "function": {"arguments": "", "name": plan.tool_name},
                                "id": plan.tool_call_id,
                                "index": 0,
                                "type": "function",
                            }
                        ],
                    },
                    {},
                )
            )
            for piece in plan.pieces:
                yield chunk(choice({"tool_calls": [{"function": {"arguments": piece}, "index": 0}]}, {}))
        else:
            yield chunk(choice({"content": "", "refusal": None, "role": "assistant"}, {}))
            doc: Json = {
                "choices": choice({"content": _Template.slot(0)}, _AZURE_STREAM_FILTER),
                "created": created,
                "id": cid,
                "model": model,
                "object": "chat.completion.chunk",
                "system_fingerprint": SYSTEM_FINGERPRINT,
            }
            if include_usage:
                doc["usage"] = None
            template = _Template(doc)
            for piece in plan.pieces:
                yield template.render(piece)
        yield chunk(choice({}, {}, plan.finish_reason))
        if include_usage:
            yield chunk([], self._chat_usage(plan, azure=True))
        yield _DONE

    # ---- POST completions (legacy) ------------------------------------------------------------

    def _completions(self, ctx: _Ctx, behaviour: Behaviour, body: Json) -> _Reply:
        model = self._resolve_model(ctx, body)
        prompt = self._require(ctx, body, "prompt")
        self._check_n(ctx, body)
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
            prompts = [" ".join(map(str, prompt))]
        elif isinstance(prompt, list) and prompt:
            prompts = [p if isinstance(p, str) else " ".join(map(str, p)) for p in prompt]
        else:
            raise self._error(ctx, 400, "Invalid value for 'prompt'.", "prompt")
        for text in prompts:
            self._check_azure_filter(ctx, text)
        # The legacy endpoint's max_tokens defaults to 16.
        limit = body.get("max_tokens")
        limit = 16 if limit is None else limit
        plans = [
            self._plan(
                behaviour,
                prompt_tokens=max(1, _count_words(text)),
                last_role="prompt",
                last_text=text,
                tools=None,
                tool_choice=None,
                limit=limit,
            )
            for text in prompts
        ]
        azure = ctx.flavour == "azure"
        cid = f"cmpl-{_rand_alnum(29)}"
        created = int(time.time())
        prompt_tokens = sum(p.prompt_tokens for p in plans)
        completion_tokens = sum(p.completion_tokens for p in plans)
        if azure:
            usage: Json | None = {
                "completion_tokens": completion_tokens,
                "prompt_tokens": prompt_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
        else:
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
        if behaviour.omit_usage:
            usage = None
        if body.get("stream") is True:
            options = body.get("stream_options") or {}
            include_usage = (
                isinstance(options, dict) and options.get("include_usage") is True and usage is not None
            )
            events = self._completions_stream(
                plans, model, cid, created, usage if include_usage else None, azure
            )
            return _Reply(200, content_type=_SSE, events=events)
        if azure:
            doc: Json = {
                "choices": [
                    {
                        "content_filter_results": _AZURE_OUTPUT_FILTER,
                        "finish_reason": p.finish_reason,
                        "index": i,
                        "logprobs": None,
                        "text": p.text,
                    }
                    for i, p in enumerate(plans)
                ],
                "created": created,
                "id": cid,
                "model": model,
                "object": "text_completion",
                "prompt_filter_results": [
                    {"prompt_index": i, "content_filter_results": _AZURE_PROMPT_FILTER}
                    for i in range(len(plans))
                ],
            }
            if usage is not None:
                doc["usage"] = usage
            return _Reply(200, body=_compact(doc))
        doc = {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {"text": p.text, "index": i, "logprobs": None, "finish_reason": p.finish_reason}
                for i, p in enumerate(plans)
            ],
        }
        if usage is not None:
            doc["usage"] = usage
        return _Reply(200, body=_pretty(doc))

    @staticmethod
    def _completions_stream(
        plans: list[_Plan], model: str, cid: str, created: int, usage: Json | None, azure: bool
    ) -> Iterator[bytes]:
        with_usage = usage is not None

        def chunk(choices: list[Json], final_usage: Json | None = None) -> bytes:
            if azure:
                doc: Json = {
                    "choices": choices,
                    "created": created,
                    "id": cid,
                    "model": model,
                    "object": "text_completion",
                }
            else:
                # Recorded legacy streams put "model" after "choices".
                doc = {
                    "id": cid,
                    "object": "text_completion",
                    "created": created,
                    "choices": choices,
                    "model": model,
                }
            if with_usage:
                doc["usage"] = final_usage
            return _sse(doc)

        def choice(index: int, text: str, finish_reason: str | None) -> list[Json]:
            if azure:
                return [
                    {
                        "content_filter_results": _AZURE_STREAM_FILTER if text else {},
                        "finish_reason": finish_reason,
                        "index": index,
                        "logprobs": None,
                        "text": text,
                    }
                ]
            return [{"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}]

        if azure:
            first: Json = {
                "choices": [],
                "created": 0,
                "id": "",
                "model": "",
                "object": "",
                "prompt_filter_results": [
                    {"prompt_index": i, "content_filter_results": _AZURE_PROMPT_FILTER}
                    for i in range(len(plans))
                ],
            }
            if with_usage:
                first["usage"] = None
            yield _sse(first)
        for index, plan in enumerate(plans):
            for piece in plan.pieces:
                yield chunk(choice(index, piece, None))
            yield chunk(choice(index, "", plan.finish_reason))
        if usage is not None:
            yield chunk([], usage)
        yield _DONE

    # ---- POST embeddings ----------------------------------------------------------------------

    def _embeddings(self, ctx: _Ctx, behaviour: Behaviour, body: Json) -> _Reply:
        model = self._resolve_model(ctx, body)
        raw_input = self._require(ctx, body, "input")
        inputs: list[str | list[int]]
        if isinstance(raw_input, str):
            inputs = [raw_input]
        elif isinstance(raw_input, list) and raw_input and all(isinstance(v, int) for v in raw_input):
            inputs = [list(raw_input)]
        elif isinstance(raw_input, list) and raw_input and all(isinstance(v, (str, list)) for v in raw_input):
            inputs = list(raw_input)
        else:
            raise self._error(
                ctx,
                400,
                "'$.input' is invalid. Please check the API reference: "
                "https://platform.openai.com/docs/api-reference.",
                "input",
            )
        dims = body.get("dimensions")
        if dims is None:
            dims = EMBEDDING_DIMENSIONS
        if not isinstance(dims, int) or isinstance(dims, bool) or dims < 1:
            raise self._error(ctx, 400, f"Invalid value for 'dimensions': {dims}.", "dimensions")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise self._error(
                ctx,
                400,
                f"Invalid value for 'encoding_format': '{encoding}'. Expected 'float' or 'base64'.",
                "encoding_format",
            )
        data: list[Json] = []
        tokens = 0
        for index, item in enumerate(inputs):
            values = _embedding_array(item, dims)
            embedding: Any = _embedding_base64(values) if encoding == "base64" else values.tolist()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
            tokens += _count_words(item) if isinstance(item, str) else len(item)
        doc: Json = {"object": "list", "data": data, "model": model}
        if not behaviour.omit_usage:
            doc["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return _Reply(200, body=_compact(doc) if ctx.flavour == "azure" else _pretty(doc))

    # ---- GET models ---------------------------------------------------------------------------

    def _list_models(self) -> _Reply:
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": owner}
            for name, (created, owner) in list(self.state.models.items())
        ]
        return _Reply(200, body=_pretty({"object": "list", "data": data}))

    def _retrieve_model(self, name: str) -> _Reply:
        info = self.state.models.get(name)
        if info is None:
            return _openai_error(
                404, f"The model '{name}' does not exist", "invalid_request_error", "model", "model_not_found"
            )
        return _Reply(
            200, body=_pretty({"id": name, "object": "model", "created": info[0], "owned_by": info[1]})
        )

    # ---- POST responses -----------------------------------------------------------------------

    def _responses(self, ctx: _Ctx, behaviour: Behaviour, body: Json) -> _Reply:
        model = self._resolve_model(ctx, body)
        raw_input = body.get("input")
        items: list[Any]
        if isinstance(raw_input, str):
            items = [{"role": "user", "content": raw_input}]
        elif isinstance(raw_input, list):
            items = raw_input
        elif raw_input is None and body.get("previous_response_id"):
            items = []
        else:
            raise self._error(
                ctx, 400, "Missing required parameter: 'input'.", "input", "missing_required_parameter"
            )
        last_role: str | None = None
        last_text = ""
        for item in items:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "function_call_output":
                last_role, last_text = "tool", str(item.get("output", ""))
            elif item.get("role") in ("user", "assistant", "system", "developer"):
                if item.get("role") == "user":
                    last_text = _content_text(item.get("content"))
                last_role = item.get("role")
        counted = [i for i in items if isinstance(i, dict)]
        if isinstance(body.get("instructions"), str):
            counted.append({"content": body["instructions"]})
        plan = self._plan(
            behaviour,
            prompt_tokens=self._prompt_tokens(counted, body.get("tools")),
            last_role=last_role,
            last_text=last_text,
            tools=body.get("tools"),
            tool_choice=body.get("tool_choice"),
            limit=body.get("max_output_tokens"),
        )
        rid = f"resp_{_rand_hex(48)}"
        created = int(time.time())
        usage = None
        if not behaviour.omit_usage:
            usage = {
                "input_tokens": plan.prompt_tokens,
                "input_tokens_details": {"cached_tokens": plan.cached_tokens},
                "output_tokens": plan.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": plan.reasoning_tokens},
                "total_tokens": plan.prompt_tokens + plan.completion_tokens,
            }
        incomplete = plan.finish_reason == "length"
        item_id = f"fc_{_rand_hex(48)}" if plan.is_tool_call else f"msg_{_rand_hex(48)}"
        final_item = self._response_item(plan, item_id, "incomplete" if incomplete else "completed")
        status = "incomplete" if incomplete else "completed"
        details = {"reason": "max_output_tokens"} if incomplete else None
        final = self._response_object(body, rid, created, model, status, [final_item], usage, details)
        if body.get("stream") is not True:
            return _Reply(200, body=_pretty(final))
        options = body.get("stream_options") or {}
        obfuscate = behaviour.obfuscation and not (
            isinstance(options, dict) and options.get("include_obfuscation") is False
        )
        start = self._response_object(
            body, rid, created, model, "in_progress", [], None, None, streaming=True
        )
        return _Reply(
            200, content_type=_SSE, events=self._responses_stream(plan, item_id, start, final, obfuscate)
        )

    @staticmethod
    def _response_item(plan: _Plan, item_id: str, status: str) -> Json:
        if plan.is_tool_call:
            return {
                "id": item_id,
                "type": "function_call",
                "status": status,
                "arguments": plan.text if status != "in_progress" else "",
                "call_id": plan.tool_call_id,
                "name": plan.tool_name,
            }
        content = (
            []
            if status == "in_progress"
            else [{"type": "output_text", "annotations": [], "logprobs": [], "text": plan.text}]
        )
        return {"id": item_id, "type": "message", "status": status, "content": content, "role": "assistant"}

    def _response_object(
        self,
        body: Json,
        rid: str,
        created: int,
        model: str,
        status: str,
        output: list[Json],
        usage: Json | None,
        incomplete_details: Json | None,
        streaming: bool = False,
    ) -> Json:
        """The Response object, in the key order of the live-recorded fixture, echoing the request."""
        reasoning_in = body.get("reasoning")
        reasoning: Json = reasoning_in if isinstance(reasoning_in, dict) else {}
        text_in = body.get("text")
        text: Json = text_in if isinstance(text_in, dict) else {}
        temperature = body.get("temperature")
        top_p = body.get("top_p")
        # While in progress the API still reports the requested tier ("auto"); the final one is resolved.
        tier = (body.get("service_tier") or "auto") if streaming else self._service_tier(body)
        return {
            "id": rid,
            "object": "response",
            "created_at": created,
            "status": status,
            "background": bool(body.get("background", False)),
            "error": None,
            "incomplete_details": incomplete_details,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": body.get("max_tool_calls"),
            "model": model,
            "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "prompt_cache_key": body.get("prompt_cache_key"),
            "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
            "safety_identifier": body.get("safety_identifier"),
            "service_tier": tier,
            "store": body.get("store", True),
            "temperature": 1.0 if temperature is None else float(temperature),
            "text": {
                "format": text.get("format") or {"type": "text"},
                "verbosity": text.get("verbosity") or "medium",
            },
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_logprobs": body.get("top_logprobs") or 0,
            "top_p": 1.0 if top_p is None else float(top_p),
            "truncation": body.get("truncation") or "disabled",
            "usage": usage,
            "user": body.get("user"),
            "metadata": body.get("metadata") or {},
        }

    def _responses_stream(
        self, plan: _Plan, item_id: str, start: Json, final: Json, obfuscate: bool
    ) -> Iterator[bytes]:
        seq = 0

        def event(kind: str, **payload: Any) -> bytes:
            nonlocal seq
            doc = {"type": kind, "sequence_number": seq, **payload}
            seq += 1
            return _sse_event(kind, doc)

        final_item = final["output"][0]
        yield event("response.created", response=start)
        yield event("response.in_progress", response=start)
        yield event(
            "response.output_item.added",
            output_index=0,
            item=self._response_item(plan, item_id, "in_progress"),
        )
        if plan.is_tool_call:
            for piece in plan.pieces:
                extra = {"obfuscation": _obfuscation(piece)} if obfuscate else {}
                yield event(
                    "response.function_call_arguments.delta",
                    item_id=item_id,
                    output_index=0,
                    delta=piece,
                    **extra,
                )
            yield event(
                "response.function_call_arguments.done", item_id=item_id, output_index=0, arguments=plan.text
            )
        else:
            empty = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
            yield event(
                "response.content_part.added", item_id=item_id, output_index=0, content_index=0, part=empty
            )
            for piece in plan.pieces:
                extra = {"obfuscation": _obfuscation(piece)} if obfuscate else {}
                yield event(
                    "response.output_text.delta",
                    item_id=item_id,
                    output_index=0,
                    content_index=0,
                    delta=piece,
                    logprobs=[],
                    **extra,
                )
            yield event(
                "response.output_text.done",
                item_id=item_id,
                output_index=0,
                content_index=0,
                text=plan.text,
                logprobs=[],
            )
            yield event(
                "response.content_part.done",
                item_id=item_id,
                output_index=0,
                content_index=0,
                part=final_item["content"][0],
            )
        yield event("response.output_item.done", output_index=0, item=final_item)
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        yield event(kind, response=final)

    # ---- POST moderations ---------------------------------------------------------------------

    def _moderations(self, ctx: _Ctx, behaviour: Behaviour, body: Json) -> _Reply:
        raw_input = self._require(ctx, body, "input")
        model = body.get("model") or "omni-moderation-latest"
        if model not in self.state.models:
            self._resolve_model(ctx, {"model": model})
        if isinstance(raw_input, str):
            texts = [raw_input]
        elif isinstance(raw_input, list) and all(isinstance(v, str) for v in raw_input):
            texts = list(raw_input)
        elif isinstance(raw_input, list):
            # Multi-modal input (a list of parts) is moderated as one item.
            texts = [_content_text(raw_input)]
        else:
            raise self._error(ctx, 400, "Invalid value for 'input'.", "input")
        results = []
        for text in texts:
            violent = any(word in text.lower() for word in _VIOLENT_WORDS)
            categories = {name: violent and name == "violence" for name in _MODERATION_CATEGORIES}
            scores = {name: (0.9 if categories[name] else 1e-06) for name in _MODERATION_CATEGORIES}
            results.append(
                {
                    "flagged": violent,
                    "categories": categories,
                    "category_scores": scores,
                    "category_applied_input_types": {name: ["text"] for name in _MODERATION_CATEGORIES},
                }
            )
        return _Reply(200, body=_pretty({"id": f"modr-{_rand_hex(32)}", "model": model, "results": results}))

    # ---- POST images/generations --------------------------------------------------------------

    def _images(self, ctx: _Ctx, behaviour: Behaviour, body: Json) -> _Reply:
        prompt = self._require(ctx, body, "prompt")
        model = body.get("model") or "dall-e-2"
        if model not in self.state.models:
            self._resolve_model(ctx, {"model": model})
        n = body.get("n")
        n = 1 if n is None else n
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10:
            raise self._error(ctx, 400, f"Invalid value for 'n': {n}. Expected an integer from 1 to 10.", "n")
        # GPT image models always answer in base64; DALL-E answers with URLs unless asked otherwise.
        as_b64 = str(model).startswith("gpt-image") or body.get("response_format") == "b64_json"
        host = ctx.headers.get("host", "127.0.0.1")
        data: list[Json] = []
        for _ in range(n):
            image: Json = {}
            if model == "dall-e-3":
                image["revised_prompt"] = str(prompt)
            if as_b64:
                image["b64_json"] = _PNG_B64
            else:
                image["url"] = f"http://{host}/fake-images/img-{_rand_alnum(24)}.png"
            data.append(image)
        return _Reply(200, body=_pretty({"created": int(time.time()), "data": data}))

    # ---- injected failures --------------------------------------------------------------------

    def _failure_reply(self, ctx: _Ctx, failure: _Failure) -> _Reply:
        azure = ctx.flavour == "azure"
        status = failure.status
        headers = list(failure.headers)
        if status == 429 or failure.retry_after is not None:
            retry_after = 1.0 if failure.retry_after is None else failure.retry_after
            headers.append(("retry-after", _fmt_seconds(retry_after)))
            if azure:
                headers.append(("retry-after-ms", str(int(retry_after * 1000))))
        else:
            retry_after = 1.0
        if failure.body is not None:
            if isinstance(failure.body, bytes):
                body = failure.body
            elif isinstance(failure.body, str):
                body = failure.body.encode()
            else:
                body = (
                    _compact(failure.body) if azure else (json.dumps(failure.body, indent=4) + "\n").encode()
                )
            return _Reply(status, body=body, headers=headers)
        model = ctx.body.get("model") if isinstance(ctx.body, dict) else None
        if azure:
            reply = self._azure_failure(ctx, status, retry_after)
        else:
            reply = self._openai_failure(status, str(model or "gpt-4o-mini"))
        reply.headers.extend(headers)
        return reply

    @staticmethod
    def _openai_failure(status: int, model: str) -> _Reply:
        if status == 400:
            return _openai_error(400, "Injected bad request from the fake upstream.", "invalid_request_error")
        if status == 401:
            return _openai_error(
                401,
                "Incorrect API key provided: sk-fake**********xxxx. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                code="invalid_api_key",
            )
        if status == 403:
            return _openai_error(403, "You are not allowed to access this resource.", "invalid_request_error")
        if status == 404:
            return _openai_error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                code="model_not_found",
            )
        if status == 429:
            return _openai_error(429, _rate_limit_message(model), "requests", code="rate_limit_exceeded")
        if status == 503:
            return _openai_error(503, "The server is overloaded or not ready yet.", "server_error")
        if status >= 500:
            return _openai_error(status, _SERVER_ERROR_MESSAGE, "server_error")
        return _openai_error(
            status, f"Injected error {status} from the fake upstream.", "invalid_request_error"
        )

    @staticmethod
    def _azure_failure(ctx: _Ctx, status: int, retry_after: float) -> _Reply:
        if status == 401:
            return _Reply(401, body=_AZURE_401)
        if status == 404:
            return _Reply(404, body=_AZURE_DEPLOYMENT_NOT_FOUND)
        if status == 429:
            operation = _AZURE_OPERATIONS.get(ctx.operation or "", "ChatCompletions_Create")
            message = (
                f"Requests to the {operation} Operation under Azure OpenAI API version {ctx.api_version} have "
                "exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after "
                f"{max(1, math.ceil(retry_after))} seconds. Please go here: https://aka.ms/oai/quotaincrease if "
                "you would like to further increase the default rate limit."
            )
            return _Reply(429, body=_compact({"error": {"code": "429", "message": message}}))
        if status >= 500:
            return _openai_error_compact(status, _SERVER_ERROR_MESSAGE, "server_error")
        return _openai_error_compact(
            status, f"Injected error {status} from the fake upstream.", "invalid_request_error"
        )


# --------------------------------------------------------------------------------------------------
# The server wrapper used by tests
# --------------------------------------------------------------------------------------------------


def _control(name: str, doc: str) -> Any:
    def getter(self: FakeOpenAI) -> Any:
        return getattr(self.state.behaviour(), name)

    def setter(self: FakeOpenAI, value: Any) -> None:
        self.state.update(**{name: value})

    return property(getter, setter, doc=doc)


class FakeOpenAI:
    """A fake OpenAI / Azure OpenAI server on 127.0.0.1, run by uvicorn in a background thread.

    ``FakeOpenAI(api_key=..., models=..., azure_deployments=..., azure_api_versions=..., **controls)``;
    ``controls`` are initial values of the :class:`Behaviour` fields, which :meth:`reset` returns to.
    """

    latency_ms = _control("latency_ms", "Milliseconds to wait before the first byte of a response.")
    chunk_delay_ms = _control("chunk_delay_ms", "Milliseconds to wait between two SSE events.")
    omit_usage = _control("omit_usage", "Never send usage, even when include_usage is asked.")
    reply_text = _control("reply_text", "Fixed reply text instead of the echo (None: echo).")
    drop_mid_stream = _control(
        "drop_mid_stream", "Close the connection after this many SSE events (None: never)."
    )
    stream_words = _control(
        "stream_words", "Force text replies to exactly this many words/chunks (None: natural)."
    )
    cached_tokens = _control("cached_tokens", "Reported cached prompt tokens.")
    reasoning_tokens = _control("reasoning_tokens", "Reported reasoning tokens.")
    obfuscation = _control("obfuscation", "Send the obfuscation field on OpenAI stream events.")

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        models: Mapping[str, tuple[int, str]] | Iterable[str] | None = None,
        azure_deployments: Mapping[str, str] | None = None,
        azure_api_versions: Iterable[str] | None = None,
        **controls: Any,
    ) -> None:
        unknown = set(controls) - _BEHAVIOUR_FIELDS
        if unknown:
            raise TypeError(f"unknown behaviour control(s): {', '.join(sorted(unknown))}")
        self.state = UpstreamState(
            api_key=api_key,
            models=models,
            azure_deployments=azure_deployments,
            azure_api_versions=azure_api_versions,
            behaviour=Behaviour(**controls),
        )
        self.app = FakeOpenAIApp(self.state)
        self._host = host
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Self:
        """Bind the port (a free one when ``port=0``), serve in a daemon thread, wait until ready."""
        if self._thread is not None:
            return self
        _install_log_filter()
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
            target=server.run, kwargs={"sockets": [sock]}, name=f"fake-openai-{self._port}", daemon=True
        )
        self._server, self._thread, self._socket = server, thread, sock
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the fake OpenAI server did not start")
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
            raise RuntimeError("FakeOpenAI is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: also the Azure endpoint (``azure_endpoint=fake.url``)."""
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ``http://127.0.0.1:PORT/v1``."""
        return f"{self.url}/v1"

    @property
    def azure_endpoint(self) -> str:
        """The Azure resource endpoint to give ``AzureOpenAI(azure_endpoint=...)``."""
        return self.url

    @property
    def api_key(self) -> str:
        """The only key accepted (Bearer on /v1, ``api-key`` header on Azure)."""
        return self.state.api_key

    @property
    def models(self) -> dict[str, tuple[int, str]]:
        """The served model table (mutable: add ``name: (created, owned_by)``)."""
        return self.state.models

    @property
    def azure_deployments(self) -> dict[str, str]:
        """Azure deployment -> underlying model (mutable)."""
        return self.state.azure_deployments

    @property
    def azure_api_versions(self) -> set[str]:
        """Accepted Azure ``api-version`` values (mutable)."""
        return self.state.azure_api_versions

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
    ) -> None:
        """Answer the next ``n`` API requests (those whose path contains ``match``, if given) with an
        error of ``status``.

        The default body is the one the real service sends for that status (OpenAI or Azure style,
        by route). ``body`` replaces it (bytes/str sent as is, anything else as JSON). A 429 always
        carries ``retry-after`` (``retry_after`` seconds, default 1; Azure also ``retry-after-ms``).
        """
        if n < 1:
            raise ValueError("n must be at least 1")
        failure = _Failure(status, retry_after, body, tuple((headers or {}).items()), match)
        self.state.add_failures(failure, n)

    def reset(self) -> None:
        """Forget recorded requests and pending failures; restore the constructor's controls."""
        self.state.reset()


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the fake in the foreground: ``python -m tests.fakes.openai_upstream --port 18000``."""
    parser = argparse.ArgumentParser(
        description="Fake OpenAI / Azure OpenAI upstream for tests and benchmarks."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18000)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before the first byte")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="delay between SSE events")
    parser.add_argument("--stream-words", type=int, default=None, help="words (chunks) per text reply")
    parser.add_argument("--reply-text", default=None, help="fixed reply instead of the echo")
    parser.add_argument("--omit-usage", action="store_true", help="never send usage")
    args = parser.parse_args(argv)

    behaviour = Behaviour(
        latency_ms=args.latency_ms,
        chunk_delay_ms=args.chunk_delay_ms,
        stream_words=args.stream_words,
        reply_text=args.reply_text,
        omit_usage=args.omit_usage,
    )
    app = FakeOpenAIApp(UpstreamState(api_key=args.api_key, behaviour=behaviour))
    _install_log_filter()
    # Benchmarks measure the gateway, so the fake takes the fastest stack available.
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "auto"
    try:
        import httptools  # noqa: F401

        http = "httptools"
    except ImportError:
        http = "auto"
    print(f"fake OpenAI upstream on http://{args.host}:{args.port} (Azure endpoint: same origin)", flush=True)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop=loop,
        http=http,
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
