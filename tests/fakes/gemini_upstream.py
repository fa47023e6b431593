"""A fake Google Gemini API (and Vertex AI Gemini) upstream: a real HTTP server on loopback.

Same design as :mod:`tests.fakes.openai_upstream` and :mod:`tests.fakes.anthropic_upstream` (whose
vendor-neutral machinery it reuses): a plain ASGI app served by uvicorn in a background thread::

    with FakeGemini() as fake:
        client = genai.Client(api_key=fake.api_key, http_options={"base_url": fake.url})
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
        assert fake.requests[-1].path == "/v1beta/models/gemini-2.5-flash:generateContent"

What it serves
--------------
Gemini Developer API, under ``/v1beta`` and ``/v1`` (the SDK defaults to ``v1``), key in
``x-goog-api-key`` or ``?key=``: ``POST models/{model}:generateContent``,
``:streamGenerateContent`` (``?alt=sse``: SSE; without it: a streamed JSON array),
``:embedContent``, ``:batchEmbedContents``, ``:countTokens``; ``GET models`` (``pageSize`` /
``pageToken``) and ``GET models/{model}``.

Vertex AI, under ``/v1`` and ``/v1beta1`` (the SDK's Vertex default), ``Authorization: Bearer
<access_token>``: ``POST projects/{project}/locations/{location}/publishers/google/models/{model}:
generateContent`` / ``:streamGenerateContent`` / ``:countTokens``, and ``:predict`` for the
embedding models (``instances[].content``, ``parameters.outputDimensionality`` -> ``predictions[].
embeddings.{values, statistics.token_count}``). ``project`` / ``location`` given
to the constructor are enforced (403 as Vertex answers), otherwise any are accepted.

Wire details reproduced
-----------------------
* SSE events are ``data: <json>\\r\\n\\r\\n`` (CRLF, as the live API frames them); the JSON is
  Google's compact style (``": "`` after keys, ``,`` without a space) with ``<``, ``>`` and ``&``
  escaped as ``\\u003c``-style sequences. Whole bodies are pretty-printed (2 spaces) and end in a
  newline. Zero/absent fields are omitted, as proto3 JSON does.
* Developer API stream: one chunk per word (``candidates[0].content.parts[0].text``, ``"index": 0``,
  cumulative ``usageMetadata``, ``modelVersion``, the same ``responseId`` on every chunk), then a
  final chunk with ``"content": {"role": "model"}`` and the ``finishReason``. Function calls come
  whole, in one chunk with ``finishReason: "STOP"``.
* Vertex: ``role`` before ``parts``, no ``index``, ``createTime``, intermediate chunks carry only
  ``"usageMetadata": {"trafficType": "ON_DEMAND"}`` and the last word chunk carries the
  ``finishReason`` and the full usage (with ``candidatesTokensDetails``).
* Request JSON accepts both lowerCamelCase and snake_case field names (proto3 JSON parsing does);
  unknown fields get the API's ``Invalid JSON payload received. Unknown name ...`` 400.

Deterministic behaviour
-----------------------
* Reply: ``reply_text``, else ``"Echo: "`` + the last user text; after a ``functionResponse`` part,
  ``"Tool result: "`` + the compact JSON of its ``response``. ``responseMimeType:
  "application/json"`` wraps the reply as ``{"text": "<reply>"}``.
* Function calling: with ``functionDeclarations``, mode not ``NONE``, and "weather" in the last user
  text (or mode ``ANY``), the reply is ``functionCall {"name": <first (allowed) function>, "args":
  {"city": "Paris"}}``.
* ``maxOutputTokens`` cuts words -> ``MAX_TOKENS``; ``stopSequences`` cut before the earliest match
  -> ``STOP`` (Gemini has no separate stop-sequence reason); otherwise ``STOP``.
* Usage: ``promptTokenCount`` = words of system instruction + contents (+258 per inline image, the
  documented image cost, + a quarter of the tools' JSON); ``candidatesTokenCount`` = words (5 for a
  function call); ``cachedContentTokenCount`` (part of the prompt count) = ``cache_read_tokens`` when
  non-zero. ``omit_usage`` drops ``usageMetadata`` everywhere.
* Embeddings: a deterministic unit vector from SHA-256 of the text (:func:`embedding_for`), of the
  model's dimension (768 for text-embedding-004, 3072 for gemini-embedding-001) or
  ``outputDimensionality``.
* ``fail_next``: the body is ``{"error": {"code", "message", "status"[, "details"]}}`` with the
  canonical status for the HTTP code (400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 403
  PERMISSION_DENIED, 404 NOT_FOUND, 429 RESOURCE_EXHAUSTED, 500 INTERNAL, 503 UNAVAILABLE, 504
  DEADLINE_EXCEEDED); ``error_type`` overrides the status; ``retry_after`` becomes a
  ``google.rpc.RetryInfo`` detail (``"retryDelay": "<n>s"``): the API sends no Retry-After header.
* ``error_mid_stream`` is not supported (no documented in-stream error frame); ``drop_mid_stream``
  is.

References followed
-------------------
* ai.google.dev Gemini API reference: ``models.generateContent`` / ``models.streamGenerateContent``
  (request ``contents``/``parts`` (text, inlineData, functionCall, functionResponse),
  ``systemInstruction``, ``generationConfig`` (temperature, topP, topK, maxOutputTokens,
  stopSequences, responseMimeType, candidateCount), ``tools.functionDeclarations``,
  ``toolConfig.functionCallingConfig`` (AUTO/ANY/NONE, allowedFunctionNames); response
  ``GenerateContentResponse``: candidates[].content.parts, finishReason enum, usageMetadata
  (promptTokenCount, candidatesTokenCount, totalTokenCount, cachedContentTokenCount,
  promptTokensDetails), modelVersion, responseId), ``models.embedContent`` /
  ``models.batchEmbedContents`` (``embedding.values`` / ``embeddings[]``), ``models.list``, the
  API errors page (status per HTTP code).
* googleapis/python-genai (the installed SDK 3.6.1): ``_api_client.py`` (``x-goog-api-key``;
  ``v1`` default for the Developer API, ``v1beta1`` for Vertex; the SSE reader accepts CR/LF/CRLF
  and ``data: `` lines; ``projects/{p}/locations/{l}/`` prefix for Vertex), ``models.py``
  (``{model}:streamGenerateContent?alt=sse``; ``embed_content`` -> ``:batchEmbedContents``),
  ``errors.py`` (``code``/``message``/``status`` read from the ``error`` object).
* Recorded live traffic in public code: a ``gemini-2.5-flash`` ``alt=sse`` capture framed with
  ``\\r\\n\\r\\n`` (text chunk with ``"index": 0`` + terminal ``{"role": "model"}`` chunk), Vertex
  ``gemini-2.5-flash`` captures (``role`` first, ``trafficType``, ``createTime``, usage only on the
  last chunk), a Developer API function-call body (``"finishReason": "STOP"``, ``responseId``), and
  a stream with ``\\u003e`` escapes.
* Real error bodies quoted in public issues: ``API key not valid. Please pass a valid API key.``
  (400, ``API_KEY_INVALID`` ErrorInfo + LocalizedMessage), ``Method doesn't allow unregistered
  callers ...`` (403), the 429 ``You exceeded your current quota ...`` / Vertex ``Resource
  exhausted. Please try again later ...`` messages, Vertex 401 ``CREDENTIALS_MISSING``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime
import hashlib
import json
import math
import re
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn

from tests.fakes.anthropic_upstream import (
    ApiError,
    Behaviour,
    Ctx,
    Failure,
    FakeUpstreamApp,
    FakeUpstreamServer,
    Reply,
    TextPlan,
    UpstreamState,
    count_words,
    custom_body,
    echo,
    install_log_filter,
    plan_text,
    rand_chars,
)

__all__ = [
    "DEFAULT_ACCESS_TOKEN",
    "DEFAULT_API_KEY",
    "DEFAULT_MODELS",
    "FakeGemini",
    "FakeGeminiApp",
    "GeminiModel",
    "embedding_for",
    "google_json",
    "main",
]

Json = dict[str, Any]

DEFAULT_API_KEY = "AIzaSyFakeUpstream-0123456789abcdefghi"
DEFAULT_ACCESS_TOKEN = "ya29.fake-upstream-access-token"
IMAGE_TOKENS = 258
FUNCTION_CALL_TOKENS = 5
_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@dataclass(frozen=True)
class GeminiModel:
    """One entry of the model table (the ``models.list`` fields the fake reports)."""

    display_name: str
    version: str
    input_token_limit: int
    output_token_limit: int
    methods: tuple[str, ...]
    embedding_dimensions: int | None = None

    @property
    def is_embedding(self) -> bool:
        """Whether this is an embedding model (``embedContent``, no ``generateContent``)."""
        return self.embedding_dimensions is not None


_GENERATE = ("generateContent", "countTokens", "createCachedContent", "batchGenerateContent")
_EMBED = ("embedContent", "countTextTokens", "countTokens", "asyncBatchEmbedContent")

DEFAULT_MODELS: dict[str, GeminiModel] = {
    "gemini-2.5-pro": GeminiModel("Gemini 2.5 Pro", "2.5", 1048576, 65536, _GENERATE),
    "gemini-2.5-flash": GeminiModel("Gemini 2.5 Flash", "001", 1048576, 65536, _GENERATE),
    "gemini-2.5-flash-lite": GeminiModel("Gemini 2.5 Flash-Lite", "001", 1048576, 65536, _GENERATE),
    "gemini-2.0-flash": GeminiModel("Gemini 2.0 Flash", "2.0", 1048576, 8192, _GENERATE),
    "gemini-2.0-flash-001": GeminiModel("Gemini 2.0 Flash 001", "2.0", 1048576, 8192, _GENERATE),
    "gemini-1.5-flash": GeminiModel("Gemini 1.5 Flash", "001", 1000000, 8192, _GENERATE),
    "text-embedding-004": GeminiModel("Text Embedding 004", "004", 2048, 1, _EMBED, 768),
    "gemini-embedding-001": GeminiModel("Gemini Embedding 001", "001", 2048, 1, _EMBED, 3072),
}

_DEV_PATH = re.compile(r"^/(v1beta|v1)/models(?:/([^/:]+))?(?::([A-Za-z]+))?$")
_VERTEX_PATH = re.compile(
    r"^/(v1|v1beta1)/projects/([^/]+)/locations/([^/]+)/publishers/google/models/([^/:]+):([A-Za-z]+)$"
)
_REQUEST_FIELDS = {
    "contents",
    "model",
    "systemInstruction",
    "generationConfig",
    "tools",
    "toolConfig",
    "safetySettings",
    "cachedContent",
    "labels",
}
_PART_FIELDS = {
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "thought",
    "thoughtSignature",
    "executableCode",
    "codeExecutionResult",
    "videoMetadata",
}
_RESPONSE_MIME_TYPES = ("text/plain", "application/json", "text/x.enum")
_FINISH = {"end": "STOP", "stop_sequence": "STOP", "max_tokens": "MAX_TOKENS"}
_GRPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_DEFAULT_MESSAGES = {
    400: "Request contains an invalid argument.",
    401: "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
    "other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    429: "You exceeded your current quota, please check your plan and billing details. For more information "
    "on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}
_VERTEX_429 = (
    "Resource exhausted. Please try again later. Please refer to "
    "https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details."
)
_UNREGISTERED = (
    "Method doesn't allow unregistered callers (callers without established identity). Please use API Key "
    "or other form of API consumer identity to call this API."
)
_BAD_KEY = "API key not valid. Please pass a valid API key."
_MISSING_CREDENTIAL = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or "
    "other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_JSON_CT = "application/json; charset=UTF-8"
_SSE_CT = "text/event-stream"


# --------------------------------------------------------------------------------------------------
# Serialisation
# --------------------------------------------------------------------------------------------------


def _html_escape(text: str) -> str:
    # Google's JSON writer escapes these (seen as \u003e in recorded streams); they only ever
    # occur inside JSON strings, so a plain replace is safe.
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def google_json(obj: Any) -> bytes:
    """Google's compact stream style: ``{"a": 1,"b": [{"c": "d"}]}``."""
    return _html_escape(json.dumps(obj, ensure_ascii=False, separators=(",", ": "))).encode()


