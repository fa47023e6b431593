"""Schemas of the quotas management API."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from ninja import Schema
from pydantic import Field

from quotas.models import LIMIT_MAX


class RuleIn(Schema):
    subject: str = Field(
        description="user:NAME, group:NAME (shared pool), group-member:NAME (each member) or key:ID"
    )
    metric: str = Field(description="requests, tokens, cost_usd, audio_seconds or images")
    window: str = Field(description="minute, hour, day, month or total")
    limit: Decimal = Field(ge=0, le=LIMIT_MAX)
    models: list[str] = Field(default_factory=list, description="model names; empty = every model")
    warn_at: int | None = Field(default=None, ge=1, le=100, description="warn at this percentage")
    name: str = ""
    enabled: bool = True


class RulePatch(Schema):
    limit: Decimal | None = Field(default=None, ge=0, le=LIMIT_MAX)
    warn_at: int | None = Field(default=None, ge=1, le=100)
    name: str | None = None
    enabled: bool | None = None


class RuleOut(Schema):
    id: int
    label: str
    subject_type: str
    subject: str
    metric: str
    window: str
    limit: Decimal
    models: list[str]
    warn_at: int | None
    enabled: bool
    used_this_window: float | None


class UsageRow(Schema):
    key: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal


class UsageQuery(Schema):
    start: date | None = None
    end: date | None = None
    user: str | None = None
    group: str | None = None
    model: str | None = None
    group_by: str = Field(default="day", pattern="^(day|model|user|key)$")
