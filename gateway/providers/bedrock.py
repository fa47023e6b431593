"""Amazon Bedrock: Converse / ConverseStream, signed with SigV4 by botocore.

Embeddings go through InvokeModel with the model family's own body: Amazon Titan Text Embeddings
(`amazon.titan-embed-text-*`, one text per call) and Cohere Embed (`cohere.embed-*`, up to 96).

The provider's credential is the AWS secret access key; `options.access_key_id` (and optionally
`options.session_token`) complete it. The base URL defaults to bedrock-runtime in the region.
ConverseStream answers in AWS's binary event-stream framing, decoded by botocore.
"""

from __future__ import annotations

import base64
import re
import uuid
from typing import Any
from urllib.parse import quote

import orjson

from gateway import tokens
from gateway.catalog import DeploymentInfo
from gateway.errors import GatewayError
from gateway.providers.base import Adapter, ErrorKind, UnsupportedOperation, UpstreamRequest, kind_for_status
from gateway.providers.translate import (
    ChunkWriter,
    append_turn,
    completion,
    embedding_inputs,
    embedding_list,
    function_tools,
    image_of,
    loads_arguments,
    max_tokens,
    single_choice,
    stop_list,
    text_of,
    wants_json,
)
from gateway.sse import Usage

STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                "guardrail_intervened": "content_filter", "content_filtered": "content_filter"}  # fmt: skip
_PROFILE = re.compile(r"^(?:us|eu|apac|us-gov|global|jp|au|ca)\.")
COHERE_MAX_TEXTS = 96
TITAN_DIMENSIONS = (256, 512, 1024)
IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/gif": "gif", "image/webp": "webp"}


def signed_request(deployment: DeploymentInfo, path: str, body: bytes) -> UpstreamRequest:
    """A POST to Bedrock Runtime signed with SigV4 (service `bedrock`)."""
    # botocore is imported on the first Bedrock call: a process without one never holds it (~10 MB).
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    provider = deployment.provider
    region = deployment.region or provider.region or "us-east-1"
    base = provider.base_url or f"https://bedrock-runtime.{region}.amazonaws.com"
    url = f"{base}{path}"
    credentials = Credentials(
        access_key=str(provider.options.get("access_key_id", "")), secret_key=provider.credential,
        token=provider.options.get("session_token") or None,
    )  # fmt: skip
    request = AWSRequest(method="POST", url=url, data=body,
                         headers={"content-type": "application/json", "accept": "application/json"})  # fmt: skip
    SigV4Auth(credentials, "bedrock", region).add_auth(request)
    return UpstreamRequest("POST", url, {k.lower(): v for k, v in request.headers.items()}, body)


def model_family(model_id: str) -> str:
    """`cohere` for `cohere.embed-v4:0`, its ARN or a cross-region profile such as `us.cohere...`."""
    base = _PROFILE.sub("", model_id.rsplit("/", 1)[-1])
    return base.split(".", 1)[0]