def _pretty(obj: Any) -> bytes:
    """Google's whole-body style: 2-space indent, trailing newline."""
    return (_html_escape(json.dumps(obj, ensure_ascii=False, indent=2)) + "\n").encode()


def _sse(obj: Any) -> bytes:
    return b"data: " + google_json(obj) + b"\r\n\r\n"


def google_error(
    code: int, message: str, status: str | None = None, details: list[Json] | None = None
) -> Reply:
    """A Google API error reply: ``{"error": {"code", "message", "status"[, "details"]}}``."""
    error: Json = {"code": code, "message": message, "status": status or _GRPC_STATUS.get(code, "UNKNOWN")}
    if details:
        error["details"] = details
    return Reply(code, content_type=_JSON_CT, body=_pretty({"error": error}))


def _invalid(message: str) -> ApiError:
    return ApiError(google_error(400, message))


def embedding_for(text: str, dimensions: int = 768) -> list[float]:
    """The vector the fake returns for one text: deterministic, unit length, 9 significant digits."""
    raw: list[float] = []
    counter = 0
    seed = text.encode()
    while len(raw) < dimensions:
        digest = hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        raw.extend(v / 2**31 - 1.0 for v in struct.unpack("<8I", digest))
        counter += 1
    raw = raw[:dimensions]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [float(f"{v / norm:.9g}") for v in raw]


