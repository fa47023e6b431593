"""A fake Amazon Bedrock Runtime upstream: a real HTTP server on loopback that checks SigV4.

Same design as :mod:`tests.fakes.openai_upstream` and :mod:`tests.fakes.anthropic_upstream` (whose
vendor-neutral machinery and Messages logic it reuses): a plain ASGI app served by uvicorn in a
background thread::

    with FakeBedrock(region="us-east-1") as fake:
        client = boto3.client("bedrock-runtime", endpoint_url=fake.url, region_name=fake.region,
                              aws_access_key_id=fake.access_key, aws_secret_access_key=fake.secret_key)
        client.converse(modelId="anthropic.claude-3-haiku-20240307-v1:0",
                        messages=[{"role": "user", "content": [{"text": "hi"}]}])

What it serves
--------------
``POST /model/{modelId}/converse``, ``/converse-stream``, ``/invoke`` and
``/invoke-with-response-stream`` (the last two for Anthropic Claude models only: the body is the
Anthropic Messages format with ``anthropic_version: "bedrock-2023-05-31"`` and no ``model``).
``modelId`` may be a model id, a cross-region inference profile (``us.anthropic...``) or an ARN
(URL-encoded in the path, as boto3 sends it); an unknown one is the service's 400
``The provided model identifier is invalid.`` ``anthropic_version`` must be ``bedrock-2023-05-31``
(or ``2026-10-21``, which the installed anthropic SDK's ``AnthropicBedrock`` sends); ``model`` or
``stream`` in the body are rejected as ``extraneous key`` ValidationExceptions.

``/invoke`` also serves the embedding models: Amazon Titan Text Embeddings (``amazon.titan-embed-
text-v2:0``: ``{"inputText", "dimensions" (256/512/1024), "normalize", "embeddingTypes"}`` ->
``{"embedding", "embeddingsByType", "inputTextTokenCount"}``; ``-v1``: ``inputText`` only) and
Cohere Embed (``cohere.embed-english-v3`` / ``-multilingual-v3``: ``{"texts" (at most 96),
"input_type" (required), "truncate", "embedding_types"}`` -> ``{"embeddings", "id",
"response_type": "embeddings_floats", "texts"}``, or ``embeddings`` keyed by type and
``"embeddings_by_type"`` when ``embedding_types`` is given). Vectors are the Gemini fake's
deterministic unit vectors (:func:`tests.fakes.gemini_upstream.embedding_for`); the token count is
the number of words. Streaming an embedding model is a ValidationException.

Authentication
--------------
Every request must carry a valid AWS Signature Version 4 for service ``bedrock`` and the
constructor's region, made with the constructor's access key and secret (and session token, when
given). The fake recomputes the signature with botocore's own ``botocore.auth.SigV4Auth`` over the
request exactly as received (raw path, raw query, the signed headers only, the body) and answers
the way AWS does: 403 ``MissingAuthenticationTokenException`` (no ``Authorization``), 403
``IncompleteSignatureException`` (malformed header), 403 ``UnrecognizedClientException`` (unknown
access key), 403 ``InvalidSignatureException`` (wrong secret, region, service, date or a body that
does not match). ``bearer_token`` additionally accepts ``Authorization: Bearer <token>`` (Bedrock
API keys; the service model lists ``smithy.api#httpBearerAuth``).

Wire details reproduced
-----------------------
* JSON bodies and event payloads are compact with keys sorted (the service's serialiser), error
  bodies ``{"message": "..."}`` with ``x-amzn-ErrorType: <Name>:http://internal.amazon.com/coral/
  com.amazon.bedrock/`` (botocore takes the part before the colon as ``Error.Code``); every reply
  has ``x-amzn-RequestId``.
* Streams are ``application/vnd.amazon.eventstream``: binary messages (prelude total length +
  headers length + prelude CRC32, headers ``:event-type`` / ``:content-type: application/json`` /
  ``:message-type: event``, payload, message CRC32), encoded here with ``binascii.crc32``. Event
  payloads carry Bedrock's ``"p"`` padding field (a prefix of ``abc...XYZ0-9``).
* ConverseStream: ``messageStart`` -> (``contentBlockStart`` with ``start.toolUse`` for a tool call
  only) -> ``contentBlockDelta`` (``delta.text`` per word, or ``delta.toolUse.input`` JSON pieces) ->
  ``contentBlockStop`` -> ``messageStop`` (``stopReason``) -> ``metadata`` (``usage``,
  ``metrics.latencyMs``).
* InvokeModelWithResponseStream: one ``chunk`` event per Anthropic stream event,
  ``{"bytes": base64(<event JSON>), "p": ...}``; no ``ping``; ``message_stop`` carries
  ``amazon-bedrock-invocationMetrics``. InvokeModel answers the Message object (id ``msg_bdrk_...``)
  with the ``X-Amzn-Bedrock-Input-Token-Count`` / ``-Output-Token-Count`` / ``-Invocation-Latency``
  headers.
* Mid-stream errors (``error_mid_stream=N``): an exception message (``:message-type: exception``,
  ``:exception-type: throttlingException`` or ``error_mid_stream_type``), which botocore raises as
  ``EventStreamError`` (a ``ClientError``) with that code.

Deterministic behaviour
-----------------------
As the other fakes: ``"Echo: <last user text>"`` one word per delta; ``"Tool result: <content>"``
after a ``toolResult`` (Converse) / ``tool_result`` (invoke); a ``toolUse`` of the first (or forced)
tool with input ``{"city": "Paris"}`` when tools are given and the last user text has "weather"
(or ``toolChoice`` is ``any``/``tool``); ``maxTokens`` cuts words -> ``max_tokens``;
``stopSequences`` cut before the earliest match -> ``stop_sequence``. Usage: ``inputTokens`` =
words + 3 per message + 3 (+ tools JSON / 4) minus the cache controls; ``outputTokens`` = words;
Anthropic and Amazon models also report ``cacheReadInputTokens`` / ``cacheWriteInputTokens`` (and
the ``...Count`` duplicates the service sends); ``totalTokens`` includes the cache tokens.
``omit_usage`` drops ConverseStream's ``metadata`` event and the invoke token headers.

``fail_next(status, ...)``: 400 ValidationException, 403 AccessDeniedException, 404
ResourceNotFoundException, 408 ModelTimeoutException, 424 ModelErrorException, 429
ThrottlingException, 500 InternalServerException, 503 ServiceUnavailableException (``error_type``
picks another name, e.g. ``ServiceQuotaExceededException``). ``retry_after`` is sent as a
``Retry-After`` header only when given: AWS sends none.

References followed
-------------------
* AWS Bedrock Runtime API reference: Converse / ConverseStream (request ``messages``,
  ``system``, ``inferenceConfig`` (maxTokens, temperature, topP, stopSequences), ``toolConfig``
  (``tools[].toolSpec``, ``toolChoice`` auto/any/tool); response ``output.message``,
  ``stopReason``, ``usage``, ``metrics``; the stream event members), InvokeModel /
  InvokeModelWithResponseStream, the error list per operation, and the Anthropic Claude Messages
  parameters page (``anthropic_version: bedrock-2023-05-31``).
* botocore (installed 1.44.8): ``data/bedrock-runtime/2023-09-30/service-2.json`` (every shape,
  error status code and the ``bedrock`` signing name), ``auth.py`` (``SigV4Auth``), ``eventstream.py``
  (the binary framing the tests decode with), ``parsers.py`` (``x-amzn-errortype`` and
  ``:exception-type`` handling).
* The AWS event-stream encoding (prelude, header value type 7 = string, CRC32s), cross-checked
  against a captured ``chunk`` frame in public test code.
* Recorded traffic in public code: Converse bodies (sorted keys, ``cacheReadInputTokenCount``
  duplicates), ConverseStream payloads with the ``"p"`` padding, an invoke-with-response-stream
  capture (``msg_bdrk_`` ids, no ping, ``amazon-bedrock-invocationMetrics``), an
  ``x-amzn-errortype: ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/``
  response and the ``Malformed input request: #: extraneous key [model] is not permitted, please
  reformat your input and try again.`` messages; ``The security token included in the request is
  invalid.`` for an unknown key.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime
import hashlib
import hmac
import re
import struct
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import orjson
import uvicorn
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.fakes.anthropic_upstream import (
    ApiError,
    Behaviour,
    Ctx,
    Failure,
    FakeUpstreamApp,
    FakeUpstreamServer,
    MessagesValidator,
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
from tests.fakes.gemini_upstream import embedding_for

__all__ = [
    "DEFAULT_ACCESS_KEY",
    "DEFAULT_MODELS",
    "DEFAULT_REGION",
    "DEFAULT_SECRET_KEY",
    "FakeBedrock",
    "FakeBedrockApp",
    "event_message",
    "main",
    "verify_sigv4",
]

Json = dict[str, Any]

DEFAULT_ACCESS_KEY = "AKIAFAKEUPSTREAM0001"
DEFAULT_SECRET_KEY = "fake/upstream/secret/key/0123456789abcdef"
DEFAULT_REGION = "us-east-1"
SERVICE = "bedrock"
BEDROCK_ANTHROPIC_VERSION = "bedrock-2023-05-31"
# The documented value, plus what the installed anthropic SDK (2.16.0) puts in the body: its
# AnthropicBedrock client copies its API version header ("2026-10-21") into anthropic_version.
BEDROCK_ANTHROPIC_VERSIONS: frozenset[str] = frozenset({BEDROCK_ANTHROPIC_VERSION, "2026-10-21"})
TOOL_INPUT_PIECES = ('{"city": ', '"Paris"}')
SIGNATURE_WINDOW = datetime.timedelta(minutes=5)

DEFAULT_MODELS: frozenset[str] = frozenset(
    {
        "anthropic.claude-3-haiku-20240307-v1:0",
        "anthropic.claude-3-5-haiku-20241022-v1:0",
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "anthropic.claude-3-5-sonnet-20241022-v2:0",
        "anthropic.claude-3-7-sonnet-20250219-v1:0",
        "anthropic.claude-sonnet-4-20250514-v1:0",
        "anthropic.claude-sonnet-4-5-20250929-v1:0",
        "anthropic.claude-opus-4-1-20250805-v1:0",
        "anthropic.claude-haiku-4-5-20251001-v1:0",
        "amazon.nova-micro-v1:0",
        "amazon.nova-lite-v1:0",
        "amazon.nova-pro-v1:0",
        "meta.llama3-8b-instruct-v1:0",
        "meta.llama3-1-70b-instruct-v1:0",
        "mistral.mistral-large-2402-v1:0",
        "amazon.titan-embed-text-v1",
        "amazon.titan-embed-text-v2:0",
        "cohere.embed-english-v3",
        "cohere.embed-multilingual-v3",
    }
)

_PATH = re.compile(r"^/model/([^/]+)/(converse|converse-stream|invoke|invoke-with-response-stream)$")
_PROFILE_PREFIX = re.compile(r"^(us|eu|apac|us-gov|global|jp|au|ca)\.")
_PAD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_B64ISH = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_EVENTSTREAM = "application/vnd.amazon.eventstream"
_BEDROCK_NS = "http://internal.amazon.com/coral/com.amazon.bedrock/"
# The generic Coral service namespace, used by AWS's front end for authentication errors.
_CORAL_NS = "http://internal.amazon.com/coral/com.amazon.coral.service/"

_EXCEPTIONS: dict[int, tuple[str, str]] = {
    400: (
        "ValidationException",
        "Input validation failed. Check your request parameters and retry the request.",
    ),
    403: ("AccessDeniedException", "You don't have access to the model with the specified model ID."),
    404: (
        "ResourceNotFoundException",
        "Could not resolve the foundation model from the provided model identifier.",
    ),
    408: ("ModelTimeoutException", "Model has timed out in processing the request. Try your request again."),
    424: ("ModelErrorException", "The model encountered an error processing the request."),
    429: ("ThrottlingException", "Too many requests, please wait before trying again."),
    500: (
        "InternalServerException",
        "The system encountered an unexpected error during processing. Try your request again.",
    ),
    503: ("ServiceUnavailableException", "Bedrock is unable to process your request."),
}
_STREAM_EXCEPTIONS: dict[str, str] = {
    "throttlingException": "Too many requests, please wait before trying again.",
    "internalServerException": "The system encountered an unexpected error during processing. Try your request again.",
    "modelStreamErrorException": "The model encountered an error while streaming the response.",
    "validationException": "Input validation failed. Check your request parameters and retry the request.",
    "serviceUnavailableException": "Bedrock is unable to process your request.",
}
_BAD_SIGNATURE = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
    "Access Key and signing method. Consult the service documentation for details."
)


# --------------------------------------------------------------------------------------------------
# Serialisation: JSON, errors, the event-stream encoding
# --------------------------------------------------------------------------------------------------


def _json(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def bedrock_error(status: int, name: str, message: str, namespace: str = _BEDROCK_NS) -> Reply:
    """An AWS restJson error: ``{"message": ...}`` plus ``x-amzn-ErrorType: <name>:<namespace>``."""
    return Reply(
        status,
        body=_json({"message": message}),
        headers=[("x-amzn-ErrorType", f"{name}:{namespace}")],
    )


def _validation(message: str) -> ApiError:
    return ApiError(bedrock_error(400, "ValidationException", message))


def _padding(content: bytes) -> str:
    # Bedrock pads event payloads with a prefix of this alphabet; the length is derived from the
    # content so streams stay byte-for-byte reproducible.
    return _PAD[: 1 + zlib.crc32(content) % len(_PAD)]


def event_message(headers: Iterable[tuple[str, str]], payload: bytes) -> bytes:
    """One ``application/vnd.amazon.eventstream`` message with string headers.

    Layout: total length (4, big-endian), headers length (4), prelude CRC32 (4), headers (name
    length (1), name, value type 7 = string (1), value length (2), value), payload, message CRC32 (4).
    """
    encoded = bytearray()
    for name, value in headers:
        n, v = name.encode(), value.encode()
        encoded += bytes([len(n)]) + n + b"\x07" + struct.pack(">H", len(v)) + v
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    message = prelude + struct.pack(">I", binascii.crc32(prelude)) + bytes(encoded) + payload
    return message + struct.pack(">I", binascii.crc32(message))


def _event(event_type: str, body: Json) -> bytes:
    content = _json(body)
    payload = _json({**body, "p": _padding(content)})
    headers = [(":event-type", event_type), (":content-type", "application/json"), (":message-type", "event")]
    return event_message(headers, payload)


def _exception(exception_type: str, message: str | None = None) -> bytes:
    body: Json = {"message": message or _STREAM_EXCEPTIONS.get(exception_type, "An error occurred.")}
    if exception_type == "modelStreamErrorException":
        body.update({"originalMessage": "Internal server error", "originalStatusCode": 500})
    headers = [
        (":exception-type", exception_type),
        (":content-type", "application/json"),
        (":message-type", "exception"),
    ]
    return event_message(headers, _json(body))


# --------------------------------------------------------------------------------------------------
# SigV4
# --------------------------------------------------------------------------------------------------

_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+)\s*,\s*SignedHeaders=(?P<signed>[^,\s]+)\s*,"
    r"\s*Signature=(?P<signature>[0-9a-f]{64})\s*$"
)


def _auth_error(name: str, message: str, status: int = 403) -> ApiError:
    return ApiError(bedrock_error(status, name, message, _CORAL_NS))


def verify_sigv4(
    ctx: Ctx,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    service: str = SERVICE,
    session_token: str | None = None,
    now: datetime.datetime | None = None,
) -> None:
    """Check the request's SigV4 ``Authorization`` header; raise the AWS error reply if it is wrong.

    The expected signature is recomputed with botocore's ``SigV4Auth`` from the request as received:
    method, raw path and query, the headers listed in ``SignedHeaders`` (and only those), the body,
    and the ``X-Amz-Date`` timestamp.
    """
    header = ctx.headers.get("authorization")
    if not header:
        raise _auth_error("MissingAuthenticationTokenException", "Missing Authentication Token")
    match = _AUTH.match(header.strip())
    if not match:
        raise _auth_error(
            "IncompleteSignatureException",
            f"Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters. "
            f"Authorization={header}",
        )
    parts = match["credential"].split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise _auth_error("IncompleteSignatureException", f"Credential is malformed: {match['credential']}")
    key_id, scope_date, scope_region, scope_service, _ = parts
    if not hmac.compare_digest(key_id, access_key):
        raise _auth_error(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    amz_date = ctx.headers.get("x-amz-date")
    if not amz_date:
        raise _auth_error(
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        )
    try:
        signed_at = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        raise _auth_error(
            "IncompleteSignatureException", f"Date must be in ISO-8601 'basic format'. Got '{amz_date}'."
        ) from None
    if scope_date != amz_date[:8]:
        raise _auth_error(
            "InvalidSignatureException",
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{scope_date}' != '{amz_date[:8]}', from '{amz_date}'.",
        )
    if scope_region != region:
        raise _auth_error("InvalidSignatureException", "Credential should be scoped to a valid region. ")
    if scope_service != service:
        raise _auth_error(
            "InvalidSignatureException", f"Credential should be scoped to correct service: '{service}'. "
        )
    current = now or datetime.datetime.now(datetime.UTC)
    stamp = "%Y%m%dT%H%M%SZ"
    if signed_at < current - SIGNATURE_WINDOW:
        raise _auth_error(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is now earlier than "
            f"{(current - SIGNATURE_WINDOW).strftime(stamp)} ({current.strftime(stamp)} - 5 min.)",
        )
    if signed_at > current + SIGNATURE_WINDOW:
        raise _auth_error(
            "InvalidSignatureException",
            f"Signature not yet current: {amz_date} is still later than "
            f"{(current + SIGNATURE_WINDOW).strftime(stamp)} ({current.strftime(stamp)} + 5 min.)",
        )
    signed = match["signed"].split(";")
    if "host" not in signed:
        raise _auth_error(
            "InvalidSignatureException",
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        )
    if session_token is not None and ctx.headers.get("x-amz-security-token") != session_token:
        raise _auth_error(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    content_sha = ctx.headers.get("x-amz-content-sha256")
    if (
        content_sha
        and content_sha != "UNSIGNED-PAYLOAD"
        and content_sha != hashlib.sha256(ctx.raw_body).hexdigest()
    ):
        raise _auth_error("InvalidSignatureException", _BAD_SIGNATURE)
    headers = {name: ctx.headers.get(name, "") for name in signed}
    url = f"http://{ctx.headers.get('host', '')}{ctx.raw_path}"
    if ctx.query_string:
        url += "?" + ctx.query_string
    request = AWSRequest(method=ctx.method, url=url, data=ctx.raw_body, headers=headers)
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(access_key, secret_key, session_token), service, region)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, match["signature"]):
        raise _auth_error("InvalidSignatureException", _BAD_SIGNATURE)


# --------------------------------------------------------------------------------------------------
# Converse
# --------------------------------------------------------------------------------------------------


def _blocks_text(blocks: Any) -> str:
    if not isinstance(blocks, list):
        return ""
    return " ".join(b["text"] for b in blocks if isinstance(b, dict) and isinstance(b.get("text"), str))


def _tool_result_text(result: Json) -> str:
    pieces: list[str] = []
    for item in result.get("content") or []:
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("text"), str):
            pieces.append(item["text"])
        elif "json" in item:
            pieces.append(orjson.dumps(item["json"]).decode())
    return " ".join(pieces)


@dataclass
class _ConversePlan:
    text: TextPlan | None
    tool_name: str | None
    tool_id: str | None
    input_tokens: int
    cache_read: int
    cache_write: int
    cache_fields: bool

    @property
    def stop_reason(self) -> str:
        if self.tool_name is not None:
            return "tool_use"
        assert self.text is not None
        return {"end": "end_turn", "max_tokens": "max_tokens", "stop_sequence": "stop_sequence"}[
            self.text.reason
        ]

    @property
    def output_tokens(self) -> int:
        if self.tool_name is not None:
            return len(TOOL_INPUT_PIECES)
        assert self.text is not None
        return len(self.text.pieces)

    def usage(self) -> Json:
        usage: Json = {
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "totalTokens": self.input_tokens + self.output_tokens + self.cache_read + self.cache_write,
        }
        if self.cache_fields:
            usage.update(
                {
                    "cacheReadInputTokenCount": self.cache_read,
                    "cacheReadInputTokens": self.cache_read,
                    "cacheWriteInputTokenCount": self.cache_write,
                    "cacheWriteInputTokens": self.cache_write,
                }
            )
        return usage


def _plan_converse(body: Any, behaviour: Behaviour, model_id: str) -> _ConversePlan:
    if not isinstance(body, dict):
        raise _validation("Malformed input request, please reformat your input and try again.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _validation(
            "The model returned the following errors: messages: at least one message is required"
        )
    previous = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise _validation(
                f"Value at 'messages.{i + 1}.member.role' failed to satisfy constraint: Member must satisfy enum value set: [user, assistant]"
            )
        if not isinstance(message.get("content"), list):
            raise _validation(
                f"Value at 'messages.{i + 1}.member.content' failed to satisfy constraint: Member must not be null"
            )
        if i == 0 and message["role"] != "user":
            raise _validation(
                "A conversation must start with a user message. Try again with a conversation that starts with a user message."
            )
        if message["role"] == previous:
            raise _validation(
                "A conversation must alternate between user and assistant roles. Make sure the conversation "
                "alternates between user and assistant roles and try again."
            )
        previous = message["role"]
    config = body.get("inferenceConfig") or {}
    max_tokens = config.get("maxTokens") if isinstance(config, dict) else None
    stops = config.get("stopSequences") if isinstance(config, dict) else None
    tool_config = body.get("toolConfig") or {}
    tools = [t.get("toolSpec") for t in tool_config.get("tools") or [] if isinstance(t, dict)]
    names = [t["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]
    choice = tool_config.get("toolChoice") or {}

    prompt = 3 + count_words(_blocks_text(body.get("system")))
    for message in messages:
        prompt += 3 + count_words(_blocks_text(message["content"]))
        for block in message["content"]:
            if isinstance(block, dict) and isinstance(block.get("toolResult"), dict):
                prompt += count_words(_tool_result_text(block["toolResult"]))
    if tools:
        prompt += len(orjson.dumps(tool_config.get("tools"))) // 4
    cache_read = min(max(0, behaviour.cache_read_tokens), prompt)
    cache_write = min(max(0, behaviour.cache_write_tokens), prompt - cache_read)
    family = _family(model_id)
    common = {
        "input_tokens": prompt - cache_read - cache_write,
        "cache_read": cache_read,
        "cache_write": cache_write,
        "cache_fields": family in ("anthropic", "amazon"),
    }

    last = messages[-1]
    tool_result = next(
        (
            b["toolResult"]
            for b in last["content"]
            if isinstance(b, dict) and isinstance(b.get("toolResult"), dict)
        ),
        None,
    )
    last_user_text = next((_blocks_text(m["content"]) for m in reversed(messages) if m["role"] == "user"), "")
    tool_name = None
    if tool_result is None and names:
        if isinstance(choice.get("tool"), dict) and isinstance(choice["tool"].get("name"), str):
            tool_name = choice["tool"]["name"]
        elif "any" in choice or "weather" in last_user_text.lower():
            tool_name = names[0]
    if tool_name is not None:
        return _ConversePlan(None, tool_name, "tooluse_" + rand_chars(22, _B64ISH), **common)
    if behaviour.reply_text is not None:
        base = behaviour.reply_text
    elif tool_result is not None:
        base = "Tool result: " + _tool_result_text(tool_result)
    else:
        base = echo(last_user_text)
    text = plan_text(base, behaviour.stream_words, max_tokens, stops)
    return _ConversePlan(text, None, None, **common)


def _family(model_id: str) -> str:
    base = _PROFILE_PREFIX.sub("", model_id)
    return base.split(".", 1)[0]


def _claude_name(model_id: str) -> str:
    """``anthropic.claude-3-haiku-20240307-v1:0`` -> ``claude-3-haiku-20240307`` (what Bedrock
    reports as the Message's ``model``)."""
    base = _PROFILE_PREFIX.sub("", model_id)
    base = base.removeprefix("anthropic.")
    return re.sub(r"-v\d+(:\d+)?$", "", base)


# --------------------------------------------------------------------------------------------------
# The ASGI app
# --------------------------------------------------------------------------------------------------


class FakeBedrockApp(FakeUpstreamApp):
    """The ASGI application for Bedrock Runtime's Converse and InvokeModel operations."""

    def __init__(
        self,
        state: UpstreamState | None = None,
        *,
        access_key: str = DEFAULT_ACCESS_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        region: str = DEFAULT_REGION,
        session_token: str | None = None,
        bearer_token: str | None = None,
        models: Iterable[str] | None = None,
    ) -> None:
        super().__init__(state or UpstreamState())
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.session_token = session_token
        self.bearer_token = bearer_token
        self.models: set[str] = set(DEFAULT_MODELS if models is None else models)
        self.validator = MessagesValidator(lambda status, type_, message: _validation(message))

    def applies_failures(self, ctx: Ctx) -> bool:
        """Only the model operations consume injected failures."""
        return ctx.raw_path.startswith("/model/")

    def extra_headers(self, ctx: Ctx, reply: Reply) -> list[tuple[str, str]]:
        """``x-amzn-RequestId`` on every reply."""
        return [("x-amzn-RequestId", str(uuid.uuid4()))]

    def before_failures(self, ctx: Ctx) -> None:
        """AWS authenticates before anything else, so injected failures need a valid signature too."""
        self._authenticate(ctx)

    def failure_reply(self, ctx: Ctx, failure: Failure) -> Reply:
        """The service's error for an injected status."""
        headers = list(failure.headers)
        if failure.retry_after is not None:
            headers.append(("Retry-After", str(int(failure.retry_after))))
        if failure.body is not None:
            return Reply(failure.status, body=custom_body(failure.body), headers=headers)
        name, message = _EXCEPTIONS.get(
            failure.status,
            ("InternalServerException", _EXCEPTIONS[500][1])
            if failure.status >= 500
            else ("ValidationException", _EXCEPTIONS[400][1]),
        )
        reply = bedrock_error(failure.status, failure.error_type or name, message)
        reply.headers.extend(headers)
        return reply

    def _authenticate(self, ctx: Ctx) -> None:
        header = ctx.headers.get("authorization", "")
        if self.bearer_token is not None and header.lower().startswith("bearer "):
            if not hmac.compare_digest(header[7:].strip(), self.bearer_token):
                raise _auth_error(
                    "UnrecognizedClientException",
                    "Invalid API Key format: Must start with pre-defined prefix",
                )
            return
        verify_sigv4(
            ctx,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            session_token=self.session_token,
        )

    def dispatch(self, ctx: Ctx, behaviour: Behaviour) -> Reply:
        """Authenticate, then route one request."""
        if ctx.method == "GET" and ctx.path in ("/", "/health", "/healthz", "/ping"):
            return Reply(200, body=b'{"status":"ok"}')
        match = _PATH.match(ctx.raw_path)
        if ctx.method != "POST" or match is None:
            return bedrock_error(404, "UnknownOperationException", "UnknownOperationException", _CORAL_NS)
        self._authenticate(ctx)
        model_id = self._resolve_model(unquote(match[1]))
        operation = match[2]
        started = time.monotonic()
        if operation == "converse":
            return self._converse(ctx, behaviour, model_id, started)
        if operation == "converse-stream":
            return self._converse_stream(ctx, behaviour, model_id, started)
        return self._invoke(
            ctx, behaviour, model_id, started, stream=operation == "invoke-with-response-stream"
        )

    def _resolve_model(self, model_id: str) -> str:
        # ARNs name a foundation model or an inference profile after the last "/".
        name = model_id.rsplit("/", 1)[-1] if model_id.startswith("arn:") else model_id
        if name not in self.models and _PROFILE_PREFIX.sub("", name) not in self.models:
            raise _validation("The provided model identifier is invalid.")
        return name

    # ---- Converse -----------------------------------------------------------------------------

    @staticmethod
    def _latency(started: float, behaviour: Behaviour) -> int:
        return max(1, int((time.monotonic() - started) * 1000 + behaviour.latency_ms))

    def _converse(self, ctx: Ctx, behaviour: Behaviour, model_id: str, started: float) -> Reply:
        plan = _plan_converse(ctx.body, behaviour, model_id)
        if plan.tool_name is not None:
            content: list[Json] = [
                {"toolUse": {"input": {"city": "Paris"}, "name": plan.tool_name, "toolUseId": plan.tool_id}}
            ]
        else:
            assert plan.text is not None
            content = [{"text": plan.text.text}]
        doc = {
            "metrics": {"latencyMs": self._latency(started, behaviour)},
            "output": {"message": {"content": content, "role": "assistant"}},
            "stopReason": plan.stop_reason,
            "usage": plan.usage(),
        }
        return Reply(200, body=_json(doc))

    def _converse_stream(self, ctx: Ctx, behaviour: Behaviour, model_id: str, started: float) -> Reply:
        plan = _plan_converse(ctx.body, behaviour, model_id)

        def events() -> Iterator[bytes]:
            yield _event("messageStart", {"role": "assistant"})
            if plan.tool_name is not None:
                start = {"toolUse": {"name": plan.tool_name, "toolUseId": plan.tool_id}}
                yield _event("contentBlockStart", {"contentBlockIndex": 0, "start": start})
                for piece in TOOL_INPUT_PIECES:
                    delta = {"toolUse": {"input": piece}}
                    yield _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": delta})
            else:
                assert plan.text is not None
                for piece in plan.text.pieces:
                    yield _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}})
            yield _event("contentBlockStop", {"contentBlockIndex": 0})
            yield _event("messageStop", {"stopReason": plan.stop_reason})
            if not behaviour.omit_usage:
                metrics = {"latencyMs": self._latency(started, behaviour)}
                yield _event("metadata", {"metrics": metrics, "usage": plan.usage()})

        return Reply(
            200,
            content_type=_EVENTSTREAM,
            events=events(),
            stream_error=_exception(behaviour.error_mid_stream_type or "throttlingException"),
        )

    # ---- InvokeModel (Anthropic Claude) -------------------------------------------------------

    def _invoke(
        self, ctx: Ctx, behaviour: Behaviour, model_id: str, started: float, *, stream: bool
    ) -> Reply:
        if "embed" in model_id and _family(model_id) in ("amazon", "cohere"):
            if stream:
                raise _validation("The model is unsupported for streaming.")
            return self._embed(ctx, behaviour, model_id, started)
        if _family(model_id) != "anthropic":
            raise _validation(
                f"The fake upstream only implements InvokeModel for Anthropic Claude models (got {model_id})."
            )
        body = ctx.body
        if not isinstance(body, dict):
            raise _validation(
                "Malformed input request: #: expected type: JSONObject, please reformat your input and try again."
            )
        violations = [
            f"#: required key [{k}] not found"
            for k in ("anthropic_version", "max_tokens", "messages")
            if k not in body
        ]
        violations += [f"#: extraneous key [{k}] is not permitted" for k in ("model", "stream") if k in body]
        if violations:
            raise _validation(
                f"Malformed input request: {''.join(violations)}, please reformat your input and try again."
            )
        if body["anthropic_version"] not in BEDROCK_ANTHROPIC_VERSIONS:
            raise _validation(
                f"Malformed input request: #/anthropic_version: {body['anthropic_version']} is not a valid enum value, "
                "please reformat your input and try again."
            )
        self.validator.check(body, require_model=False)
        plan = self.validator.plan(
            body, behaviour, _claude_name(model_id), "msg_bdrk_01" + rand_chars(22, _B64ISH[:-2])
        )
        if not stream:
            headers = (
                []
                if behaviour.omit_usage
                else self._token_headers(
                    plan.input_tokens, plan.output_tokens, plan.cache_read, plan.cache_write
                )
            )
            headers.append(("X-Amzn-Bedrock-Invocation-Latency", str(self._latency(started, behaviour))))
            return Reply(200, body=orjson.dumps(plan.message()), headers=headers)

        def chunks() -> Iterator[bytes]:
            first_byte = self._latency(started, behaviour)
            for event in plan.events(ping=False):
                if event["type"] == "message_stop":
                    event = {
                        **event,
                        "amazon-bedrock-invocationMetrics": {
                            "inputTokenCount": plan.input_tokens,
                            "outputTokenCount": plan.output_tokens,
                            "invocationLatency": self._latency(started, behaviour),
                            "firstByteLatency": first_byte,
                        },
                    }
                encoded = base64.b64encode(orjson.dumps(event)).decode()
                payload = orjson.dumps({"bytes": encoded, "p": _padding(encoded.encode())})
                headers = [
                    (":event-type", "chunk"),
                    (":content-type", "application/json"),
                    (":message-type", "event"),
                ]
                yield event_message(headers, payload)

        return Reply(
            200,
            content_type=_EVENTSTREAM,
            events=chunks(),
            headers=[("X-Amzn-Bedrock-Content-Type", "application/json")],
            stream_error=_exception(behaviour.error_mid_stream_type or "throttlingException"),
        )

    # ---- InvokeModel (embedding models) -------------------------------------------------------

    def _embed(self, ctx: Ctx, behaviour: Behaviour, model_id: str, started: float) -> Reply:
        body = ctx.body
        if not isinstance(body, dict):
            raise _validation(
                "Malformed input request: #: expected type: JSONObject, please reformat your input and try again."
            )
        allowed, required = (
            ({"texts", "input_type", "truncate", "embedding_types", "images"}, ("texts", "input_type"))
            if _family(model_id) == "cohere"
            else ({"inputText", "dimensions", "normalize", "embeddingTypes"}, ("inputText",))
            if "v2" in model_id
            else ({"inputText"}, ("inputText",))
        )
        violations = [f"#: required key [{k}] not found" for k in required if k not in body]
        violations += [f"#: extraneous key [{k}] is not permitted" for k in body if k not in allowed]
        if body.get("dimensions", 1024) not in (256, 512, 1024):
            violations.append(f"#/dimensions: {body['dimensions']} is not a valid enum value")
        texts = body.get("texts")
        if "texts" in body and (not isinstance(texts, list) or not all(isinstance(t, str) for t in texts)):
            violations.append("#/texts: expected type: JSONArray of String")
        elif isinstance(texts, list) and len(texts) > 96:
            violations.append(f"#/texts: expected maximum item count: 96, found: {len(texts)}")
        if "inputText" in body and not isinstance(body["inputText"], str):
            violations.append("#/inputText: expected type: String")
        if violations:
            raise _validation(
                f"Malformed input request: {', '.join(violations)}, please reformat your input and try again."
            )
        if _family(model_id) == "cohere":
            vectors = [embedding_for(t, 1024) for t in texts or ()]
            words = sum(count_words(t) for t in texts or ())
            types = body.get("embedding_types")
            doc: Json = {"id": str(uuid.uuid4()), "texts": texts}
            if types:
                doc |= {"embeddings": dict.fromkeys(types, vectors), "response_type": "embeddings_by_type"}
            else:
                doc |= {"embeddings": vectors, "response_type": "embeddings_floats"}
        else:
            vector = embedding_for(
                body["inputText"], int(body.get("dimensions", 1024 if "v2" in model_id else 1536))
            )
            words = count_words(body["inputText"])
            doc = {"embedding": vector, "inputTextTokenCount": words}
            if "v2" in model_id:
                doc["embeddingsByType"] = {"float": vector}
        headers = [] if behaviour.omit_usage else self._token_headers(words, 0, 0, 0)[:1]
        headers.append(("X-Amzn-Bedrock-Invocation-Latency", str(self._latency(started, behaviour))))
        return Reply(200, body=_json(doc), headers=headers)

    @staticmethod
    def _token_headers(
        input_tokens: int, output_tokens: int, cache_read: int, cache_write: int
    ) -> list[tuple[str, str]]:
        headers = [
            ("X-Amzn-Bedrock-Input-Token-Count", str(input_tokens)),
            ("X-Amzn-Bedrock-Output-Token-Count", str(output_tokens)),
        ]
        if cache_read:
            headers.append(("X-Amzn-Bedrock-Cache-Read-Input-Token-Count", str(cache_read)))
        if cache_write:
            headers.append(("X-Amzn-Bedrock-Cache-Write-Input-Token-Count", str(cache_write)))
        return headers


