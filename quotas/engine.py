"""Admission and settlement: one atomic check-and-reserve over every counter that applies.

With Redis, a Lua script checks and reserves all counters in one round trip, and a second script
replaces the reservation by the actual usage and appends the usage event (so settlement is one
round trip too); concurrent calls share their round trips (quotas/scripts.py). Without Redis,
the same happens in the database with atomic conditional updates inside one transaction. The reservation is the worst case, so concurrent requests can never spend
past a limit; the refusal is a 429 whose code tells rate limits (retryable) from quotas and
budgets (not retryable).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F

from gateway.errors import GatewayError
from quotas.scripts import batcher_for
from quotas.windows import bounds, humanize

logger = logging.getLogger(__name__)

RATE_WINDOWS = frozenset({"minute", "hour"})
READY_KEY = "quotas:{ready}"
EPSILON = 1e-9

ADMIT_LUA = """
if redis.call('EXISTS', KEYS[#KEYS]) == 0 then return {-1} end
local n = #KEYS - 1
local before = {}
for i = 1, n do
  local cur = tonumber(redis.call('GET', KEYS[i]) or '0')
  local amount = tonumber(ARGV[3 * i - 1])
  if amount > 0 and cur + amount > tonumber(ARGV[3 * i - 2]) + 1e-9 then
    return {0, i, tostring(cur)}
  end
  before[i] = cur
end
local out = {1}
for i = 1, n do
  local after = before[i]
  if tonumber(ARGV[3 * i - 1]) ~= 0 then
    after = redis.call('INCRBYFLOAT', KEYS[i], ARGV[3 * i - 1])
    local ttl = tonumber(ARGV[3 * i])
    if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) end
  end
  out[#out + 1] = tostring(after)
end
return out
"""

SETTLE_LUA = """
local n = #KEYS - 1
for i = 1, n do
  if tonumber(ARGV[2 * i - 1]) ~= 0 then
    redis.call('INCRBYFLOAT', KEYS[i], ARGV[2 * i - 1])
    local ttl = tonumber(ARGV[2 * i])
    if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) end
  end
end
for j = 2 * n + 1, #ARGV do redis.call('RPUSH', KEYS[#KEYS], ARGV[j]) end
return n
"""


@dataclass(frozen=True, slots=True)
class RuleInfo:
    id: int
    label: str
    subject_type: str
    subject_id: int
    model_names: frozenset[str]
    metric: str
    window: str
    limit: float
    warn_at: float | None  # a share of the limit, 0..1

    def applies_to_model(self, model: str) -> bool:
        return not self.model_names or model in self.model_names


def load_rules() -> tuple[RuleInfo, ...]:
    """Every enabled rule (sync ORM)."""
    from quotas.models import QuotaRule

    out = []
    for rule in QuotaRule.objects.filter(enabled=True).select_related("key", "user", "group"):
        subject_id = rule.key_id or rule.user_id or rule.group_id
        assert subject_id is not None
        out.append(
            RuleInfo(
                id=rule.id,
                label=rule.label,
                subject_type=rule.subject_type,
                subject_id=subject_id,
                model_names=frozenset(rule.model_names or ()),
                metric=rule.metric,
                window=rule.window,
                limit=float(rule.limit),
                warn_at=(rule.warn_at_percent / 100) if rule.warn_at_percent else None,
            )  # fmt: skip
        )
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Demand:
    """The worst case one request may use, per metric."""

    requests: float = 1
    tokens: float = 0
    cost_usd: float = 0
    images: float = 0
    audio_seconds: float = 0

    def of(self, metric: str) -> float:
        return float(getattr(self, metric))


@dataclass(slots=True)
class Counter:
    rule: RuleInfo
    subject: str
    bucket: int
    end: int | None
    reserved: float
    used_after: float = 0.0

    @property
    def redis_key(self) -> str:
        # The subject is the hash tag: one subject's counters live on one Redis Cluster slot.
        return f"q:{{{self.subject}}}:{self.rule.id}:{self.bucket}"

    @property
    def ttl(self) -> int:
        return 0 if self.end is None else max(int(self.end - time.time()) + 3600, 60)


@dataclass(slots=True)
class Reservation:
    counters: list[Counter] = field(default_factory=list)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    settled: bool = False


def counters_for(
    rules: tuple[RuleInfo, ...], principal: Any, model: str, demand: Demand, now: float
) -> list[Counter]:
    """The counters of every rule that applies to ``principal`` calling ``model``."""
    out = []
    for rule in rules:
        if not rule.applies_to_model(model):
            continue
        kind = rule.subject_type
        if kind == "key":
            if principal.key_id != rule.subject_id:
                continue
            subject = f"k{rule.subject_id}"
        elif kind == "user":
            if principal.user_id != rule.subject_id:
                continue
            subject = f"u{rule.subject_id}"
        elif kind == "group":
            if rule.subject_id not in principal.group_ids:
                continue
            subject = f"g{rule.subject_id}"
        else:  # group_member: each member has a counter of its own
            if rule.subject_id not in principal.group_ids:
                continue
            subject = (
                f"u{principal.user_id}"
                if principal.user_id
                else f"a{principal.app_id or 0}k{principal.key_id}"
            )
        start, end = bounds(rule.window, now)
        out.append(
            Counter(rule=rule, subject=subject, bucket=start, end=end, reserved=demand.of(rule.metric))
        )
    return out


def refusal(counter: Counter, used: float, now: float) -> GatewayError:
    """The 429 for ``counter``'s rule."""
    rule = counter.rule
    resets = (
        f"resets in {humanize(counter.end - now)} (at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(counter.end))})"
        if counter.end
        else "it never resets"
    )
    detail = f"used {used:g} of {rule.limit:g}, this request needs up to {counter.reserved:g}"
    if rule.metric == "cost_usd":
        return GatewayError(429, f"Budget exceeded: {rule.label} ({detail}); {resets}.", code="budget_exceeded",
                            type="insufficient_quota", headers={"x-should-retry": "false"})  # fmt: skip
    if rule.window in RATE_WINDOWS and rule.metric in ("requests", "tokens"):
        wait = max(1, int((counter.end or now) - now + 0.999))
        return GatewayError(429, f"Rate limit reached: {rule.label} ({detail}); {resets}.", code="rate_limit_exceeded",
                            type=rule.metric, headers={"retry-after": str(wait)})  # fmt: skip
    return GatewayError(429, f"Quota exceeded: {rule.label} ({detail}); {resets}.", code="quota_exceeded",
                        type="insufficient_quota", headers={"x-should-retry": "false"})  # fmt: skip


def ratelimit_headers(counters: list[Counter], now: float) -> list[tuple[bytes, bytes]]:
    """`x-ratelimit-{limit,remaining,reset}-{requests,tokens}` of the tightest rule of each metric."""
    headers: list[tuple[bytes, bytes]] = []
    for metric in ("requests", "tokens"):
        mine = [c for c in counters if c.rule.metric == metric]
        if not mine:
            continue
        tight = min(mine, key=lambda c: c.rule.limit - c.used_after)
        remaining = max(0, int(tight.rule.limit - tight.used_after))
        reset = humanize(tight.end - now) if tight.end else "never"
        headers += [
            (f"x-ratelimit-limit-{metric}".encode(), str(int(tight.rule.limit)).encode()),
            (f"x-ratelimit-remaining-{metric}".encode(), str(remaining).encode()),
            (f"x-ratelimit-reset-{metric}".encode(), reset.encode()),
        ]
    return headers


def crossed_warnings(counters: list[Counter], principal: Any) -> list[dict[str, Any]]:
    """Alert events for counters whose reservation crossed their rule's warning share."""
    out = []
    for c in counters:
        warn = c.rule.warn_at
        if warn is None:
            continue
        threshold = warn * c.rule.limit
        if c.used_after - c.reserved < threshold <= c.used_after:
            out.append({
                "type": "alert", "rule_id": c.rule.id, "subject": c.subject, "bucket": c.bucket,
                "user_id": principal.user_id, "used": c.used_after, "limit": c.rule.limit,
                "window_end": c.end, "ts": time.time(),
            })  # fmt: skip
    return out


# --- the database backend (embedded mode) ------------------------------------------------------------


class Refused(Exception):
    def __init__(self, index: int, used: float) -> None:
        self.index, self.used = index, used


def db_admit(counters: list[Counter]) -> None:
    """Reserve on every counter or on none (sync ORM, one transaction)."""
    from quotas.models import QuotaCounter

    with transaction.atomic():
        for i, c in enumerate(counters):
            row_id = _counter_row(c)
            if c.reserved:
                amount = Decimal(repr(c.reserved))
                ok = QuotaCounter.objects.filter(
                    pk=row_id, used__lte=Decimal(repr(c.rule.limit)) - amount
                ).update(used=F("used") + amount)
                if not ok:
                    used = float(QuotaCounter.objects.values_list("used", flat=True).get(pk=row_id))
                    raise Refused(i, used)
            c.used_after = float(QuotaCounter.objects.values_list("used", flat=True).get(pk=row_id))


def _counter_row(c: Counter) -> int:
    from quotas.models import QuotaCounter

    lookup = {"rule_id": c.rule.id, "subject": c.subject, "bucket": c.bucket}
    row = QuotaCounter.objects.filter(**lookup).values_list("pk", flat=True).first()
    if row is not None:
        return row
    try:
        with transaction.atomic():
            return QuotaCounter.objects.create(**lookup).pk
    except IntegrityError:  # another process created it first
        return QuotaCounter.objects.filter(**lookup).values_list("pk", flat=True).get()


def db_settle(deltas: list[tuple[Counter, float]]) -> None:
    from quotas.models import QuotaCounter

    with transaction.atomic():
        for c, delta in deltas:
            QuotaCounter.objects.filter(rule_id=c.rule.id, subject=c.subject, bucket=c.bucket).update(
                used=F("used") + Decimal(repr(delta))
            )


# --- the Redis backend ------------------------------------------------------------------------------


class NotReady(Exception):
    """Redis lost its counters (restart, flush): rebuild them from the ledger first."""


async def redis_admit(client: Any, counters: list[Counter]) -> None:
    keys = [c.redis_key for c in counters] + [READY_KEY]
    args: list[Any] = []
    for c in counters:
        args += [repr(c.rule.limit), repr(c.reserved), c.ttl]
    result = await batcher_for(client, "admit").call(ADMIT_LUA, keys, args)
    status = int(result[0])
    if status == -1:
        raise NotReady
    if status == 0:
        raise Refused(int(result[1]) - 1, float(result[2]))
    for c, value in zip(counters, result[1:], strict=True):
        c.used_after = float(value)


async def redis_settle(
    client: Any, deltas: list[tuple[Counter, float]], events: list[dict[str, Any]]
) -> None:
    from quotas.buffer import REDIS_LIST

    keys = [c.redis_key for c, _ in deltas] + [REDIS_LIST]
    args: list[Any] = []
    for c, delta in deltas:
        args += [repr(delta), c.ttl]
    args += [orjson.dumps(e) for e in events]
    await batcher_for(client, "settle").call(SETTLE_LUA, keys, args)


def redis_failure_policy(counters: list[Counter]) -> str:
    """`open` when only rate limits apply and they may fail open, else `closed`."""
    rate_only = all(
        c.rule.window in RATE_WINDOWS and c.rule.metric in ("requests", "tokens") for c in counters
    )
    if rate_only and settings.QUOTA_RATE_LIMITS_FAIL_OPEN:
        return "open"
    return "open" if settings.QUOTA_FAIL_OPEN else "closed"


class LocalLimiter:
    """The approximate per-process limiter used while Redis is unreachable (rate limits only)."""

    def __init__(self) -> None:
        self.counts: dict[str, float] = {}

    def admit(self, counters: list[Counter]) -> None:
        for i, c in enumerate(counters):
            if self.counts.get(c.redis_key, 0.0) + c.reserved > c.rule.limit + EPSILON:
                raise Refused(i, self.counts.get(c.redis_key, 0.0))
        for c in counters:
            c.used_after = self.counts[c.redis_key] = self.counts.get(c.redis_key, 0.0) + c.reserved
        if len(self.counts) > 100_000:  # old windows: forget them
            self.counts.clear()
