"""The Anthropic-compatible route `/anthropic/v1/messages`, for users of the official `anthropic` SDK.

The request is turned into an OpenAI chat body, routed and accounted like any other (so a Claude
client can reach any provider), and the answer, whole or streamed, turned back into the Messages
API's shapes: the Message object, its SSE event sequence, and its error bodies.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from gateway.errors import GatewayError
from gateway.providers.translate import ClientSink

STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 502: "api_error", 503: "overloaded_error",
               504: "api_error"}  # fmt: skip


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    blocks = content if isinstance(content, list) else ()
    return "".join(str(b.get("text", "")) for b in blocks if isinstance(b, dict) and b.get("type") == "text")


def _check_types(body: dict[str, Any]) -> None:
    """The Messages API's types where the translation relies on them: a 400 naming the field, never a 500."""

    def bad(field: str, expected: str) -> GatewayError:
        return GatewayError(
            400, f"{field}: Input should be {expected}", code="invalid_request_error", param=field
        )

    messages = body.get("messages")
    if messages is not None and not isinstance(messages, list):
        raise bad("messages", "a valid list")
    for i, message in enumerate(messages or ()):
        content = message.get("content") if isinstance(message, dict) else None
        if content is not None and not isinstance(content, str | list):
            raise bad(f"messages.{i}.content", "a valid string or list")
        for j, block in enumerate(content if isinstance(content, list) else ()):
            if (
                isinstance(block, dict)
                and block.get("source") is not None
                and not isinstance(block["source"], dict)
            ):
                raise bad(f"messages.{i}.content.{j}.source", "a valid dictionary")
    if body.get("tools") is not None and not isinstance(body["tools"], list):
        raise bad("tools", "a valid list")
    if body.get("tool_choice") is not None and not isinstance(body["tool_choice"], dict):
        raise bad("tool_choice", "a valid dictionary")


