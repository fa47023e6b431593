"""Anthropic Messages: the direct API, and Claude on Amazon Bedrock (invoke-model, SigV4-signed).

OpenAI chat ↔ Messages in both directions: system prompts, multi-turn, images, tools and tool
results, stop sequences, max tokens, temperature/top_p; streams translated event by event.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import orjson

from gateway.catalog import DeploymentInfo
from gateway.providers.base import Adapter, ErrorKind, UnsupportedOperation, UpstreamRequest, kind_for_status
from gateway.providers.translate import (
    ChunkWriter,
    SSEParser,
    append_turn,
    completion,
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

API_VERSION = "2023-06-01"
BEDROCK_VERSION = "bedrock-2023-05-31"
STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                "pause_turn": "stop", "refusal": "content_filter"}  # fmt: skip
JSON_INSTRUCTION = "Respond with a single valid JSON object and nothing else."


def _user_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks: list[dict[str, Any]] = []
    for part in content or ():
        if not isinstance(part, dict):
            continue
        if part.get("type") in ("text", "input_text"):
            blocks.append({"type": "text", "text": str(part.get("text", ""))})
        elif part.get("type") == "image_url":
            url, mime, raw = image_of(part)
            source: dict[str, Any] = ({"type": "base64", "media_type": mime, "data": base64.b64encode(raw).decode()}
                                      if raw is not None else {"type": "url", "url": url})  # fmt: skip
            blocks.append({"type": "image", "source": source})
    return blocks


def messages_body(body: dict[str, Any], call: Any) -> dict[str, Any]:
    """The Messages request of an OpenAI chat body (without `model`)."""
    single_choice(body)
    system: list[str] = []
    messages: list[dict[str, Any]] = []

    def push(role: str, items: list[dict[str, Any]]) -> None:
        append_turn(messages, role, items, "content")

    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(text_of(message.get("content")))
        elif role == "user":
            push("user", _user_blocks(message.get("content")))
        elif role == "assistant":
            blocks: list[dict[str, Any]] = []
            text = text_of(message.get("content"))
            if text:
                blocks.append({"type": "text", "text": text})
            for tool_call in message.get("tool_calls") or ():
                fn = tool_call.get("function") or {}
                blocks.append({"type": "tool_use", "id": tool_call.get("id"), "name": fn.get("name"),
                               "input": loads_arguments(fn.get("arguments"))})  # fmt: skip
            push("assistant", blocks)
        elif role == "tool":
            push("user", [{"type": "tool_result", "tool_use_id": message.get("tool_call_id"),
                           "content": text_of(message.get("content"))}])  # fmt: skip
    if wants_json(body):
        system.append(JSON_INSTRUCTION)
    out: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens(body, call)}
    if system:
        out["system"] = "\n\n".join(s for s in system if s)
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    if stops := stop_list(body):
        out["stop_sequences"] = stops
    tools = function_tools(body)
    if tools:
        out["tools"] = [
            {"name": t["name"], "description": t["description"], "input_schema": t["parameters"]}
            for t in tools
        ]
        choice = body.get("tool_choice")
        if choice == "required":
            out["tool_choice"] = {"type": "any"}
        elif choice == "none":
            out["tool_choice"] = {"type": "none"}
        elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            out["tool_choice"] = {"type": "tool", "name": choice["function"].get("name")}
        if body.get("parallel_tool_calls") is False:
            out.setdefault("tool_choice", {"type": "auto"})["disable_parallel_tool_use"] = True
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    if body.get("stream"):
        out["stream"] = True
    return out


def usage_of(raw: Any) -> Usage:
    usage = raw if isinstance(raw, dict) else {}
    cached = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    return Usage(prompt_tokens=int(usage.get("input_tokens") or 0) + cached + written,
                 completion_tokens=int(usage.get("output_tokens") or 0), cached_tokens=cached)  # fmt: skip


def message_to_completion(message: dict[str, Any], model: str) -> dict[str, Any]:
    texts, calls = [], []
    for block in message.get("content") or ():
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"), "arguments": orjson.dumps(block.get("input") or {}).decode()}})  # fmt: skip
    return completion(model=message.get("model") or model, text="".join(texts) if texts or not calls else None,
                      tool_calls=calls, finish=STOP_REASONS.get(message.get("stop_reason") or "", "stop"),
                      usage=usage_of(message.get("usage")), response_id=str(message.get("id", "")).removeprefix("msg_") or None)  # fmt: skip


class MessagesStream:
    """Anthropic stream events → OpenAI chunks."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.out = ChunkWriter(model, include_usage=include_usage)
        self.tool_index: dict[int, int] = {}
        self.prompt = Usage()
        self.usage: Usage | None = None

    def on_event(self, event: dict[str, Any]) -> bytes:
        kind = event.get("type")
        if kind == "message_start":
            self.prompt = usage_of((event.get("message") or {}).get("usage"))
            return self.out.role()
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = self.tool_index[event.get("index", 0)] = len(self.tool_index)
                return self.out.tool_start(index, str(block.get("id")), str(block.get("name")))
            return self.out.text(str(block.get("text") or ""))
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                return self.out.text(str(delta.get("text", "")))
            if delta.get("type") == "input_json_delta":
                return self.out.tool_args(
                    self.tool_index.get(event.get("index", 0), 0), str(delta.get("partial_json", ""))
                )
            return b""
        if kind == "message_delta":
            output = int((event.get("usage") or {}).get("output_tokens") or 0)
            self.usage = self.out.usage = Usage(self.prompt.prompt_tokens, output, self.prompt.cached_tokens)
            reason = (event.get("delta") or {}).get("stop_reason")
            return self.out.finish(STOP_REASONS.get(reason or "", "stop")) if reason else b""
        if kind == "message_stop":
            return self.out.done()
        if kind == "error":
            err = event.get("error") or {}
            return self.out.error(str(err.get("message", "The provider's stream failed.")), "upstream_error")
        return b""  # ping, and event types added later

    def completion_text(self) -> str:
        return self.out.completion_text()