def _b64decode(data: Any) -> bytes:
    """Decode proto3 JSON ``bytes``: standard or URL-safe base64, padding optional."""
    if not isinstance(data, str):
        raise ValueError("not a string")
    padded = data + "=" * (-len(data) % 4)
    if "-" in data or "_" in data:
        return base64.urlsafe_b64decode(padded)
    return base64.b64decode(padded, validate=True)


def _get(obj: Mapping[str, Any], camel: str) -> Any:
    """A field by its lowerCamelCase name or its proto (snake_case) name, as proto3 JSON allows."""
    if camel in obj:
        return obj[camel]
    snake = re.sub(r"(?<!^)([A-Z])", r"_\1", camel).lower()
    return obj.get(snake)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


# --------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    text: TextPlan | None
    function: str | None
    prompt_tokens: int
    cached_tokens: int
    image_tokens: int

    @property
    def finish_reason(self) -> str:
        return "STOP" if self.text is None else _FINISH[self.text.reason]

    @property
    def candidates_tokens(self) -> int:
        return FUNCTION_CALL_TOKENS if self.text is None else len(self.text.pieces)


class _Request:
    """A checked generateContent body."""

    def __init__(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise _invalid("Invalid JSON payload received. Expected an object.")
        for key in body:
            if _camel(key) not in _REQUEST_FIELDS:
                raise _invalid(f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.')
        contents = _get(body, "contents")
        if not contents:
            raise _invalid("* GenerateContentRequest.contents: contents is not specified\n")
        if isinstance(contents, dict):
            contents = [contents]
        if not isinstance(contents, list):
            raise _invalid(
                "Invalid value at 'contents' (type.googleapis.com/google.ai.generativelanguage.v1beta.Content), \"contents\""
            )
        self.contents: list[Json] = []
        for i, content in enumerate(contents):
            self.contents.append(self._check_content(content, f"contents[{i}]"))
        system = _get(body, "systemInstruction")
        self.system: Json | None = self._check_content(system, "system_instruction") if system else None
        config = _get(body, "generationConfig") or {}
        if not isinstance(config, dict):
            raise _invalid("Invalid value at 'generation_config'")
        self.max_tokens = _get(config, "maxOutputTokens")
        self.stop_sequences = _get(config, "stopSequences")
        if isinstance(self.stop_sequences, list) and len(self.stop_sequences) > 5:
            raise _invalid(
                "* GenerateContentRequest.generation_config.stop_sequences: "
                "the number of stop sequences must not exceed 5\n"
            )
        self.mime_type = _get(config, "responseMimeType") or "text/plain"
        if self.mime_type not in _RESPONSE_MIME_TYPES:
            raise _invalid(
                "* GenerateContentRequest.generation_config.response_mime_type: allowed mimetypes are "
                "`text/plain`, `application/json` and `text/x.enum`.\n"
            )
        candidates = _get(config, "candidateCount")
        if candidates not in (None, 1):
            raise _invalid(f"The fake upstream only supports candidateCount=1 (got {candidates}).")
        self.functions: list[str] = []
        tools = _get(body, "tools") or []
        for tool in tools if isinstance(tools, list) else []:
            for decl in (_get(tool, "functionDeclarations") or []) if isinstance(tool, dict) else []:
                if isinstance(decl, dict) and isinstance(decl.get("name"), str):
                    self.functions.append(decl["name"])
        self.tools_size = len(json.dumps(tools)) if tools else 0
        calling = _get(_get(body, "toolConfig") or {}, "functionCallingConfig") or {}
        self.mode = str(calling.get("mode") or "AUTO").upper()
        self.allowed = _get(calling, "allowedFunctionNames") or []

    @staticmethod
    def _check_content(content: Any, where: str) -> Json:
        if not isinstance(content, dict):
            raise _invalid(f"Invalid value at '{where}'")
        role = content.get("role", "user") or "user"
        if where.startswith("contents") and role not in ("user", "model", "function"):
            raise _invalid("Please use a valid role: user, model.")
        parts = content.get("parts")
        if isinstance(parts, dict):
            parts = [parts]
        if not isinstance(parts, list) or not parts:
            raise _invalid(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.\n")
        for j, part in enumerate(parts):
            if not isinstance(part, dict):
                raise _invalid(f"Invalid value at '{where}.parts[{j}]'")
            for key in part:
                if _camel(key) not in _PART_FIELDS:
                    raise _invalid(
                        f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}.parts[{j}]': "
                        "Cannot find field."
                    )
            inline = _get(part, "inlineData")
            if inline is not None:
                data = inline.get("data") if isinstance(inline, dict) else None
                try:
                    _b64decode(data)
                except (ValueError, binascii.Error):
                    shown = data if isinstance(data, str) else ""
                    raise _invalid(
                        f"Invalid value at '{where}.parts[{j}].inline_data.data' (TYPE_BYTES), Base64 "
                        f'decoding failed for "{shown}"'
                    ) from None
        return {"role": role, "parts": parts}

    @staticmethod
    def _parts_text(parts: Iterable[Json]) -> str:
        return " ".join(p["text"] for p in parts if isinstance(p.get("text"), str))

    def prompt_tokens(self) -> tuple[int, int]:
        """(text-and-tools tokens, image tokens)."""
        text = 0
        images = 0
        for content in ([self.system] if self.system else []) + self.contents:
            text += count_words(self._parts_text(content["parts"]))
            for part in content["parts"]:
                inline = _get(part, "inlineData")
                if isinstance(inline, dict) and str(_get(inline, "mimeType") or "").startswith("image/"):
                    images += IMAGE_TOKENS
                response = _get(part, "functionResponse")
                if isinstance(response, dict):
                    text += count_words(json.dumps(response.get("response")))
        return text + self.tools_size // 4, images

    def plan(self, behaviour: Behaviour) -> _Plan:
        last = self.contents[-1]
        function_response = next(
            (_get(p, "functionResponse") for p in last["parts"] if _get(p, "functionResponse") is not None),
            None,
        )
        last_user_text = next(
            (self._parts_text(c["parts"]) for c in reversed(self.contents) if c["role"] == "user"), ""
        )
        text_tokens, image_tokens = self.prompt_tokens()
        prompt = text_tokens + image_tokens
        cached = min(max(0, behaviour.cache_read_tokens), prompt)
        function = None
        if function_response is None and self.functions and self.mode != "NONE":
            allowed = [f for f in self.functions if not self.allowed or f in self.allowed]
            if allowed and (self.mode == "ANY" or "weather" in last_user_text.lower()):
                function = allowed[0]
        if function is not None:
            return _Plan(None, function, prompt, cached, image_tokens)
        if behaviour.reply_text is not None:
            base = behaviour.reply_text
        elif isinstance(function_response, dict):
            base = "Tool result: " + json.dumps(function_response.get("response"), separators=(",", ":"))
        else:
            base = echo(last_user_text)
        if self.mime_type == "application/json":
            base = json.dumps({"text": base})
        text = plan_text(base, behaviour.stream_words, self.max_tokens, self.stop_sequences)
        return _Plan(text, None, prompt, cached, image_tokens)


# --------------------------------------------------------------------------------------------------
# The ASGI app
# --------------------------------------------------------------------------------------------------


@dataclass
class _Route:
    vertex: bool
    version: str
    model: str | None
    method: str | None
    project: str | None = None
    location: str | None = None


class FakeGeminiApp(FakeUpstreamApp):
    """The ASGI application for the Gemini Developer API and Vertex AI's Gemini endpoints."""

    def __init__(
        self,
        state: UpstreamState | None = None,
        *,
        api_key: str = DEFAULT_API_KEY,
        access_token: str = DEFAULT_ACCESS_TOKEN,
        models: Mapping[str, GeminiModel] | None = None,
        project: str | None = None,
        location: str | None = None,
    ) -> None:
        super().__init__(state or UpstreamState())
        self.api_key = api_key
        self.access_token = access_token
        self.models: dict[str, GeminiModel] = dict(DEFAULT_MODELS if models is None else models)
        self.project = project
        self.location = location

    # ---- routing ------------------------------------------------------------------------------

    @staticmethod
    def _route(ctx: Ctx) -> _Route | None:
        match = _VERTEX_PATH.match(ctx.path)
        if match:
            version, project, location, model, method = match.groups()
            return _Route(True, version, model, method, project, location)
        match = _DEV_PATH.match(ctx.path)
        if match:
            version, model, method = match.groups()
            return _Route(False, version, model, method)
        return None

    def applies_failures(self, ctx: Ctx) -> bool:
        """Only API routes consume injected failures."""
        return self._route(ctx) is not None

    def extra_headers(self, ctx: Ctx, reply: Reply) -> list[tuple[str, str]]:
        """The headers Google's front end adds to every reply."""
        return [
            ("vary", "Origin, X-Origin, Referer"),
            ("x-xss-protection", "0"),
            ("x-frame-options", "SAMEORIGIN"),
            ("x-content-type-options", "nosniff"),
            ("server-timing", "gfet4t7; dur=1"),
        ]

    def failure_reply(self, ctx: Ctx, failure: Failure) -> Reply:
        """The API's error body for an injected status."""
        headers = list(failure.headers)
        if failure.body is not None:
            return Reply(
                failure.status, content_type=_JSON_CT, body=custom_body(failure.body), headers=headers
            )
        route = self._route(ctx)
        status = failure.error_type or _GRPC_STATUS.get(failure.status, "UNKNOWN")
        message = _DEFAULT_MESSAGES.get(failure.status, "Unknown error.")
        details: list[Json] = []
        if failure.status == 429:
            if route is not None and route.vertex:
                message = _VERTEX_429
            else:
                details.append(
                    {
                        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                        "violations": [
                            {
                                "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                                "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                                "quotaDimensions": {
                                    "location": "global",
                                    "model": (route.model if route else None) or "unknown",
                                },
                                "quotaValue": "10",
                            }
                        ],
                    }
                )
                details.append(
                    {
                        "@type": "type.googleapis.com/google.rpc.Help",
                        "links": [
                            {
                                "description": "Learn more about Gemini API quotas",
                                "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                            }
                        ],
                    }
                )
        if failure.retry_after is not None:
            seconds = failure.retry_after
            delay = f"{int(seconds)}s" if float(seconds).is_integer() else f"{seconds}s"
            details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay})
        reply = google_error(failure.status, message, status, details or None)
        reply.headers.extend(headers)
        return reply

    def dispatch(self, ctx: Ctx, behaviour: Behaviour) -> Reply:
        """Authenticate, then route one request."""
        if ctx.method == "GET" and ctx.path in ("/", "/health", "/healthz"):
            return Reply(200, body=b'{"status":"ok"}')
        route = self._route(ctx)
        if route is None:
            return google_error(
                404, f"The requested URL {ctx.path} was not found on this server.", "NOT_FOUND"
            )
        if route.vertex:
            self._auth_vertex(ctx, route)
        else:
            self._auth_developer(ctx)
        if route.method is None:
            if ctx.method != "GET":
                return google_error(404, "Method not found.", "NOT_FOUND")
            return self._get_model(route) if route.model else self._list_models(ctx)
        if ctx.method != "POST":
            return google_error(404, "Method not found.", "NOT_FOUND")
        handlers = {
            "generateContent": self._generate,
            "streamGenerateContent": self._stream,
            "countTokens": self._count_tokens,
            "embedContent": self._embed,
            "batchEmbedContents": self._batch_embed,
        }
        if route.vertex:
            handlers["predict"] = self._predict
        handler = handlers.get(route.method)
        if handler is None or (route.vertex and route.method in ("embedContent", "batchEmbedContents")):
            return google_error(404, "Method not found.", "NOT_FOUND")
        return handler(ctx, route, behaviour)

    def _auth_developer(self, ctx: Ctx) -> None:
        key = ctx.headers.get("x-goog-api-key") or ctx.query.get("key")
        if not key:
            raise ApiError(google_error(403, _UNREGISTERED, "PERMISSION_DENIED"))
        if key != self.api_key:
            details = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                },
                {
                    "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                    "locale": "en-US",
                    "message": _BAD_KEY,
                },
            ]
            raise ApiError(google_error(400, _BAD_KEY, "INVALID_ARGUMENT", details))

    def _auth_vertex(self, ctx: Ctx, route: _Route) -> None:
        scheme, _, token = ctx.headers.get("authorization", "").partition(" ")
        method = (
            f"google.cloud.aiplatform.{route.version}.PredictionService.{route.method[:1].upper()}{route.method[1:]}"
            if route.method
            else ""
        )
        if scheme.lower() != "bearer" or not token.strip():
            details = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "CREDENTIALS_MISSING",
                    "domain": "googleapis.com",
                    "metadata": {"method": method, "service": "aiplatform.googleapis.com"},
                }
            ]
            raise ApiError(google_error(401, _MISSING_CREDENTIAL, "UNAUTHENTICATED", details))
        if token.strip() != self.access_token:
            details = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "ACCESS_TOKEN_TYPE_UNSUPPORTED",
                    "metadata": {"method": method, "service": "aiplatform.googleapis.com"},
                }
            ]
            raise ApiError(google_error(401, _DEFAULT_MESSAGES[401], "UNAUTHENTICATED", details))
        if (self.project and route.project != self.project) or (
            self.location and route.location != self.location
        ):
            resource = (
                f"//aiplatform.googleapis.com/projects/{route.project}/locations/{route.location}/publishers/"
                f"google/models/{route.model}"
            )
            raise ApiError(
                google_error(
                    403,
                    f"Permission 'aiplatform.endpoints.predict' denied on resource '{resource}' (or it may not exist).",
                    "PERMISSION_DENIED",
                )
            )

    def _model(self, route: _Route, method: str) -> GeminiModel:
        name = route.model or ""
        info = self.models.get(name)
        if info is None or method not in info.methods:
            if route.vertex:
                message = (
                    f"Publisher Model `projects/{route.project}/locations/{route.location}/publishers/google/"
                    f"models/{name}` was not found or your project does not have access to it. Please ensure "
                    "you are using a valid model version. For more information, see: "
                    "https://cloud.google.com/vertex-ai/generative-ai/docs/learn/model-versions"
                )
            else:
                message = (
                    f"models/{name} is not found for API version {route.version}, or is not supported for "
                    f"{method}. Call ListModels to see the list of available models and their supported methods."
                )
            raise ApiError(google_error(404, message, "NOT_FOUND"))
        return info

    # ---- generateContent / streamGenerateContent ------------------------------------------------

    @staticmethod
    def _usage(
        plan: _Plan, route: _Route, *, final: bool, so_far: int | None = None, stream: bool = False
    ) -> Json:
        """``usageMetadata`` in the API's key order; ``stream`` leaves out the prompt details, as
        streamed chunks do."""
        if route.vertex and not final:
            return {"trafficType": "ON_DEMAND"}
        candidates = plan.candidates_tokens if so_far is None else so_far
        usage: Json = {"promptTokenCount": plan.prompt_tokens}
        if candidates:
            usage["candidatesTokenCount"] = candidates
        usage["totalTokenCount"] = plan.prompt_tokens + candidates
        if plan.cached_tokens:
            usage["cachedContentTokenCount"] = plan.cached_tokens
        if route.vertex:
            usage["trafficType"] = "ON_DEMAND"
        if not stream:
            prompt_details = [{"modality": "TEXT", "tokenCount": plan.prompt_tokens - plan.image_tokens}]
            if plan.image_tokens:
                prompt_details.append({"modality": "IMAGE", "tokenCount": plan.image_tokens})
            usage["promptTokensDetails"] = prompt_details
            if plan.cached_tokens:
                usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": plan.cached_tokens}]
        if route.vertex and candidates and (final or not stream):
            usage["candidatesTokensDetails"] = [{"modality": "TEXT", "tokenCount": candidates}]
        return usage

    @staticmethod
    def _content(parts: list[Json], route: _Route) -> Json:
        if not parts:
            return {"role": "model"}
        return {"role": "model", "parts": parts} if route.vertex else {"parts": parts, "role": "model"}

    @staticmethod
    def _candidate(content: Json, route: _Route, finish: str | None) -> Json:
        candidate: Json = {"content": content}
        if finish is not None:
            candidate["finishReason"] = finish
        if not route.vertex:
            candidate["index"] = 0
        return candidate

    @staticmethod
    def _envelope(candidate: Json, usage: Json | None, route: _Route, response_id: str, created: str) -> Json:
        doc: Json = {"candidates": [candidate]}
        if usage is not None:
            doc["usageMetadata"] = usage
        doc["modelVersion"] = route.model
        if route.vertex:
            doc["createTime"] = created
        doc["responseId"] = response_id
        return doc

    @staticmethod
    def _ids(route: _Route) -> tuple[str, str]:
        response_id = rand_chars(23 if route.vertex else 22, _B64URL)
        created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return response_id, created

    def _plan(self, ctx: Ctx, route: _Route, behaviour: Behaviour) -> _Plan:
        self._model(route, "generateContent")
        return _Request(ctx.body).plan(behaviour)

    @staticmethod
    def _function_part(plan: _Plan) -> Json:
        return {"functionCall": {"name": plan.function, "args": {"city": "Paris"}}}

    def _generate(self, ctx: Ctx, route: _Route, behaviour: Behaviour) -> Reply:
        plan = self._plan(ctx, route, behaviour)
        response_id, created = self._ids(route)
        if plan.text is None:
            parts = [self._function_part(plan)]
        else:
            parts = [{"text": plan.text.text}] if plan.text.pieces else []
        usage = None if behaviour.omit_usage else self._usage(plan, route, final=True)
        candidate = self._candidate(self._content(parts, route), route, plan.finish_reason)
        return Reply(
            200,
            content_type=_JSON_CT,
            body=_pretty(self._envelope(candidate, usage, route, response_id, created)),
        )

    def _stream_docs(self, plan: _Plan, route: _Route, behaviour: Behaviour) -> Iterator[Json]:
        response_id, created = self._ids(route)

        def usage(final: bool, so_far: int | None = None) -> Json | None:
            if behaviour.omit_usage:
                return None
            return self._usage(plan, route, final=final, so_far=so_far, stream=True)

        def doc(parts: list[Json], finish: str | None, usage_doc: Json | None) -> Json:
            candidate = self._candidate(self._content(parts, route), route, finish)
            return self._envelope(candidate, usage_doc, route, response_id, created)

        if plan.text is None:
            yield doc([self._function_part(plan)], "STOP", usage(True))
            return
        pieces = plan.text.pieces
        if route.vertex:
            # Vertex puts the finish reason and the full usage on the last text chunk.
            for i, piece in enumerate(pieces):
                last = i == len(pieces) - 1
                yield doc([{"text": piece}], plan.finish_reason if last else None, usage(last))
            if not pieces:
                yield doc([], plan.finish_reason, usage(True))
            return
        for i, piece in enumerate(pieces):
            yield doc([{"text": piece}], None, usage(False, i + 1))
        # The Developer API ends with a content-less chunk carrying the finish reason.
        yield doc([], plan.finish_reason, usage(True))

    def _stream(self, ctx: Ctx, route: _Route, behaviour: Behaviour) -> Reply:
        plan = self._plan(ctx, route, behaviour)
        docs = self._stream_docs(plan, route, behaviour)
        if ctx.query.get("alt") == "sse":
            return Reply(200, content_type=_SSE_CT, events=(_sse(d) for d in docs))
        return Reply(200, content_type=_JSON_CT, events=self._json_array(docs))

    @staticmethod
    def _json_array(docs: Iterator[Json]) -> Iterator[bytes]:
        # Without alt=sse the API streams one JSON array, its elements pretty-printed and
        # separated by ",\r\n".
        first = True
        for d in docs:
            body = _pretty(d).rstrip(b"\n")
            yield (b"[" if first else b",\r\n") + body
            first = False
        yield b"[]" if first else b"]"

    def _count_tokens(self, ctx: Ctx, route: _Route, behaviour: Behaviour) -> Reply:
        self._model(route, "countTokens")
        body = ctx.body if isinstance(ctx.body, dict) else {}
        request = _get(body, "generateContentRequest") or body
        if not _get(request, "contents"):
            raise _invalid("* CountTokensRequest.contents: contents is not specified\n")
        request = {k: v for k, v in request.items() if _camel(k) != "model"}
        text_tokens, image_tokens = _Request(request).prompt_tokens()
        total = text_tokens + image_tokens
        details = [{"modality": "TEXT", "tokenCount": text_tokens}]
        if image_tokens:
            details.append({"modality": "IMAGE", "tokenCount": image_tokens})
        return Reply(
            200, content_type=_JSON_CT, body=_pretty({"totalTokens": total, "promptTokensDetails": details})
        )

    # ---- embeddings ---------------------------------------------------------------------------

    @staticmethod
    def _embed_one(request: Any, info: GeminiModel, where: str) -> Json:
        if not isinstance(request, dict):
            raise _invalid(f"Invalid value at '{where}'")
        content = request.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not parts:
            raise _invalid(f"* {where}.content: content is not specified\n")
        text = " ".join(p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))
        dims = _get(request, "outputDimensionality") or info.embedding_dimensions or 768
        if not isinstance(dims, int) or dims < 1:
            raise _invalid(f"* {where}.output_dimensionality: must be positive\n")
        return {"values": embedding_for(text, min(dims, info.embedding_dimensions or dims))}

    def _embed(self, ctx: Ctx, route: _Route, behaviour: Behaviour) -> Reply:
        info = self._model(route, "embedContent")
        embedding = self._embed_one(ctx.body, info, "EmbedContentRequest")
        return Reply(200, content_type=_JSON_CT, body=_pretty({"embedding": embedding}))

    def _batch_embed(self, ctx: Ctx, route: _Route, behaviour: Behaviour) -> Reply:
        info = self._model(route, "embedContent")
        requests = ctx.body.get("requests") if isinstance(ctx.body, dict) else None
        if not isinstance(requests, list) or not requests:
            raise _invalid("* BatchEmbedContentsRequest.requests: requests is not specified\n")
        embeddings = [
            self._embed_one(r, info, f"BatchEmbedContentsRequest.requests[{i}]")
            for i, r in enumerate(requests)
        ]
        return Reply(200, content_type=_JSON_CT, body=_pretty({"embeddings": embeddings}))

    def _predict(self, ctx: Ctx, route: _Route, behaviour: Behaviour) -> Reply:
        """Vertex AI's text embeddings: ``{"instances": [{"content"}], "parameters"}`` -> predictions."""
        info = self._model(route, "embedContent")
        body = ctx.body if isinstance(ctx.body, dict) else {}
        instances = body.get("instances")
        if not isinstance(instances, list) or not instances:
            raise _invalid("Invalid JSON payload received. Instances are required.")
        parameters = body.get("parameters") or {}
        dims = parameters.get("outputDimensionality") or info.embedding_dimensions or 768
        predictions, characters = [], 0
        for i, instance in enumerate(instances):
            content = instance.get("content") if isinstance(instance, dict) else None
            if not isinstance(content, str):
                raise _invalid(f"Invalid value at 'instances[{i}].content': a string is required.")
            characters += len(content.replace(" ", ""))
            values = embedding_for(content, min(int(dims), info.embedding_dimensions or int(dims)))
            stats = {"token_count": count_words(content), "truncated": False}
            predictions.append({"embeddings": {"statistics": stats, "values": values}})
        doc = {"predictions": predictions, "metadata": {"billableCharacterCount": characters}}
        return Reply(200, content_type=_JSON_CT, body=_pretty(doc))

    # ---- models -------------------------------------------------------------------------------

    @staticmethod
    def _model_object(name: str, info: GeminiModel) -> Json:
        obj: Json = {
            "name": f"models/{name}",
            "version": info.version,
            "displayName": info.display_name,
            "description": f"{info.display_name} (served by the fake upstream)",
            "inputTokenLimit": info.input_token_limit,
            "outputTokenLimit": info.output_token_limit,
            "supportedGenerationMethods": list(info.methods),
        }
        if not info.is_embedding:
            obj.update({"temperature": 1, "topP": 0.95, "topK": 64, "maxTemperature": 2})
        return obj

    def _list_models(self, ctx: Ctx) -> Reply:
        try:
            size = int(ctx.query.get("pageSize") or 50)
            offset = int(ctx.query.get("pageToken") or 0)
        except ValueError:
            return google_error(400, "Invalid page token.", "INVALID_ARGUMENT")
        names = list(self.models)
        page = names[offset : offset + max(1, min(size, 1000))]
        doc: Json = {"models": [self._model_object(n, self.models[n]) for n in page]}
        if offset + len(page) < len(names):
            doc["nextPageToken"] = str(offset + len(page))
        return Reply(200, content_type=_JSON_CT, body=_pretty(doc))

    def _get_model(self, route: _Route) -> Reply:
        name = route.model or ""
        info = self.models.get(name)
        if info is None:
            return google_error(
                404,
                f"models/{name} is not found for API version {route.version}, or is not supported for getModel. Call ListModels to see the list of available models and their supported methods.",
                "NOT_FOUND",
            )
        return Reply(200, content_type=_JSON_CT, body=_pretty(self._model_object(name, info)))


