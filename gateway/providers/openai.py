"""OpenAI, OpenAI-compatible servers (vLLM, Ollama, TGI, LM Studio) and Azure OpenAI: pass-through."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson

from gateway.catalog import DeploymentInfo
from gateway.providers.base import Adapter, UnsupportedOperation, UpstreamRequest


class OpenAIAdapter(Adapter):
    """`{base_url}/{endpoint}` with a Bearer credential; the body goes through as it is."""

    endpoints = frozenset(
        {"chat/completions", "completions", "embeddings", "responses", "moderations", "images/generations"}
    )

    def build(
        self, endpoint: str, deployment: DeploymentInfo, body: dict[str, Any], call: Any = None
    ) -> UpstreamRequest:
        if endpoint not in self.endpoints:
            raise UnsupportedOperation(endpoint)
        provider = deployment.provider
        headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        if provider.credential:
            headers["authorization"] = f"Bearer {provider.credential}"
        headers.update(provider.extra_headers)
        return UpstreamRequest("POST", f"{provider.base_url}/{endpoint}", headers, orjson.dumps(body))


class AzureOpenAIAdapter(Adapter):
    """`{base_url}/openai/deployments/{deployment}/{endpoint}?api-version=…` with an `api-key` header."""

    endpoints = frozenset({"chat/completions", "completions", "embeddings", "images/generations"})

    def build(
        self, endpoint: str, deployment: DeploymentInfo, body: dict[str, Any], call: Any = None
    ) -> UpstreamRequest:
        if endpoint not in self.endpoints:
            raise UnsupportedOperation(endpoint)
        provider = deployment.provider
        headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        if provider.credential:
            headers["api-key"] = provider.credential
        headers.update(provider.extra_headers)
        version = quote(provider.api_version or "2024-10-21", safe="")
        name = quote(deployment.provider_model, safe="")
        url = f"{provider.base_url}/openai/deployments/{name}/{endpoint}?api-version={version}"
        return UpstreamRequest("POST", url, headers, orjson.dumps(body))
