"""Schemas of the prompt library API."""

from __future__ import annotations

from typing import Any

from ninja import Schema


class VariableOut(Schema):
    name: str
    type: str
    default: str | None
    choices: list[str]
    required: bool


class PromptOut(Schema):
    id: str
    title: str
    description: str
    category: str
    tags: list[str]
    scope: str
    groups: list[str]
    published_version: int | None


class PromptDetailOut(PromptOut):
    version: int
    system: str
    user: str
    model: str
    params: dict[str, Any]
    variables: list[VariableOut]