class FakeGemini(FakeUpstreamServer):
    """A fake Gemini API / Vertex AI Gemini server on 127.0.0.1, run by uvicorn in a thread.

    ``FakeGemini(api_key=..., access_token=..., models=..., project=None, location=None, host=...,
    port=0, **controls)``; ``controls`` are initial :class:`Behaviour` values (see :meth:`reset`).
    """

    _label = "fake-gemini"

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        access_token: str = DEFAULT_ACCESS_TOKEN,
        host: str = "127.0.0.1",
        port: int = 0,
        models: Mapping[str, GeminiModel] | None = None,
        project: str | None = None,
        location: str | None = None,
        **controls: Any,
    ) -> None:
        table = dict(DEFAULT_MODELS)
        table.update(models or {})
        self.state = UpstreamState(self._behaviour_from(controls))
        self.app = FakeGeminiApp(
            self.state,
            api_key=api_key,
            access_token=access_token,
            models=table,
            project=project,
            location=location,
        )
        self._init_server(host, port)

    @property
    def gemini(self) -> FakeGeminiApp:
        """The ASGI app (typed)."""
        assert isinstance(self.app, FakeGeminiApp)
        return self.app

    @property
    def api_key(self) -> str:
        """The only Developer API key accepted (``x-goog-api-key`` or ``?key=``)."""
        return self.gemini.api_key

    @property
    def access_token(self) -> str:
        """The only Vertex bearer token accepted."""
        return self.gemini.access_token

    @property
    def models(self) -> dict[str, GeminiModel]:
        """The served model table (mutable)."""
        return self.gemini.models


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the fake in the foreground: ``python -m tests.fakes.gemini_upstream --port 18002``."""
    parser = argparse.ArgumentParser(description="Fake Gemini API / Vertex AI upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18002)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--access-token", default=DEFAULT_ACCESS_TOKEN)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    state = UpstreamState(Behaviour(latency_ms=args.latency_ms, chunk_delay_ms=args.chunk_delay_ms))
    install_log_filter()
    print(f"fake Gemini upstream on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(
        FakeGeminiApp(state, api_key=args.api_key, access_token=args.access_token),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
    )


if __name__ == "__main__":
    main()
