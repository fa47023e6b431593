"""Reading just enough of a server-sent-events stream to find usage, without delaying the bytes.

Complete events are forwarded as soon as their blank-line terminator arrives; only a partial
event is held back, so a usage chunk the client did not ask for can be removed whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

_EVENT_END = re.compile(rb"\r?\n\r?\n")


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


def usage_from(obj: Any) -> Usage | None:
    """Normalise an OpenAI usage object (chat, completions, embeddings or responses style)."""
    if not isinstance(obj, dict):
        return None
    prompt = obj.get("prompt_tokens", obj.get("input_tokens"))
    completion = obj.get("completion_tokens", obj.get("output_tokens", 0))
    if prompt is None and completion in (None, 0) and "total_tokens" not in obj:
        return None
    details = obj.get("prompt_tokens_details") or obj.get("input_tokens_details") or {}
    cached = details.get("cached_tokens", 0) if isinstance(details, dict) else 0
    return Usage(int(prompt or 0), int(completion or 0), int(cached or 0))


def _data(event: bytes) -> bytes:
    """The joined `data:` lines of one event."""
    lines = [line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:")]
    return b"\n".join(lines)


def _no_usage(data: bytes) -> bool:
    """True when ``data`` holds no usage object: OpenAI sends `"usage":null` in every chunk but the last."""
    return data.count(b'"usage"') == data.count(b'"usage":null')


class StreamMeter:
    """Feeds upstream bytes through, collecting usage; optionally removes the usage-only chunk."""

    def __init__(self, *, strip_usage_chunk: bool) -> None:
        self.strip_usage_chunk = strip_usage_chunk
        self.pending = b""
        self.usage: Usage | None = None
        self.seen: list[bytes] = []  # the bytes read while no usage came: counted if none ever does
        self.saw_done = False

    def feed(self, chunk: bytes) -> bytes:
        """Return what may be sent to the client now."""
        if self.usage is None:
            self.seen.append(chunk)
        if not self.pending and chunk.endswith(b"\n\n") and b"[DONE]" not in chunk and _no_usage(chunk):
            return chunk  # whole events, none with usage or the end: through as they came
        self.pending += chunk
        out: list[bytes] = []
        start = 0
        for match in _EVENT_END.finditer(self.pending):
            event = self.pending[start : match.end()]
            start = match.end()
            if self._keep(event):
                out.append(event)
        self.pending = self.pending[start:]
        return b"".join(out)

    def finish(self) -> bytes:
        """Whatever is left once the upstream closed (an unterminated last event)."""
        rest, self.pending = self.pending, b""
        return rest if rest and self._keep(rest) else b""

    def _keep(self, event: bytes) -> bool:
        if b"[DONE]" not in event and _no_usage(event):
            return True
        data = _data(event)
        if data == b"[DONE]":
            self.saw_done = True
            return True
        if b'"usage"' in data and b'"usage":null' not in data:
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                return True
            if isinstance(obj, dict):
                holder = obj.get("response") if obj.get("type") == "response.completed" else obj
                usage = usage_from(holder.get("usage")) if isinstance(holder, dict) else None
                if usage is not None:
                    self.usage = usage
                    return not (self.strip_usage_chunk and obj.get("choices") == [])
        return True

    def completion_text(self) -> str:
        """The generated text (content, tool-call arguments) of the events seen, for local counting."""
        parts: list[str] = []
        for event in _EVENT_END.split(b"".join(self.seen)):
            data = _data(event)
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(obj, dict):
                continue
            if obj.get("type") == "response.output_text.delta":
                parts.append(str(obj.get("delta", "")))
                continue
            for choice in obj.get("choices") or ():
                if not isinstance(choice, dict):
                    continue
                if "text" in choice:
                    parts.append(str(choice.get("text") or ""))
                delta = choice.get("delta") or {}
                if isinstance(delta, dict):
                    parts.append(str(delta.get("content") or ""))
                    for call in delta.get("tool_calls") or ():
                        fn = call.get("function") if isinstance(call, dict) else None
                        if isinstance(fn, dict):
                            parts.append(str(fn.get("name") or "") + str(fn.get("arguments") or ""))
        return "".join(parts)
