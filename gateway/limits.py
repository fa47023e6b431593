"""Shape and size limits of a proxy request body, checked before anything is admitted or sent upstream.

The gateway passes bodies through, so the provider checks most fields; these are the few where
nonsense would cost us (a token reservation from a string, a 10,000-message walk, a tool list no
provider takes) or reach the provider as a confusing error. Each limit is one no real client hits;
README.md ("Input limits") lists them. Pure Python over the parsed body: no I/O, no SQL.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import GatewayError

MAX_MESSAGES = 2048  # the bound OpenAI puts on its array parameters (embeddings' `input`)
MAX_TOOLS = 128  # OpenAI's own limit on `tools`
MAX_TOKENS_CEILING = 10_000_000  # far above any model's output cap, which the reservation applies
MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
CHAT_ENDPOINTS = frozenset({"chat/completions"})
TOOL_ENDPOINTS = frozenset({"chat/completions", "responses"})


def _invalid(message: str, param: str, code: str = "invalid_value") -> GatewayError:
    return GatewayError(400, message, code=code, param=param)


def _check_token_fields(body: dict[str, Any]) -> None:
    for name in TOKEN_FIELDS:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise _invalid(f"`{name}` must be an integer.", name, code="invalid_type")
        if not 1 <= value <= MAX_TOKENS_CEILING:
            raise _invalid(f"`{name}` must be between 1 and {MAX_TOKENS_CEILING}.", name)


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list):
        return  # validate() answers a missing or non-array `messages` itself
    if len(messages) > MAX_MESSAGES:
        raise _invalid(
            f"`messages` has {len(messages)} items; at most {MAX_MESSAGES} are accepted.", "messages"
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _invalid(f"`messages[{i}]` must be an object.", f"messages[{i}]", code="invalid_type")
        role = message.get("role")
        if not isinstance(role, str) or role not in MESSAGE_ROLES:
            raise _invalid(
                f"`messages[{i}].role` must be one of {', '.join(sorted(MESSAGE_ROLES))}.",
                f"messages[{i}].role",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _invalid(
                f"`messages[{i}].content` must be a string or an array.",
                f"messages[{i}].content",
                code="invalid_type",
            )


def _check_tools(endpoint: str, tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _invalid("`tools` must be an array.", "tools", code="invalid_type")
    if len(tools) > MAX_TOOLS:
        raise _invalid(f"`tools` has {len(tools)} items; at most {MAX_TOOLS} are accepted.", "tools")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _invalid(f"`tools[{i}]` must be an object.", f"tools[{i}]", code="invalid_type")
        if tool.get("type", "function") != "function":
            continue  # built-in tools (Responses' web_search, chat's custom tools) have shapes of their own
        # Chat nests the function under `function`; the Responses API puts its fields on the tool.
        spec: Any = tool.get("function") if endpoint == "chat/completions" else tool
        prefix = f"tools[{i}].function" if endpoint == "chat/completions" else f"tools[{i}]"
        if not isinstance(spec, dict):
            raise _invalid(f"`{prefix}` must be an object.", prefix, code="invalid_type")
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise _invalid(f"`{prefix}.name` must be a non-empty string.", f"{prefix}.name")
        parameters = spec.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise _invalid(
                f"`{prefix}.parameters` must be an object.", f"{prefix}.parameters", code="invalid_type"
            )


def check_request(endpoint: str, body: dict[str, Any]) -> None:
    """Refuse (400, naming the param) a body of ``endpoint`` that is nonsense or past a limit."""
    _check_token_fields(body)
    if endpoint in CHAT_ENDPOINTS:
        _check_messages(body.get("messages"))
    if endpoint in TOOL_ENDPOINTS:
        _check_tools(endpoint, body.get("tools"))
