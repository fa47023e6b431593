"""The Gemini-compatible route `/gemini/v1beta/models/{model}:generateContent` (and `:streamGenerateContent`).

For users of Google's SDKs (`x-goog-api-key` carries our key). The request becomes an OpenAI chat
body, is routed and accounted like any other call, and the answer goes back as Gemini's
GenerateContentResponse, whole or as `alt=sse` chunks.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import GatewayError
from gateway.providers.translate import ClientSink

FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP", "content_filter": "SAFETY"}
STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
          413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
          504: "DEADLINE_EXCEEDED"}  # fmt: skip


def _check_types(body: dict[str, Any]) -> None:
    """The request's types where the translation relies on them: a 400 naming the field, never a 500."""

    def bad(field: str, expected: str) -> GatewayError:
        return GatewayError(400, f"Invalid value at '{field}': expected {expected}.",
                            code="invalid_argument", param=field)  # fmt: skip

    def expect(value: Any, field: str, kind: type, expected: str) -> None:
        if value is not None and not isinstance(value, kind):
            raise bad(field, expected)

    expect(body.get("contents"), "contents", list, "a list of Content")
    for n, content in enumerate(body.get("contents") or ()):
        expect(content, f"contents[{n}]", dict, "a Content object")
        expect(content.get("parts"), f"contents[{n}].parts", list, "a list of Part")
    for name in ("systemInstruction", "system_instruction"):
        system = body.get(name)
        expect(system, name, dict, "a Content object")
        expect((system or {}).get("parts"), f"{name}.parts", list, "a list of Part")
    expect(body.get("generationConfig"), "generationConfig", dict, "a GenerationConfig object")
    expect(body.get("tools"), "tools", list, "a list of Tool")
    for n, tool in enumerate(body.get("tools") or ()):
        expect(tool, f"tools[{n}]", dict, "a Tool object")
        declarations = tool.get("functionDeclarations")
        expect(declarations, f"tools[{n}].functionDeclarations", list, "a list of FunctionDeclaration")
        for i, declaration in enumerate(declarations or ()):
            expect(declaration, f"tools[{n}].functionDeclarations[{i}]", dict, "a FunctionDeclaration")
    config = body.get("toolConfig")
    expect(config, "toolConfig", dict, "a ToolConfig object")
    expect((config or {}).get("functionCallingConfig"), "toolConfig.functionCallingConfig", dict,
           "a FunctionCallingConfig object")  # fmt: skip


