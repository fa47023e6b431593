"""The OpenAI side of translating adapters: reading an OpenAI chat request, writing OpenAI answers.

A translating adapter turns the OpenAI chat body into its vendor's request, and its vendor's
answer (whole, or event by event) into calls on `ChunkWriter` / `completion`, so every vendor
comes back to the client in exactly OpenAI's shapes.
"""

from __future__ import annotations

import base64
import re
import struct
import time
import uuid
from typing import Any

import orjson

from gateway.errors import GatewayError
from gateway.sse import Usage

FINISH = {"stop", "length", "tool_calls", "content_filter"}
_DATA_URL = re.compile(r"^data:(?P<mime>[\w/+.-]+);base64,(?P<data>.+)$", re.DOTALL)


def text_of(content: Any) -> str:
    """The text of an OpenAI message content (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") in ("text", "input_text")
        )
    return ""


def image_of(part: dict[str, Any]) -> tuple[str, str | None, bytes | None]:
    """(url, mime, raw bytes) of an `image_url` part; bytes only for data: URLs."""
    url = part.get("image_url")
    url = url.get("url") if isinstance(url, dict) else url
    if not isinstance(url, str):
        raise GatewayError(400, "An image_url part needs a url.", code="invalid_value", param="messages")
    match = _DATA_URL.match(url)
    if match:
        try:
            return url, match["mime"], base64.b64decode(match["data"], validate=True)
        except ValueError:
            raise GatewayError(
                400, "An image data: URL is not valid base64.", code="invalid_value", param="messages"
            ) from None
    return url, None, None


def stop_list(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list):
        return [s for s in stop if isinstance(s, str)]
    return []


def max_tokens(body: dict[str, Any], call: Any) -> int:
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    cap = call.model.max_output_tokens if call is not None and call.model is not None else 4096
    return min(asked, cap) if isinstance(asked, int) and asked > 0 else cap


def wants_json(body: dict[str, Any]) -> bool:
    fmt = body.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")


def single_choice(body: dict[str, Any]) -> None:
    if body.get("n") not in (None, 1):
        raise GatewayError(
            400,
            "This model's provider returns one choice per request: n must be 1.",
            code="invalid_value",
            param="n",
        )


def function_tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The `function` tools of an OpenAI body: [{name, description, parameters}]."""
    out = []
    for tool in body.get("tools") or ():
        if (
            isinstance(tool, dict)
            and tool.get("type") == "function"
            and isinstance(tool.get("function"), dict)
        ):
            fn = tool["function"]
            out.append({"name": fn.get("name"), "description": fn.get("description", ""),
                        "parameters": fn.get("parameters") or {"type": "object", "properties": {}}})  # fmt: skip
    return out


def loads_arguments(arguments: Any) -> Any:
    if isinstance(arguments, dict):
        return arguments
    try:
        return orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {"_raw": arguments}


def completion(*, model: str, text: str | None, tool_calls: list[dict[str, Any]], finish: str, usage: Usage,
               response_id: str | None = None) -> dict[str, Any]:  # fmt: skip
    """An OpenAI `chat.completion` object."""
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": f"chatcmpl-{response_id or uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage_dict(usage),
        "system_fingerprint": None,
    }


def embedding_inputs(body: dict[str, Any]) -> list[str]:
    """The texts of an OpenAI embeddings body, for vendors that take text only (not token arrays)."""
    inputs = body.get("input")
    texts = [inputs] if isinstance(inputs, str) else [t for t in inputs or () if isinstance(t, str)]
    if not texts or (isinstance(inputs, list) and len(texts) != len(inputs)):
        raise GatewayError(400, "`input` must be a string or an array of strings for this model.",
                           code="invalid_value", param="input")  # fmt: skip
    return texts


def embedding_list(vectors: list[list[float]], *, model: str, prompt_tokens: int, body: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """OpenAI's embeddings answer for ``vectors`` (base64 little-endian float32 when asked)."""
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for i, values in enumerate(vectors):
        floats = [float(v) for v in values]
        vector: Any = (
            base64.b64encode(struct.pack(f"<{len(floats)}f", *floats)).decode() if as_base64 else floats
        )
        data.append({"object": "embedding", "index": i, "embedding": vector})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}  # fmt: skip