def to_openai(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat body from a Messages request."""
    if not isinstance(body.get("max_tokens"), int):
        raise GatewayError(
            400, "max_tokens: Field required", code="invalid_request_error", param="max_tokens"
        )
    _check_types(body)
    messages: list[dict[str, Any]] = []
    if body.get("system"):
        messages.append({"role": "system", "content": _text(body["system"])})
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        blocks: list[dict[str, Any]] = (
            [{"type": "text", "text": content}]
            if isinstance(content, str)
            else [b for b in content or () if isinstance(b, dict)]
        )
        if message.get("role") == "assistant":
            text = "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")
            calls = [{"id": b.get("id"), "type": "function",
                      "function": {"name": b.get("name"), "arguments": orjson.dumps(b.get("input") or {}).decode()}}
                     for b in blocks if b.get("type") == "tool_use"]  # fmt: skip
            entry: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                entry["tool_calls"] = calls
            messages.append(entry)
            continue
        parts: list[dict[str, Any]] = []
        for block in blocks:
            kind = block.get("type")
            if kind == "text":
                parts.append({"type": "text", "text": block.get("text", "")})
            elif kind == "image":
                source: dict[str, Any] = block.get("source") or {}
                url = (f"data:{source.get('media_type')};base64,{source.get('data')}" if source.get("type") == "base64"
                       else source.get("url"))  # fmt: skip
                parts.append({"type": "image_url", "image_url": {"url": url}})
            elif kind == "tool_result":
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": block.get("tool_use_id"),
                        "content": _text(block.get("content")),
                    }
                )
        if parts:
            messages.append({"role": "user", "content": parts})
    out: dict[str, Any] = {"model": body.get("model"), "messages": messages, "max_tokens": body["max_tokens"]}
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("stop_sequences"):
        out["stop"] = body["stop_sequences"]
    if body.get("tools"):
        out["tools"] = [{"type": "function", "function": {"name": t.get("name"), "description": t.get("description", ""),
                                                          "parameters": t.get("input_schema") or {"type": "object"}}}
                        for t in body["tools"] if isinstance(t, dict)]  # fmt: skip
        choice = body.get("tool_choice") or {}
        if choice.get("type") == "any":
            out["tool_choice"] = "required"
        elif choice.get("type") == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        elif choice.get("type") == "none":
            out["tool_choice"] = "none"
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # the usage feeds message_delta
    return out


def message_of(completion: dict[str, Any], model: str) -> dict[str, Any]:
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        try:
            arguments = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            arguments = {}
        content.append({"type": "tool_use", "id": call.get("id"), "name": fn.get("name"), "input": arguments})
    usage = completion.get("usage") or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": STOP.get(choice.get("finish_reason") or "stop", "end_turn"), "stop_sequence": None,
        "usage": {"input_tokens": int(usage.get("prompt_tokens", 0)) - int(cached), "output_tokens": int(usage.get("completion_tokens", 0)),
                  "cache_read_input_tokens": int(cached), "cache_creation_input_tokens": 0},
    }  # fmt: skip


def error_body(error: GatewayError) -> bytes:
    kind = ERROR_TYPES.get(error.status, "api_error" if error.status >= 500 else "invalid_request_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": error.message}})


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


class AnthropicSink(ClientSink):
    """OpenAI-shaped answers in, Messages-shaped answers out."""

    def __init__(self, inner: Any, model: str, stream: bool) -> None:
        super().__init__(inner, model, stream)
        self.block: str | None = None
        self.index = -1
        self.tool_blocks: dict[int, int] = {}
        self.stop_reason = "end_turn"
        self.usage: dict[str, Any] = {}
        self.opened = False

    def _open(self) -> bytes:
        if self.opened:
            return b""
        self.opened = True
        message: dict[str, Any] = {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": self.model,
                   "content": [], "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}  # fmt: skip
        return _event("message_start", {"message": message}) + _event("ping", {})

    def _close_block(self) -> bytes:
        if self.block is None:
            return b""
        self.block = None
        return _event("content_block_stop", {"index": self.index})

    def whole(self, completion: dict[str, Any]) -> dict[str, Any]:
        return message_of(completion, self.model)

    def translate(self, data: bytes) -> bytes:
        if data == b"[DONE]":
            out = self._open() + self._close_block()
            usage = {"output_tokens": int(self.usage.get("completion_tokens", 0))}
            out += _event(
                "message_delta",
                {"delta": {"stop_reason": self.stop_reason, "stop_sequence": None}, "usage": usage},
            )
            return out + _event("message_stop", {})
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return b""
        if "error" in chunk:
            err = chunk["error"] or {}
            return _event("error", {"error": {"type": "api_error", "message": str(err.get("message", ""))}})
        out = self._open()
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if self.block != "text":
                    out += self._close_block()
                    self.index += 1
                    self.block = "text"
                    out += _event(
                        "content_block_start",
                        {"index": self.index, "content_block": {"type": "text", "text": ""}},
                    )
                out += _event(
                    "content_block_delta",
                    {"index": self.index, "delta": {"type": "text_delta", "text": delta["content"]}},
                )
            for call in delta.get("tool_calls") or ():
                fn = call.get("function") or {}
                if call.get("id"):
                    out += self._close_block()
                    self.index += 1
                    self.block = "tool_use"
                    self.tool_blocks[call.get("index", 0)] = self.index
                    out += _event("content_block_start", {"index": self.index, "content_block": {
                        "type": "tool_use", "id": call["id"], "name": fn.get("name"), "input": {}}})  # fmt: skip
                if fn.get("arguments"):
                    out += _event("content_block_delta", {"index": self.tool_blocks.get(call.get("index", 0), self.index),
                                                          "delta": {"type": "input_json_delta", "partial_json": fn["arguments"]}})  # fmt: skip
            if choice.get("finish_reason"):
                self.stop_reason = STOP.get(choice["finish_reason"], "end_turn")
                out += self._close_block()
        return out
