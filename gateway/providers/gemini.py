"""Google Gemini: the Generative Language API, or Vertex AI's endpoint style (`options.vertex`).

Chat via generateContent / streamGenerateContent?alt=sse, embeddings via batchEmbedContents
(Vertex AI: predict).
"""

from __future__ import annotations

import base64
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
    SSEParser,
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

FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter",
          "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter"}  # fmt: skip
# JSON-schema keywords Gemini's OpenAPI-subset schema refuses.
UNSUPPORTED_SCHEMA_KEYS = {"$schema", "additionalProperties", "$id", "$defs", "definitions", "strict"}


def _schema(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _schema(v) for k, v in value.items() if k not in UNSUPPORTED_SCHEMA_KEYS}
    if isinstance(value, list):
        return [_schema(v) for v in value]
    return value


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content or ():
        if not isinstance(part, dict):
            continue
        if part.get("type") in ("text", "input_text"):
            parts.append({"text": str(part.get("text", ""))})
        elif part.get("type") == "image_url":
            url, mime, raw = image_of(part)
            if raw is None:
                raise GatewayError(
                    400, "Gemini takes images as data: URLs here.", code="invalid_value", param="messages"
                )
            parts.append({"inlineData": {"mimeType": mime, "data": base64.b64encode(raw).decode()}})
    return parts