def usage_dict(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


class ChunkWriter:
    """Writes OpenAI `chat.completion.chunk` SSE events; collects the text for local counting."""

    def __init__(self, model: str, *, include_usage: bool) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self.usage: Usage | None = None
        self.parts: list[str] = []
        self.started = False
        self.finished = False
        self.closed = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        obj = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
               "system_fingerprint": None,
               "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}  # fmt: skip
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def role(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        return self._chunk({"role": "assistant", "content": ""})

    def text(self, text: str) -> bytes:
        if not text:
            return b""
        self.parts.append(text)
        return self.role() + self._chunk({"content": text})

    def tool_start(self, index: int, call_id: str, name: str) -> bytes:
        self.parts.append(name)
        delta = {
            "tool_calls": [
                {
                    "index": index,
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                }
            ]
        }
        return self.role() + self._chunk(delta)

    def tool_args(self, index: int, fragment: str) -> bytes:
        if not fragment:
            return b""
        self.parts.append(fragment)
        return self._chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})

    def finish(self, reason: str) -> bytes:
        if self.finished:
            return b""
        self.finished = True
        return self.role() + self._chunk({}, reason if reason in FINISH else "stop")

    def error(self, message: str, kind: str = "upstream_error") -> bytes:
        """An error in the stream: the openai SDK raises APIError on it."""
        return (
            b"data: "
            + orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": kind}})
            + b"\n\n"
        )

    def close(self) -> bytes:
        """The end of the stream, unless `done` already wrote it."""
        return b"" if self.closed else self.done()

    def done(self) -> bytes:
        self.closed = True
        out = self.finish("stop")
        if self.include_usage and self.usage is not None:
            obj = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                   "system_fingerprint": None, "choices": [], "usage": usage_dict(self.usage)}  # fmt: skip
            out += b"data: " + orjson.dumps(obj) + b"\n\n"
        return out + b"data: [DONE]\n\n"

    def completion_text(self) -> str:
        return "".join(self.parts)


class SSEParser:
    """Splits a server-sent-events byte stream into (event, data) pairs."""

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        self.pending += chunk.replace(b"\r\n", b"\n")
        events = []
        while b"\n\n" in self.pending:
            raw, self.pending = self.pending.split(b"\n\n", 1)
            name, data = "", []
            for line in raw.split(b"\n"):
                if line.startswith(b"event:"):
                    name = line[6:].strip().decode()
                elif line.startswith(b"data:"):
                    data.append(line[5:].lstrip(b" "))
            if data:
                events.append((name, b"\n".join(data)))
        return events


def append_turn(
    turns: list[dict[str, Any]], role: str, items: list[dict[str, Any]], key: str = "content"
) -> None:
    """Append a turn, merging it into the previous one of the same role (vendors want alternation)."""
    if not items:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1][key].extend(items)
    else:
        turns.append({"role": role, key: items})


class ClientSink:
    """Wraps the real sink of a vendor-compatible route: OpenAI-shaped answers in, the vendor's shapes out.

    Subclasses say how a whole completion and one stream chunk look in their API.
    """

    stream_content_type = b"text/event-stream; charset=utf-8"
    json_content_type = b"application/json"

    def __init__(self, inner: Any, model: str, stream: bool) -> None:
        self.inner, self.model, self.stream = inner, model, stream
        self.buffer = b""
        self.status = 200
        self.headers: list[tuple[bytes, bytes]] = []
        self.parser = SSEParser()

    @property
    def started(self) -> bool:
        return bool(self.inner.started)

    @property
    def finished(self) -> bool:
        return bool(getattr(self.inner, "finished", False))

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.headers = [(k, v) for k, v in headers if k not in (b"content-type", b"content-length")]
        if self.stream:
            await self.inner.start(status, [(b"content-type", self.stream_content_type), *self.headers])

    async def send(self, chunk: bytes, *, more: bool) -> None:
        if not self.stream:
            self.buffer += chunk
            if not more:
                body = orjson.dumps(self.whole(orjson.loads(self.buffer)))
                await self.inner.start(self.status, [(b"content-type", self.json_content_type),
                                                     (b"content-length", str(len(body)).encode()), *self.headers])  # fmt: skip
                await self.inner.send(body, more=False)
            return
        out = b""
        for _, data in self.parser.feed(chunk):
            out += self.translate(data)
        await self.inner.send(out, more=more)

    def whole(self, completion: dict[str, Any]) -> dict[str, Any]:
        """The vendor's response object for an OpenAI chat completion."""
        raise NotImplementedError

    def translate(self, data: bytes) -> bytes:
        """The vendor's stream bytes for one OpenAI SSE data payload."""
        raise NotImplementedError