def embedding_body(model_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """InvokeModel's body for an embedding model, by family (the part of the id before the dot)."""
    texts = embedding_inputs(body)
    dimensions = body.get("dimensions")
    if model_family(model_id) == "cohere":
        if len(texts) > COHERE_MAX_TEXTS:
            raise GatewayError(400, f"This model embeds at most {COHERE_MAX_TEXTS} inputs per request.",
                               code="invalid_value", param="input")  # fmt: skip
        # OpenAI's embeddings have no input type; documents are the common case (indexing).
        return {"texts": texts, "input_type": "search_document", "truncate": "END"}
    if len(texts) != 1:
        raise GatewayError(400, "Amazon Titan embeds one input per request: send `input` as a single string.",
                           code="invalid_value", param="input")  # fmt: skip
    payload: dict[str, Any] = {"inputText": texts[0]}
    if "embed-text-v2" in model_id:
        if dimensions is not None and dimensions not in TITAN_DIMENSIONS:
            raise GatewayError(400, f"`dimensions` must be one of {', '.join(map(str, TITAN_DIMENSIONS))} for this model.",
                               code="invalid_value", param="dimensions")  # fmt: skip
        payload["normalize"] = True
        if dimensions is not None:
            payload["dimensions"] = dimensions
    elif dimensions is not None:
        raise GatewayError(
            400, "This model does not take `dimensions`.", code="invalid_value", param="dimensions"
        )
    return payload


def _content(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content or ():
        if not isinstance(part, dict):
            continue
        if part.get("type") in ("text", "input_text"):
            blocks.append({"text": str(part.get("text", ""))})
        elif part.get("type") == "image_url":
            _, mime, raw = image_of(part)
            if raw is None or mime not in IMAGE_FORMATS:
                raise GatewayError(400, "Bedrock takes images as data: URLs (png, jpeg, gif or webp).",
                                   code="invalid_value", param="messages")  # fmt: skip
            blocks.append(
                {
                    "image": {
                        "format": IMAGE_FORMATS[mime],
                        "source": {"bytes": base64.b64encode(raw).decode()},
                    }
                }
            )
    return blocks


def converse_body(body: dict[str, Any], call: Any) -> dict[str, Any]:
    single_choice(body)
    system: list[dict[str, str]] = []
    messages: list[dict[str, Any]] = []

    def push(role: str, items: list[dict[str, Any]]) -> None:
        append_turn(messages, role, items, "content")

    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in ("system", "developer"):
            system.append({"text": text_of(message.get("content"))})
        elif role == "user":
            push("user", _content(message))
        elif role == "assistant":
            blocks = _content(message)
            for call_ in message.get("tool_calls") or ():
                fn = call_.get("function") or {}
                blocks.append({"toolUse": {"toolUseId": call_.get("id"), "name": fn.get("name"),
                                           "input": loads_arguments(fn.get("arguments"))}})  # fmt: skip
            push("assistant", blocks)
        elif role == "tool":
            push("user", [{"toolResult": {"toolUseId": message.get("tool_call_id"),
                                          "content": [{"text": text_of(message.get("content"))}], "status": "success"}}])  # fmt: skip
    if wants_json(body):
        system.append({"text": "Respond with a single valid JSON object and nothing else."})
    inference: dict[str, Any] = {"maxTokens": max_tokens(body, call)}
    if body.get("temperature") is not None:
        inference["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        inference["topP"] = body["top_p"]
    if stops := stop_list(body):
        inference["stopSequences"] = stops
    out: dict[str, Any] = {"messages": messages, "inferenceConfig": inference}
    if system:
        out["system"] = system
    tools = function_tools(body)
    if tools:
        config: dict[str, Any] = {"tools": [{"toolSpec": {"name": t["name"], "description": t["description"] or t["name"],
                                                          "inputSchema": {"json": t["parameters"]}}} for t in tools]}  # fmt: skip
        choice = body.get("tool_choice")
        if choice == "required":
            config["toolChoice"] = {"any": {}}
        elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            config["toolChoice"] = {"tool": {"name": choice["function"].get("name")}}
        elif choice != "none":
            config["toolChoice"] = {"auto": {}}
        if choice != "none":
            out["toolConfig"] = config
    return out


def usage_of(raw: Any) -> Usage:
    usage = raw if isinstance(raw, dict) else {}
    cached = int(usage.get("cacheReadInputTokens") or 0)
    written = int(usage.get("cacheWriteInputTokens") or 0)
    return Usage(
        int(usage.get("inputTokens") or 0) + cached + written, int(usage.get("outputTokens") or 0), cached
    )


class EventStreamDecoder:
    """Bedrock's binary event stream → (event type, payload) → OpenAI chunks."""

    def __init__(self) -> None:
        from botocore.eventstream import EventStreamBuffer

        self.buffer = EventStreamBuffer()
        self.failed = False

    def events(self, chunk: bytes) -> list[tuple[str, str, dict[str, Any]]]:
        self.buffer.add_data(chunk)
        out = []
        for message in self.buffer:
            headers = message.headers
            try:
                payload = orjson.loads(message.payload) if message.payload else {}
            except orjson.JSONDecodeError:
                payload = {}
            out.append((str(headers.get(":message-type", "event")),
                        str(headers.get(":event-type") or headers.get(":exception-type") or ""), payload))  # fmt: skip
        return out


class ConverseStreamDecoder(EventStreamDecoder):
    def __init__(self, model: str, include_usage: bool) -> None:
        super().__init__()
        self.out = ChunkWriter(model, include_usage=include_usage)
        self.tools: dict[int, int] = {}
        self.usage: Usage | None = None
        self.reason = "stop"

    def feed(self, chunk: bytes) -> bytes:
        result = b""
        for message_type, name, payload in self.events(chunk):
            if message_type != "event":
                result += self.out.error(str(payload.get("message") or name), name or "upstream_error")
                continue
            if name == "messageStart":
                result += self.out.role()
            elif name == "contentBlockStart":
                tool = (payload.get("start") or {}).get("toolUse")
                if tool:
                    index = self.tools[payload.get("contentBlockIndex", 0)] = len(self.tools)
                    result += self.out.tool_start(index, str(tool.get("toolUseId")), str(tool.get("name")))
            elif name == "contentBlockDelta":
                delta = payload.get("delta") or {}
                if "text" in delta:
                    result += self.out.text(str(delta["text"]))
                elif "toolUse" in delta:
                    index = self.tools.get(payload.get("contentBlockIndex", 0), 0)
                    result += self.out.tool_args(index, str((delta["toolUse"] or {}).get("input", "")))
            elif name == "messageStop":
                self.reason = STOP_REASONS.get(str(payload.get("stopReason")), "stop")
            elif name == "metadata":
                self.usage = self.out.usage = usage_of(payload.get("usage"))
        return result

    def finish(self) -> bytes:
        return self.out.finish(self.reason) + self.out.close()

    def completion_text(self) -> str:
        return self.out.completion_text()


class InvokeStreamDecoder(EventStreamDecoder):
    """invoke-with-response-stream for Claude: each `chunk` event carries an Anthropic event, base64."""

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self.stream = stream

    @property
    def usage(self) -> Usage | None:
        return self.stream.usage

    def feed(self, chunk: bytes) -> bytes:
        result = b""
        for message_type, name, payload in self.events(chunk):
            if message_type != "event":
                result += self.stream.out.error(str(payload.get("message") or name), name or "upstream_error")
            elif name == "chunk" and payload.get("bytes"):
                try:
                    event = orjson.loads(base64.b64decode(payload["bytes"]))
                except (ValueError, orjson.JSONDecodeError):
                    continue
                if isinstance(event, dict):
                    result += self.stream.on_event(event)
        return result

    def finish(self) -> bytes:
        return self.stream.out.close()

    def completion_text(self) -> str:
        return str(self.stream.completion_text())


class BedrockAdapter(Adapter):
    """Converse (`/model/{id}/converse`) and ConverseStream (`/model/{id}/converse-stream`)."""

    endpoints = frozenset({"chat/completions", "embeddings"})
    passthrough = False

    def build(
        self, endpoint: str, deployment: DeploymentInfo, body: dict[str, Any], call: Any = None
    ) -> UpstreamRequest:
        if endpoint == "embeddings":
            return signed_request(
                deployment, f"/model/{quote(deployment.provider_model, safe=':')}/invoke",
                orjson.dumps(embedding_body(deployment.provider_model, body)),
            )  # fmt: skip
        if endpoint not in self.endpoints:
            raise UnsupportedOperation(endpoint)
        payload = converse_body(body, call)
        action = "converse-stream" if body.get("stream") else "converse"
        return signed_request(
            deployment, f"/model/{quote(deployment.provider_model, safe=':')}/{action}", orjson.dumps(payload)
        )

    def decode(self, endpoint: str, deployment: DeploymentInfo, raw: bytes, call: Any) -> tuple[bytes, Any]:
        answer = orjson.loads(raw)
        if endpoint == "embeddings":
            return self._embeddings(deployment, answer, call)
        message = ((answer.get("output") or {}).get("message")) or {}
        texts, calls = [], []
        for block in message.get("content") or ():
            if "text" in block:
                texts.append(block["text"])
            elif "toolUse" in block:
                tool = block["toolUse"]
                calls.append({"id": tool.get("toolUseId") or f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                              "function": {"name": tool.get("name"), "arguments": orjson.dumps(tool.get("input") or {}).decode()}})  # fmt: skip
        result = completion(model=deployment.provider_model, text="".join(texts) if texts or not calls else None,
                            tool_calls=calls, finish=STOP_REASONS.get(str(answer.get("stopReason")), "stop"),
                            usage=usage_of(answer.get("usage")))  # fmt: skip
        return orjson.dumps(result), result

    @staticmethod
    def _embeddings(deployment: DeploymentInfo, answer: Any, call: Any) -> tuple[bytes, Any]:
        body = call.body if call is not None else {}
        if "embedding" in answer:  # Titan: one vector, and the service's own token count
            vectors = [answer.get("embedding") or []]
            prompt = int(answer.get("inputTextTokenCount") or 0)
        else:  # Cohere: a vector per text; the token count travels in headers only, so estimate it
            embeddings = answer.get("embeddings")
            vectors = embeddings.get("float") or [] if isinstance(embeddings, dict) else embeddings or []
            prompt = tokens.count_prompt("embeddings", body)
        result = embedding_list(vectors, model=deployment.provider_model, prompt_tokens=prompt, body=body)
        return orjson.dumps(result), result

    def stream_decoder(self, endpoint: str, deployment: DeploymentInfo, call: Any, strip_usage: bool) -> Any:
        return ConverseStreamDecoder(deployment.provider_model, not strip_usage)

    def parse_error(self, body: bytes) -> tuple[str, Any, Any, Any]:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body[:500].decode("utf-8", "replace"), None, None, None
        message = obj.get("message") or obj.get("Message") if isinstance(obj, dict) else None
        return str(message or ""), None, None, None

    def kind_for(self, status: int, headers: Any) -> ErrorKind:
        error_type = str(headers.get("x-amzn-errortype", "") if headers is not None else "").split(":")[0]
        if status == 408 or error_type == "ModelTimeoutException":
            return ErrorKind.TIMEOUT
        if error_type == "ThrottlingException":
            return ErrorKind.RATE_LIMITED
        return kind_for_status(status)