class AnthropicSSEDecoder:
    def __init__(self, model: str, include_usage: bool) -> None:
        self.stream = MessagesStream(model, include_usage)
        self.parser = SSEParser()

    @property
    def usage(self) -> Usage | None:
        return self.stream.usage

    def feed(self, chunk: bytes) -> bytes:
        out = b""
        for _, data in self.parser.feed(chunk):
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict):
                out += self.stream.on_event(event)
        return out

    def finish(self) -> bytes:
        return self.stream.out.close()

    def completion_text(self) -> str:
        return self.stream.completion_text()


class AnthropicAdapter(Adapter):
    """`POST {base_url}/v1/messages` with `x-api-key`; or Claude on Bedrock when options.bedrock is set."""

    endpoints = frozenset({"chat/completions"})
    passthrough = False

    def build(
        self, endpoint: str, deployment: DeploymentInfo, body: dict[str, Any], call: Any = None
    ) -> UpstreamRequest:
        if endpoint not in self.endpoints:
            raise UnsupportedOperation(endpoint)
        provider = deployment.provider
        payload = messages_body(body, call)
        if provider.options.get("bedrock"):
            from gateway.providers.bedrock import signed_request

            payload["anthropic_version"] = BEDROCK_VERSION
            stream = payload.pop("stream", False)
            path = f"/model/{quote(deployment.provider_model, safe=':')}/{'invoke-with-response-stream' if stream else 'invoke'}"
            return signed_request(deployment, path, orjson.dumps(payload))
        payload["model"] = deployment.provider_model
        headers = {
            "content-type": "application/json",
            "anthropic-version": API_VERSION,
            "x-api-key": provider.credential,
        }
        headers.update(provider.extra_headers)
        return UpstreamRequest("POST", f"{provider.base_url}/v1/messages", headers, orjson.dumps(payload))

    def decode(self, endpoint: str, deployment: DeploymentInfo, raw: bytes, call: Any) -> tuple[bytes, Any]:
        message = orjson.loads(raw)
        result = message_to_completion(message, deployment.provider_model)
        return orjson.dumps(result), result

    def stream_decoder(self, endpoint: str, deployment: DeploymentInfo, call: Any, strip_usage: bool) -> Any:
        if deployment.provider.options.get("bedrock"):
            from gateway.providers.bedrock import InvokeStreamDecoder

            return InvokeStreamDecoder(MessagesStream(deployment.provider_model, not strip_usage))
        return AnthropicSSEDecoder(deployment.provider_model, not strip_usage)

    def parse_error(self, body: bytes) -> tuple[str, Any, Any, Any]:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body[:500].decode("utf-8", "replace"), None, None, None
        err = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(err, dict):
            kind = str(err.get("type") or "")
            mapped = {"invalid_request_error": "invalid_request_error", "not_found_error": "invalid_request_error",
                      "rate_limit_error": "requests", "overloaded_error": "server_error", "api_error": "server_error",
                      "permission_error": "permission_error", "authentication_error": "invalid_request_error"}  # fmt: skip
            return (
                str(err.get("message") or ""),
                kind or None,
                None,
                mapped.get(kind, "invalid_request_error"),
            )
        message = obj.get("message") if isinstance(obj, dict) else None  # Bedrock's error shape
        return str(message or ""), None, None, None

    def kind_for(self, status: int, headers: Any) -> ErrorKind:
        if status == 408:
            return ErrorKind.TIMEOUT
        return kind_for_status(status)
