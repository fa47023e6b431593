"""Provider adapters: one module per vendor behind the interface of `base.py`."""

from __future__ import annotations

from gateway.providers.base import Adapter
from gateway.providers.openai import AzureOpenAIAdapter, OpenAIAdapter

ADAPTERS: dict[str, Adapter] = {
    "openai": OpenAIAdapter(),
    "openai_compatible": OpenAIAdapter(),
    "azure_openai": AzureOpenAIAdapter(),
}


def adapter_for(kind: str) -> Adapter:
    """The adapter of a provider kind."""
    return ADAPTERS[kind]
