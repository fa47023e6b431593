"""Provider adapters: one module per vendor behind the interface of `base.py`."""

from __future__ import annotations

from gateway.providers.anthropic import AnthropicAdapter
from gateway.providers.base import Adapter
from gateway.providers.bedrock import BedrockAdapter
from gateway.providers.gemini import GeminiAdapter
from gateway.providers.openai import AzureOpenAIAdapter, OpenAIAdapter

# Adding a provider: one new module, and one line here.
ADAPTERS: dict[str, Adapter] = {
    "openai": OpenAIAdapter(),
    "openai_compatible": OpenAIAdapter(),
    "azure_openai": AzureOpenAIAdapter(),
    "anthropic": AnthropicAdapter(),
    "gemini": GeminiAdapter(),
    "bedrock": BedrockAdapter(),
}


def adapter_for(kind: str) -> Adapter:
    """The adapter of a provider kind."""
    return ADAPTERS[kind]
