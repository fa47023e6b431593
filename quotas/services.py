"""Quota workflows for the gateway, the portal and transcription: admit before, settle after."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any

from config import metrics
from config.db import DB_UNREACHABLE, adb
from gateway.errors import GatewayError
from quotas import engine
from quotas.engine import Counter, Demand, LocalLimiter, Refused, Reservation, RuleInfo
from quotas.rebuild import counters_rebuild

logger = logging.getLogger(__name__)

# One lock per event loop: an asyncio.Lock belongs to the loop that first waits on it, and a loop
# that ends while holding it (a transient loop of a sync caller) must not block the others.
_rebuild_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)
_local = LocalLimiter()


async def usage_admit(
    *, state: Any, rules: tuple[RuleInfo, ...], principal: Any, model: str, demand: Demand
) -> Reservation:
    """Check and reserve on every counter that applies, atomically; raise a 429 (or 503) otherwise."""
    now = time.time()
    counters = engine.counters_for(rules, principal, model, demand, now)
    reservation = Reservation(counters=counters)
    if not counters:
        return reservation
    try:
        await _admit(state, counters)
    except Refused as refused:
        counter = counters[refused.index]
        error = engine.refusal(counter, refused.used, now)
        metrics.quota_refused(str(error.code))
        counter.used_after = refused.used
        for name, value in engine.ratelimit_headers([counter], now):
            error.headers[name.decode()] = value.decode()
        raise error from None
    reservation.headers = engine.ratelimit_headers(counters, now)
    reservation.alerts = engine.crossed_warnings(counters, principal)
    return reservation


async def _admit(state: Any, counters: list[Counter]) -> None:
    if state.redis is None:
        try:
            await adb(engine.db_admit, counters)
        except (Refused, GatewayError):
            raise
        except DB_UNREACHABLE as exc:  # the database is away: the same policy
            _unreachable(counters, "the database", exc)
        return
    try:
        try:
            await engine.redis_admit(state.redis, counters)
        except engine.NotReady:
            await _rebuild_once()
            await engine.redis_admit(state.redis, counters)
    except (Refused, GatewayError):
        raise
    except DB_UNREACHABLE as exc:  # Redis lost its counters and the ledger is away
        _unreachable(counters, "the database (rebuilding the counters)", exc)
    except Exception as exc:
        _unreachable(counters, "Redis", exc)


def _unreachable(counters: list[Counter], store: str, exc: Exception) -> None:
    """The counter store is away: rate limits fail open on the local limiter, the rest by policy."""
    policy = engine.redis_failure_policy(counters)
    logger.warning("%s unreachable for admission (%s): failing %s", store, type(exc).__name__, policy)
    if policy == "closed":
        raise GatewayError(
            503, "Quotas cannot be checked right now (the counter store is unreachable); try again shortly.",
            code="quota_unavailable", type="service_unavailable",
        ) from None  # fmt: skip
    _local.admit(counters)


async def _rebuild_once() -> None:
    lock = _rebuild_locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock:
        count = await adb(counters_rebuild)
        logger.warning(
            "quota counters were missing in Redis: %d rebuilt from the ledger here (0: another process did it)",
            count,
        )


def actual_of(metric: str, event: dict[str, Any]) -> float:
    if metric == "requests":
        return 1.0
    if metric == "tokens":
        return float(event["prompt_tokens"] + event["completion_tokens"])
    return float(event.get(metric) or 0)


async def usage_settle(*, state: Any, reservation: Reservation, event: dict[str, Any]) -> None:
    """Replace the reservation by the actual usage and append the usage event, exactly once."""
    if reservation.settled:
        return
    reservation.settled = True
    deltas = [(c, actual_of(c.rule.metric, event) - c.reserved) for c in reservation.counters]
    events = [event, *reservation.alerts]
    if state.redis is not None and deltas:
        try:
            await engine.redis_settle(state.redis, deltas, events)
            return
        except Exception as exc:
            logger.warning("Redis unreachable for settlement (%s): event kept in memory", type(exc).__name__)
            for item in events:
                await state.buffer.fallback.put(item)
            return
    if deltas and state.redis is None:
        try:
            await adb(engine.db_settle, deltas)
        except DB_UNREACHABLE as exc:  # the event itself waits in the buffer
            logger.warning("database unreachable: counters not settled for %s (%s)", event.get("request_id"),
                           type(exc).__name__)  # fmt: skip
        except Exception:
            logger.exception("counter settlement failed for %s", event.get("request_id"))
    for item in events:
        await state.buffer.put(item)
