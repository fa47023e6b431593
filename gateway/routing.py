"""Choosing deployments: priority groups with weights, fallback chains, data policies, circuit breakers.

Breakers are per process (each process learns on its own within a few requests); their states are
published for the admin's health view (Redis when configured, else read in process).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from gateway.catalog import DeploymentInfo, ModelInfo, Principal, Snapshot
from gateway.errors import GatewayError

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass
class Breaker:
    """Opens after CIRCUIT_FAILURES consecutive failures; after CIRCUIT_COOLDOWN one probe is let through."""

    failures: int = 0
    state: str = CLOSED
    opened_at: float = 0.0
    blocked_until: float = 0.0  # a 429's Retry-After
    probing: bool = False
    outcomes: deque[tuple[float, bool, float]] = field(default_factory=lambda: deque(maxlen=200))

    def allow(self, now: float) -> bool:
        if now < self.blocked_until:
            return False
        if self.state == CLOSED:
            return True
        if self.state == OPEN and now - self.opened_at >= settings.GATEWAY_CIRCUIT_COOLDOWN:
            self.state, self.probing = HALF_OPEN, False
        if self.state == HALF_OPEN and not self.probing:
            self.probing = True  # exactly one probe at a time
            return True
        return False

    def success(self, latency: float) -> None:
        self.failures, self.state, self.probing = 0, CLOSED, False
        self.outcomes.append((time.time(), True, latency))

    def failure(self, now: float, retry_after: float | None = None) -> None:
        self.failures += 1
        self.outcomes.append((time.time(), False, 0.0))
        if retry_after:
            self.blocked_until = now + min(retry_after, settings.GATEWAY_MAX_RETRY_AFTER)
        if self.state == HALF_OPEN or self.failures >= settings.GATEWAY_CIRCUIT_FAILURES:
            self.state, self.opened_at, self.probing = OPEN, now, False

    def health(self) -> dict[str, Any]:
        recent = [o for o in self.outcomes if o[0] > time.time() - 300]
        errors = sum(1 for o in recent if not o[1])
        latencies = sorted(o[2] for o in recent if o[1])
        state = self.state
        if state == CLOSED and recent and errors / len(recent) > 0.2:
            state = "degraded"
        return {
            "state": state, "requests": len(recent), "error_rate": errors / len(recent) if recent else 0.0,
            "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else None, "pid": os.getpid(),
            "at": time.time(),
        }  # fmt: skip


BREAKERS: dict[int, Breaker] = {}


def breaker(deployment_id: int) -> Breaker:
    found = BREAKERS.get(deployment_id)
    if found is None:
        found = BREAKERS[deployment_id] = Breaker()
    return found


def _weighted(deps: list[DeploymentInfo]) -> list[DeploymentInfo]:
    """Priority groups in order; within one, a weighted random order."""
    ordered: list[DeploymentInfo] = []
    for priority in sorted({d.priority for d in deps}):
        group = [d for d in deps if d.priority == priority]
        while group:
            pick = (
                random.choices(group, weights=[max(d.weight, 1) for d in group])[0]
                if len(group) > 1
                else group[0]
            )
            ordered.append(pick)
            group.remove(pick)
    return ordered


def plan(
    snapshot: Snapshot, principal: Principal, model: ModelInfo
) -> list[tuple[ModelInfo, DeploymentInfo]]:
    """Every (model, deployment) to try, in order: the model's own, then each fallback model's.

    Raises 403 when the caller's data policy excludes every deployment, 503 when none exists.
    """
    chain = [model] + [snapshot.models[name] for name in model.fallbacks if name in snapshot.models]
    chain = [m for i, m in enumerate(chain) if i == 0 or principal.may_use(m)]
    existing = [(m, d) for m in chain for d in _weighted(list(m.deployments))]
    if not existing:
        raise GatewayError(503, f"No deployment can serve `{model.name}` right now.", code="no_deployment")
    allowed = [(m, d) for m, d in existing if principal.may_route_to(d)]
    if not allowed:
        where = []
        if principal.allowed_regions is not None:
            where.append(f"regions {', '.join(sorted(principal.allowed_regions)) or 'none'}")
        if principal.allowed_providers is not None:
            where.append(f"providers {', '.join(sorted(principal.allowed_providers)) or 'none'}")
        if principal.required_flags:
            where.append(f"flags {', '.join(sorted(principal.required_flags))}")
        raise GatewayError(
            403, f"Your data policy allows no deployment of `{model.name}` ({'; '.join(where) or 'restricted'}).",
            code="policy_denied", type="permission_error",
        )  # fmt: skip
    return allowed


HEALTH_KEY = "gateway:{health}:deployments"
STATE_ORDER = {CLOSED: 0, "degraded": 1, HALF_OPEN: 2, OPEN: 3}


async def health_publish(client: Any) -> None:
    """Publish this process's breaker states to Redis (polled by the admin's health view)."""
    if not BREAKERS:
        return
    pid = os.getpid()
    mapping = {f"{dep_id}:{pid}": json.dumps(b.health()) for dep_id, b in BREAKERS.items()}
    await client.hset(HEALTH_KEY, mapping=mapping)
    await client.expire(HEALTH_KEY, 300)


def health_read() -> dict[int, dict[str, Any]]:
    """deployment id → merged health over every live process (the worst state wins)."""
    rows: list[tuple[int, dict[str, Any]]] = [(dep_id, b.health()) for dep_id, b in BREAKERS.items()]
    if settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        try:
            for field_name, value in client.hgetall(HEALTH_KEY).items():
                health = json.loads(value)
                if time.time() - float(health.get("at", 0)) < 60:
                    name = field_name.decode() if isinstance(field_name, bytes) else str(field_name)
                    rows.append((int(name.split(":")[0]), health))
        finally:
            client.close()
    merged: dict[int, dict[str, Any]] = {}
    for dep_id, health in rows:
        seen = merged.get(dep_id)
        if seen is None:
            merged[dep_id] = dict(health)
            continue
        if STATE_ORDER.get(str(health["state"]), 0) > STATE_ORDER.get(str(seen["state"]), 0):
            seen["state"] = health["state"]
        total = int(seen["requests"]) + int(health["requests"])
        if total:
            seen["error_rate"] = (
                float(seen["error_rate"]) * int(seen["requests"])
                + float(health["error_rate"]) * int(health["requests"])
            ) / total
        seen["requests"] = total
        seen["p50_ms"] = health["p50_ms"] or seen["p50_ms"]
    return merged