def generate_body(body: dict[str, Any], call: Any) -> dict[str, Any]:
    single_choice(body)
    system: list[dict[str, str]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id → function name (functionResponse needs the name)

    def push(role: str, items: list[dict[str, Any]]) -> None:
        append_turn(contents, role, items, "parts")

    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in ("system", "developer"):
            system.append({"text": text_of(message.get("content"))})
        elif role == "user":
            push("user", _parts(message.get("content")))
        elif role == "assistant":
            parts = _parts(message.get("content"))
            for tool_call in message.get("tool_calls") or ():
                fn = tool_call.get("function") or {}
                names[str(tool_call.get("id"))] = str(fn.get("name"))
                parts.append(
                    {"functionCall": {"name": fn.get("name"), "args": loads_arguments(fn.get("arguments"))}}
                )
            push("model", parts)
        elif role == "tool":
            name = names.get(str(message.get("tool_call_id")), str(message.get("name") or "tool"))
            push(
                "user",
                [
                    {
                        "functionResponse": {
                            "name": name,
                            "response": {"content": text_of(message.get("content"))},
                        }
                    }
                ],
            )
    config: dict[str, Any] = {"maxOutputTokens": max_tokens(body, call)}
    if body.get("temperature") is not None:
        config["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        config["topP"] = body["top_p"]
    if stops := stop_list(body):
        config["stopSequences"] = stops
    if wants_json(body):
        config["responseMimeType"] = "application/json"
    out: dict[str, Any] = {"contents": contents, "generationConfig": config}
    if system:
        out["systemInstruction"] = {"parts": system}
    tools = function_tools(body)
    if tools:
        out["tools"] = [{"functionDeclarations": [{"name": t["name"], "description": t["description"],
                                                   "parameters": _schema(t["parameters"])} for t in tools]}]  # fmt: skip
        choice = body.get("tool_choice")
        mode = (
            "ANY"
            if isinstance(choice, dict)
            else {"required": "ANY", "none": "NONE"}.get(str(choice), "AUTO")
        )
        calling: dict[str, Any] = {"mode": mode}
        if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            calling["allowedFunctionNames"] = [choice["function"].get("name")]
        out["toolConfig"] = {"functionCallingConfig": calling}
    return out


def usage_of(raw: Any) -> Usage:
    usage = raw if isinstance(raw, dict) else {}
    output = int(usage.get("candidatesTokenCount") or 0) + int(usage.get("thoughtsTokenCount") or 0)
    return Usage(
        int(usage.get("promptTokenCount") or 0), output, int(usage.get("cachedContentTokenCount") or 0)
    )


def _calls(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p["functionCall"] for p in parts if isinstance(p.get("functionCall"), dict)]


class GeminiStreamDecoder:
    def __init__(self, model: str, include_usage: bool) -> None:
        self.out = ChunkWriter(model, include_usage=include_usage)
        self.parser = SSEParser()
        self.usage: Usage | None = None
        self.tools = 0
        self.reason: str | None = None

    def feed(self, chunk: bytes) -> bytes:
        result = b""
        for _, data in self.parser.feed(chunk):
            try:
                answer = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(answer, dict):
                continue
            if "error" in answer:
                err = answer["error"] if isinstance(answer["error"], dict) else {}
                result += self.out.error(str(err.get("message", "The provider's stream failed.")))
                continue
            if answer.get("usageMetadata"):
                self.usage = self.out.usage = usage_of(answer["usageMetadata"])
            for candidate in answer.get("candidates") or ()[:1]:
                parts = (candidate.get("content") or {}).get("parts") or []
                for part in parts:
                    if part.get("text") and not part.get("thought"):
                        result += self.out.text(str(part["text"]))
                for fn in _calls(parts):
                    index, self.tools = self.tools, self.tools + 1
                    result += self.out.tool_start(index, f"call_{uuid.uuid4().hex[:24]}", str(fn.get("name")))
                    result += self.out.tool_args(index, orjson.dumps(fn.get("args") or {}).decode())
                if candidate.get("finishReason"):
                    self.reason = (
                        "tool_calls" if self.tools else FINISH.get(candidate["finishReason"], "stop")
                    )
        return result

    def finish(self) -> bytes:
        return self.out.finish(self.reason or "stop") + self.out.close()

    def completion_text(self) -> str:
        return self.out.completion_text()


class GeminiAdapter(Adapter):
    endpoints = frozenset({"chat/completions", "embeddings"})
    passthrough = False

    def _url(self, deployment: DeploymentInfo, action: str) -> tuple[str, dict[str, str]]:
        provider = deployment.provider
        model = quote(deployment.provider_model, safe="")
        headers = {"content-type": "application/json"}
        if provider.options.get("vertex"):
            project, location = (
                provider.options.get("project", ""),
                provider.options.get("location", deployment.region or "us-central1"),
            )
            url = f"{provider.base_url}/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:{action}"
            headers["authorization"] = f"Bearer {provider.credential}"
        else:
            url = f"{provider.base_url}/v1beta/models/{model}:{action}"
            headers["x-goog-api-key"] = provider.credential
        headers.update(provider.extra_headers)
        return url, headers

    def build(
        self, endpoint: str, deployment: DeploymentInfo, body: dict[str, Any], call: Any = None
    ) -> UpstreamRequest:
        if endpoint == "chat/completions":
            stream = bool(body.get("stream"))
            url, headers = self._url(deployment, "streamGenerateContent" if stream else "generateContent")
            if stream:
                url += "?alt=sse"
            return UpstreamRequest("POST", url, headers, orjson.dumps(generate_body(body, call)))
        if endpoint == "embeddings":
            texts = embedding_inputs(body)
            if deployment.provider.options.get("vertex"):  # Vertex AI's text embeddings: `:predict`
                payload: dict[str, Any] = {"instances": [{"content": t} for t in texts]}
                if isinstance(body.get("dimensions"), int):
                    payload["parameters"] = {"outputDimensionality": body["dimensions"]}
                url, headers = self._url(deployment, "predict")
                return UpstreamRequest("POST", url, headers, orjson.dumps(payload))
            name = f"models/{deployment.provider_model}"
            requests = [{"model": name, "content": {"parts": [{"text": t}]}} for t in texts]
            if isinstance(body.get("dimensions"), int):
                for request in requests:
                    request["outputDimensionality"] = body["dimensions"]
            url, headers = self._url(deployment, "batchEmbedContents")
            return UpstreamRequest("POST", url, headers, orjson.dumps({"requests": requests}))
        raise UnsupportedOperation(endpoint)

    def decode(self, endpoint: str, deployment: DeploymentInfo, raw: bytes, call: Any) -> tuple[bytes, Any]:
        answer = orjson.loads(raw)
        if endpoint == "embeddings":
            if "predictions" in answer:  # Vertex AI, with the service's own token counts
                found = [(p.get("embeddings") or {}) for p in answer.get("predictions") or ()]
                vectors = [e.get("values") or [] for e in found]
                prompt = sum(int((e.get("statistics") or {}).get("token_count") or 0) for e in found)
            else:
                vectors = [item.get("values") or [] for item in answer.get("embeddings") or ()]
                prompt = tokens.count_prompt("embeddings", call.body) if call is not None else 0
            result = embedding_list(vectors, model=deployment.provider_model, prompt_tokens=prompt,
                                    body=call.body if call is not None else {})  # fmt: skip
            return orjson.dumps(result), result
        candidate = (answer.get("candidates") or [{}])[0]
        parts = (candidate.get("content") or {}).get("parts") or []
        text = "".join(str(p["text"]) for p in parts if p.get("text") and not p.get("thought"))
        calls = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                  "function": {"name": fn.get("name"), "arguments": orjson.dumps(fn.get("args") or {}).decode()}}
                 for fn in _calls(parts)]  # fmt: skip
        finish = "tool_calls" if calls else FINISH.get(str(candidate.get("finishReason")), "stop")
        result = completion(model=answer.get("modelVersion") or deployment.provider_model, text=text if text or not calls else None,
                            tool_calls=calls, finish=finish, usage=usage_of(answer.get("usageMetadata")),
                            response_id=answer.get("responseId"))  # fmt: skip
        return orjson.dumps(result), result

    def stream_decoder(self, endpoint: str, deployment: DeploymentInfo, call: Any, strip_usage: bool) -> Any:
        return GeminiStreamDecoder(deployment.provider_model, not strip_usage)

    def parse_error(self, body: bytes) -> tuple[str, Any, Any, Any]:
        try:
            err = orjson.loads(body).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            return body[:500].decode("utf-8", "replace"), None, None, None
        if isinstance(err, dict):
            status = str(err.get("status") or "")
            return str(err.get("message") or ""), status.lower() or None, None, None
        return "", None, None, None

    def kind_for(self, status: int, headers: Any) -> ErrorKind:
        return kind_for_status(status)