def to_openai(body: dict[str, Any], model: str, stream: bool) -> dict[str, Any]:
    _check_types(body)
    messages: list[dict[str, Any]] = []
    system = body.get("systemInstruction") or body.get("system_instruction")
    if isinstance(system, dict):
        messages.append(
            {"role": "system", "content": "".join(str(p.get("text", "")) for p in system.get("parts") or ())}
        )
    calls_by_name: dict[str, str] = {}
    for n, content in enumerate(body.get("contents") or ()):
        if not isinstance(content, dict):
            continue
        parts = [p for p in content.get("parts") or () if isinstance(p, dict)]
        if content.get("role") == "model":
            text = "".join(str(p.get("text", "")) for p in parts if "text" in p)
            tool_calls = []
            for i, p in enumerate(parts):
                if isinstance(p.get("functionCall"), dict):
                    call_id = f"call_{n}_{i}"
                    calls_by_name[str(p["functionCall"].get("name"))] = call_id
                    tool_calls.append({"id": call_id, "type": "function", "function": {
                        "name": p["functionCall"].get("name"), "arguments": orjson.dumps(p["functionCall"].get("args") or {}).decode()}})  # fmt: skip
            entry: dict[str, Any] = {"role": "assistant", "content": text or None}
            if tool_calls:
                entry["tool_calls"] = tool_calls
            messages.append(entry)
            continue
        user_parts: list[dict[str, Any]] = []
        for p in parts:
            if "text" in p:
                user_parts.append({"type": "text", "text": str(p["text"])})
            elif isinstance(p.get("inlineData"), dict):
                data = p["inlineData"]
                user_parts.append(
                    {
                        "type": "image_url",
                        "image_url": {"url": f"data:{data.get('mimeType')};base64,{data.get('data')}"},
                    }
                )
            elif isinstance(p.get("functionResponse"), dict):
                response = p["functionResponse"]
                messages.append({"role": "tool", "tool_call_id": calls_by_name.get(str(response.get("name")), str(response.get("name"))),
                                 "content": orjson.dumps(response.get("response") or {}).decode()})  # fmt: skip
        if user_parts:
            messages.append({"role": "user", "content": user_parts})
    out: dict[str, Any] = {"model": model, "messages": messages}
    config = body.get("generationConfig") or {}
    for theirs, ours in (
        ("temperature", "temperature"),
        ("topP", "top_p"),
        ("maxOutputTokens", "max_tokens"),
        ("stopSequences", "stop"),
    ):
        if config.get(theirs) is not None:
            out[ours] = config[theirs]
    if config.get("responseMimeType") == "application/json":
        out["response_format"] = {"type": "json_object"}
    tools = [
        d for t in body.get("tools") or () if isinstance(t, dict) for d in t.get("functionDeclarations") or ()
    ]
    if tools:
        out["tools"] = [{"type": "function", "function": {"name": d.get("name"), "description": d.get("description", ""),
                                                          "parameters": d.get("parameters") or {"type": "object"}}} for d in tools]  # fmt: skip
        mode = ((body.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode")
        if mode == "ANY":
            out["tool_choice"] = "required"
        elif mode == "NONE":
            out["tool_choice"] = "none"
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _usage(usage: dict[str, Any]) -> dict[str, Any]:
    prompt = int(usage.get("prompt_tokens", 0))
    output = int(usage.get("completion_tokens", 0))
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {"promptTokenCount": prompt, "candidatesTokenCount": output, "totalTokenCount": prompt + output,
            "cachedContentTokenCount": cached}  # fmt: skip


def response_of(completion: dict[str, Any], model: str) -> dict[str, Any]:
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    parts: list[dict[str, Any]] = []
    if message.get("content"):
        parts.append({"text": message["content"]})
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            args = {}
        parts.append({"functionCall": {"name": fn.get("name"), "args": args}})
    return {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": FINISH.get(choice.get("finish_reason") or "stop", "STOP"),
                            "index": 0}],
            "usageMetadata": _usage(completion.get("usage") or {}), "modelVersion": model}  # fmt: skip


def error_body(error: GatewayError) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "code": error.status,
                "message": error.message,
                "status": STATUS.get(error.status, "UNKNOWN"),
            }
        }
    )


class GeminiSink(ClientSink):
    """OpenAI-shaped answers in, Gemini-shaped answers out (`alt=sse` chunks end in CRLF CRLF)."""

    stream_content_type = b"text/event-stream"
    json_content_type = b"application/json; charset=UTF-8"

    def __init__(self, inner: Any, model: str, stream: bool) -> None:
        super().__init__(inner, model, stream)
        self.finish: str | None = None
        self.calls: dict[int, dict[str, str]] = {}

    def _emit(
        self, parts: list[dict[str, Any]], usage: dict[str, Any] | None = None, finish: str | None = None
    ) -> bytes:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        obj: dict[str, Any] = {"candidates": [candidate], "modelVersion": self.model}
        if usage is not None:
            obj["usageMetadata"] = _usage(usage)
        return b"data: " + orjson.dumps(obj) + b"\r\n\r\n"

    def whole(self, completion: dict[str, Any]) -> dict[str, Any]:
        return response_of(completion, self.model)

    def translate(self, data: bytes) -> bytes:
        if data == b"[DONE]":
            return b""
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return b""
        if "error" in chunk:
            err = chunk["error"] or {}
            return (
                b"data: "
                + orjson.dumps(
                    {"error": {"code": 502, "message": str(err.get("message", "")), "status": "UNAVAILABLE"}}
                )
                + b"\r\n\r\n"
            )
        out = b""
        if chunk.get("usage"):  # the last chunk: flush tool calls with the finish reason and usage
            parts = [
                {"functionCall": {"name": c["name"], "args": orjson.loads(c["args"] or "{}")}}
                for c in self.calls.values()
            ]
            return self._emit(parts, chunk["usage"], FINISH.get(self.finish or "stop", "STOP"))
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out += self._emit([{"text": delta["content"]}])
            for call in delta.get("tool_calls") or ():
                slot = self.calls.setdefault(call.get("index", 0), {"name": "", "args": ""})
                fn = call.get("function") or {}
                slot["name"] = fn.get("name") or slot["name"]
                slot["args"] += fn.get("arguments") or ""
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out
