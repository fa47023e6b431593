"""Per-process runtime state of the gateway: caches, the upstream HTTP pool, the usage buffer.

Created lazily on the first request of an event loop (so the in-process test client and every
server work the same), torn down by the ASGI lifespan shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx
from django.conf import settings

from config import lifespan
from config.db import DB_UNREACHABLE, adb
from gateway import generation, keys, routing
from gateway.catalog import Principal, Snapshot, load_key, load_snapshot
from gateway.entra import EntraTokens
from gateway.errors import GatewayError
from gateway.upstream import make_transport, make_upstream
from quotas.buffer import UNREACHABLE, Flusher, MemoryBuffer, RedisBuffer, cancel_requested
from quotas.scripts import use_hiredis_packing

logger = logging.getLogger(__name__)

NEGATIVE_TTL = 5.0
# After a failed database read, serve what is cached for this long before trying again, so an
# outage costs the hot path one failed connection per second rather than one per request.
DB_RETRY_SECONDS = 1.0
T = TypeVar("T")


def make_http_client(transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """An httpx client on ``transport`` (the process's pool) for the gateway's other calls (Entra ID keys)."""
    return httpx.AsyncClient(
        transport=transport or make_transport(), timeout=httpx.Timeout(600.0, connect=10.0),
        follow_redirects=False, trust_env=False,
    )  # fmt: skip


class GatewayState:
    """Everything one process keeps between requests."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.redis: Any = None
        if settings.REDIS_URL:
            import redis.asyncio as aioredis

            # A blocking pool: past its size a command waits (up to 2 s) for a connection instead
            # of failing, so a burst of requests is served, not refused as "Redis unreachable".
            pool = aioredis.BlockingConnectionPool.from_url(
                settings.REDIS_URL, max_connections=settings.GATEWAY_REDIS_MAX_CONNECTIONS, timeout=2,
                socket_timeout=2, socket_connect_timeout=2, health_check_interval=30,
            )  # fmt: skip
            use_hiredis_packing(pool)
            self.redis = aioredis.Redis(connection_pool=pool)
        self.buffer: MemoryBuffer | RedisBuffer = (
            RedisBuffer(self.redis, drain=settings.USAGE_WEB_DRAIN) if self.redis else MemoryBuffer()
        )
        self.flusher = Flusher(self.buffer)
        self.upstream = make_upstream()  # the proxy's provider calls (gateway.upstream)
        self.http = make_http_client()
        # Entra ID access tokens: the tenant's signing keys and the principals of warm tokens.
        self.entra = EntraTokens(self.http)
        self.snapshot: Snapshot | None = None
        self.snapshot_lock = asyncio.Lock()
        self.keys: dict[str, tuple[Principal | None, float]] = {}
        self.generation: int | None = None
        self.db_retry_at = 0.0  # monotonic time before which a database read is not retried
        self.poller: asyncio.Task[None] | None = None
        self.pending: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``coro`` as a task that shutdown waits for (settlements)."""
        task = self.loop.create_task(coro)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)
        return task

    def start(self) -> None:
        self.flusher.start()
        if self.poller is None:
            self.poller = self.loop.create_task(self._poll(), name="gateway-config-poller")

    async def close(self) -> None:
        if self.poller is not None:
            self.poller.cancel()
            self.poller = None
        if self.pending:
            await asyncio.wait(set(self.pending), timeout=30)
        await self.flusher.stop()
        await self.http.aclose()
        await self.upstream.aclose()
        if self.redis is not None:
            await self.redis.aclose(close_connection_pool=True)  # the quota lanes' connections too

    # --- the change signal --------------------------------------------------------------------
    async def read_generation(self) -> int:
        if self.redis is not None:
            try:
                value = await self.redis.get(generation.REDIS_KEY)
                return int(value or 0)
            except Exception:
                logger.warning("Redis unreachable: reading the change signal from the database")
        return await adb(generation.read_db)

    async def _poll(self) -> None:
        while not cancel_requested():
            await asyncio.sleep(settings.GATEWAY_CONFIG_POLL_SECONDS)
            try:
                if self.redis is not None:
                    await routing.health_publish(self.redis)
                current = await self.read_generation()
                if current != self.generation:
                    # Loaded before anything is dropped: with the database away, the cached keys
                    # and catalogue keep serving, and the change is applied once it is back.
                    snapshot = await adb(load_snapshot)
                    self.generation = current
                    self.keys.clear()
                    self.entra.forget()
                    self.snapshot = snapshot
            except asyncio.CancelledError:
                raise
            except UNREACHABLE as exc:
                logger.warning("config poll failed (%s); keeping the cached state", type(exc).__name__)
            except Exception:
                logger.exception("config poll failed; keeping the cached state")

    # --- cached reads -------------------------------------------------------------------------
    def _db_resting(self) -> bool:
        """Whether a database read failed less than DB_RETRY_SECONDS ago."""
        return time.monotonic() < self.db_retry_at

    def _db_failed(self, what: str) -> GatewayError:
        if not self._db_resting():
            logger.warning("database unreachable: serving cached %s", what)
        self.db_retry_at = time.monotonic() + DB_RETRY_SECONDS
        return GatewayError(
            503, "The gateway's database is unreachable right now; try again shortly.",
            code="database_unavailable", type="service_unavailable",
        )  # fmt: skip

    async def get_snapshot(self) -> Snapshot:
        """The catalogue; a stale one while the database is unreachable (a 503 if there is none)."""
        snap = self.snapshot
        if snap is not None and (
            time.time() - snap.loaded_at < settings.GATEWAY_CACHE_TTL or self._db_resting()
        ):
            return snap
        async with self.snapshot_lock:
            if self.snapshot is None or time.time() - self.snapshot.loaded_at >= settings.GATEWAY_CACHE_TTL:
                try:
                    if self.generation is None:
                        self.generation = await self.read_generation()
                    self.snapshot = await adb(load_snapshot)
                except DB_UNREACHABLE:
                    error = self._db_failed("catalogue")
                    if self.snapshot is None:
                        raise error from None
            return self.snapshot

    async def principal_for_key(self, plaintext: str) -> Principal | None:
        """The key's principal, from the cache when warm. None for an unknown key.

        While the database is unreachable, a key validated before keeps its cached principal
        (revoked and expired keys stay refused; a revocation made meanwhile applies once the
        database is back); a key not seen before gets a 503.
        """
        digest = keys.digest(plaintext)
        now = time.monotonic()
        hit = self.keys.get(digest)  # only well-formed keys are ever cached
        if hit is not None and (hit[1] > now or (hit[0] is not None and self._db_resting())):
            return hit[0]
        if hit is None and not keys.well_formed(plaintext):
            return None  # not one of ours: neither cached nor looked up
        try:
            principal = await adb(load_key, digest)
        except DB_UNREACHABLE:
            error = self._db_failed("keys")
            if hit is None or hit[0] is None:
                raise error from None
            return hit[0]
        ttl = settings.GATEWAY_CACHE_TTL if principal is not None else NEGATIVE_TTL
        self.keys[digest] = (principal, now + ttl)
        return principal


# One state per event loop: a server process has one loop; tests may run several servers in threads.
_states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, GatewayState] = weakref.WeakKeyDictionary()


def get_state() -> GatewayState:
    """This event loop's gateway state, created on first use."""
    loop = asyncio.get_running_loop()
    state = _states.get(loop)
    if state is None:
        state = _states[loop] = GatewayState()
        state.start()
    return state


async def shutdown() -> None:
    """Flush the usage buffer and close the pools (ASGI lifespan shutdown)."""
    state = _states.pop(asyncio.get_running_loop(), None)
    if state is not None:
        await state.close()


lifespan.on_shutdown(shutdown)