class FakeBedrock(FakeUpstreamServer):
    """A fake Bedrock Runtime on 127.0.0.1 that verifies SigV4, run by uvicorn in a thread.

    ``FakeBedrock(access_key=..., secret_key=..., region="us-east-1", session_token=None,
    bearer_token=None, models=..., host=..., port=0, **controls)``; ``controls`` are initial
    :class:`Behaviour` values (see :meth:`reset`).
    """

    _label = "fake-bedrock"

    def __init__(
        self,
        *,
        access_key: str = DEFAULT_ACCESS_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        region: str = DEFAULT_REGION,
        session_token: str | None = None,
        bearer_token: str | None = None,
        models: Iterable[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        **controls: Any,
    ) -> None:
        self.state = UpstreamState(self._behaviour_from(controls))
        self.app = FakeBedrockApp(
            self.state,
            access_key=access_key,
            secret_key=secret_key,
            region=region,
            session_token=session_token,
            bearer_token=bearer_token,
            models=set(DEFAULT_MODELS) | set(models or ()),
        )
        self._init_server(host, port)

    @property
    def bedrock(self) -> FakeBedrockApp:
        """The ASGI app (typed)."""
        assert isinstance(self.app, FakeBedrockApp)
        return self.app

    @property
    def access_key(self) -> str:
        """The only access key id accepted."""
        return self.bedrock.access_key

    @property
    def secret_key(self) -> str:
        """The secret the signatures must be made with."""
        return self.bedrock.secret_key

    @property
    def region(self) -> str:
        """The region the signatures must be scoped to."""
        return self.bedrock.region

    @property
    def api_key(self) -> str:
        """The access key id (for symmetry with the other fakes)."""
        return self.bedrock.access_key

    @property
    def models(self) -> set[str]:
        """The served model ids (mutable)."""
        return self.bedrock.models

    def credentials(self) -> Mapping[str, str]:
        """``boto3.client(...)`` keyword arguments for this fake (endpoint, region, keys)."""
        creds = {
            "endpoint_url": self.url,
            "region_name": self.region,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
        }
        if self.bedrock.session_token:
            creds["aws_session_token"] = self.bedrock.session_token
        return creds


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the fake in the foreground: ``python -m tests.fakes.bedrock_upstream --port 18003``."""
    parser = argparse.ArgumentParser(description="Fake Amazon Bedrock Runtime upstream (checks SigV4).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18003)
    parser.add_argument("--access-key", default=DEFAULT_ACCESS_KEY)
    parser.add_argument("--secret-key", default=DEFAULT_SECRET_KEY)
    parser.add_argument("--region", default=DEFAULT_REGION)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    state = UpstreamState(Behaviour(latency_ms=args.latency_ms, chunk_delay_ms=args.chunk_delay_ms))
    install_log_filter()
    print(f"fake Bedrock upstream on http://{args.host}:{args.port} (region {args.region})", flush=True)
    uvicorn.run(
        FakeBedrockApp(state, access_key=args.access_key, secret_key=args.secret_key, region=args.region),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
    )


if __name__ == "__main__":
    main()
