"""`Idempotency-Key` on POST /v1/* (and the Azure routes): a retried request is answered once.

The first request with a key claims it (Redis ``SET NX`` when REDIS_URL is set, else this process's
memory), runs, and, when it succeeded (2xx, complete, at most GATEWAY_IDEMPOTENCY_MAX_BYTES),
stores its status, headers and body (for a stream: every SSE byte delivered) for
GATEWAY_IDEMPOTENCY_TTL_SECONDS. The same caller sending the same key again gets that response
replayed, with ``Idempotent-Replayed: true``, and no upstream call, admission or ledger row.

- The key is scoped per caller (issued key, else user, else app): another caller's identical key
  is a different key.
- The same key with a different body (or route) is refused: 422 ``idempotency_key_reused``.
- A duplicate arriving while the first is still running waits up to IN_FLIGHT_WAIT seconds for it,
  then gets 409 ``idempotency_in_progress`` (with ``Retry-After``).
- A failure (error status, broken or cut stream, client gone) releases the key: errors are never
  replayed, a retry goes upstream again. So does a response too large to keep.
- In embedded mode the store is per process; with Redis unreachable the request goes through
  without the guarantee (logged).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from django.conf import settings

from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.proxy import Call, Sink
    from gateway.state import GatewayState

logger = logging.getLogger(__name__)

HEADER = b"idempotency-key"
PATHS = ("/v1/", "/openai/")
MAX_KEY_LENGTH = 255
IN_FLIGHT_WAIT = 1.0
POLL_INTERVAL = 0.05
# A claim whose process died is forgotten after this long (a call may take GATEWAY's 600 s total).
PENDING_TTL = 900
# Embedded mode keeps at most this many bytes of responses in memory; the oldest go first.
MEMORY_BUDGET = 64 * 1024 * 1024
REPLAYED_HEADERS = frozenset({b"content-type", b"content-length", b"cache-control", b"x-accel-buffering"})

_COMPARE_AND_DELETE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_COMPARE_AND_SET = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
return 0
"""


class Store(Protocol):
    async def claim(self, key: str, value: bytes, ttl: int) -> bytes | None:
        """Set ``key`` unless it exists; None when claimed, else the value already there."""

    async def get(self, key: str) -> bytes | None: ...

    async def replace(self, key: str, expected: bytes, value: bytes, ttl: int) -> None:
        """Set ``key`` to ``value`` if it still holds ``expected``."""

    async def release(self, key: str, expected: bytes) -> None:
        """Delete ``key`` if it still holds ``expected``."""


class RedisStore:
    def __init__(self, redis: Any) -> None:
        self.redis = redis

    async def claim(self, key: str, value: bytes, ttl: int) -> bytes | None:
        if await self.redis.set(key, value, nx=True, ex=ttl):
            return None
        existing = await self.redis.get(key)
        return bytes(existing) if existing is not None else await self.claim(key, value, ttl)

    async def get(self, key: str) -> bytes | None:
        value = await self.redis.get(key)
        return bytes(value) if value is not None else None

    async def replace(self, key: str, expected: bytes, value: bytes, ttl: int) -> None:
        await self.redis.eval(_COMPARE_AND_SET, 1, key, expected, value, ttl)

    async def release(self, key: str, expected: bytes) -> None:
        await self.redis.eval(_COMPARE_AND_DELETE, 1, key, expected)


class MemoryStore:
    """The embedded store: one per process, shared by its event loops, bounded to MEMORY_BUDGET."""

    def __init__(self, budget: int = MEMORY_BUDGET) -> None:
        self.budget = budget
        self.size = 0
        self.items: dict[str, tuple[bytes, float]] = {}
        self.lock = threading.Lock()

    def _drop(self, key: str) -> None:
        value, _ = self.items.pop(key)
        self.size -= len(value)

    def _put(self, key: str, value: bytes, ttl: int) -> None:
        if key in self.items:
            self._drop(key)
        self.items[key] = (value, time.monotonic() + ttl)
        self.size += len(value)
        while self.size > self.budget and self.items:
            self._drop(next(iter(self.items)))

    def _live(self, key: str) -> bytes | None:
        hit = self.items.get(key)
        if hit is None:
            return None
        if hit[1] <= time.monotonic():
            self._drop(key)
            return None
        return hit[0]

    async def claim(self, key: str, value: bytes, ttl: int) -> bytes | None:
        with self.lock:
            existing = self._live(key)
            if existing is None:
                self._put(key, value, ttl)
            return existing

    async def get(self, key: str) -> bytes | None:
        with self.lock:
            return self._live(key)

    async def replace(self, key: str, expected: bytes, value: bytes, ttl: int) -> None:
        with self.lock:
            if self._live(key) == expected:
                self._put(key, value, ttl)

    async def release(self, key: str, expected: bytes) -> None:
        with self.lock:
            if self._live(key) == expected:
                self._drop(key)


MEMORY = MemoryStore()


class RecordingSink:
    """Passes the response through to the client and keeps a copy of it (up to ``limit`` bytes)."""

    def __init__(self, inner: Sink, limit: int) -> None:
        self.inner = inner
        self.limit = limit
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.overflow = False
        self.complete = False

    @property
    def started(self) -> bool:
        return self.inner.started

    @started.setter
    def started(self, value: bool) -> None:
        self.inner.started = value

    @property
    def finished(self) -> bool:
        return bool(getattr(self.inner, "finished", self.complete))

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status, self.headers = status, list(headers)
        await self.inner.start(status, headers)

    async def send(self, chunk: bytes, *, more: bool) -> None:
        if not self.complete and not self.overflow:
            self.size += len(chunk)
            if self.size > self.limit:
                self.overflow, self.chunks = True, []
            else:
                self.chunks.append(chunk)
        if not more:
            self.complete = True
        await self.inner.send(chunk, more=more)


def caller_of(call: Call) -> str:
    """Whose keys these are: the issued key, else the user, else the app."""
    p = call.principal
    if p.key_id is not None:
        return f"k{p.key_id}"
    if p.user_id is not None:
        return f"u{p.user_id}"
    if p.app_id is not None:
        return f"a{p.app_id}"
    return f"n{p.username}"


def _presented(scope: dict[str, Any]) -> str | None:
    for name, value in scope["headers"]:
        if name == HEADER:
            key = bytes(value).decode("latin-1").strip()
            if not key or len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
                raise GatewayError(400, f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters.",
                                   code="invalid_idempotency_key", param="Idempotency-Key")  # fmt: skip
            return key
    return None


def _encode(meta: dict[str, Any], body: bytes = b"") -> bytes:
    return orjson.dumps(meta) + b"\n" + body


def _decode(value: bytes) -> tuple[dict[str, Any], bytes]:
    head, _, body = value.partition(b"\n")
    meta = orjson.loads(head)
    return (meta if isinstance(meta, dict) else {}), body


async def serve(
    state: GatewayState,
    scope: dict[str, Any],
    call: Call,
    sink: Sink,
    run: Callable[[Any], Awaitable[None]],  # given ``sink``, or a recording sink wrapping it
) -> None:
    """Run ``call`` into ``sink`` through ``run``, once per Idempotency-Key of its caller."""
    if scope["method"] != "POST" or not scope["path"].startswith(PATHS):
        await run(sink)
        return
    key = _presented(scope)
    if key is None:
        await run(sink)
        return
    store: Store = RedisStore(state.redis) if state.redis is not None else MEMORY
    digest = hashlib.sha256(key.encode()).hexdigest()[:40]
    slot = f"llmc:idem:{{{caller_of(call)}}}:{digest}"
    fingerprint = hashlib.sha256(
        scope["path"].encode() + b"\0" + orjson.dumps(call.body, option=orjson.OPT_SORT_KEYS)
    ).hexdigest()
    pending = _encode({"s": "pending", "h": fingerprint, "t": uuid.uuid4().hex})
    try:
        existing = await store.claim(slot, pending, PENDING_TTL)
    except Exception:
        logger.warning(
            "idempotency store unreachable: %s served without its Idempotency-Key", call.request_id
        )
        await run(sink)
        return
    if existing is not None:
        await _answer_duplicate(store, slot, existing, fingerprint, call, sink)
        return
    ttl = settings.GATEWAY_IDEMPOTENCY_TTL_SECONDS
    recorder = RecordingSink(sink, settings.GATEWAY_IDEMPOTENCY_MAX_BYTES)
    kept = False
    try:
        await run(recorder)
        if (
            200 <= call.status < 300
            and 200 <= recorder.status < 300
            and recorder.complete
            and not recorder.overflow
        ):
            meta = {"s": "done", "h": fingerprint, "st": recorder.status,
                    "hd": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in recorder.headers
                           if k.lower() in REPLAYED_HEADERS]}  # fmt: skip
            try:
                await store.replace(slot, pending, _encode(meta, b"".join(recorder.chunks)), ttl)
                kept = True
            except Exception:
                logger.warning("could not keep the response of %s for its Idempotency-Key", call.request_id)
    finally:
        if not kept:  # errors are never replayed: free the key for a retry (even when cancelled)
            state.spawn(_release(store, slot, pending))


async def _release(store: Store, slot: str, pending: bytes) -> None:
    try:
        await store.release(slot, pending)
    except Exception:
        logger.warning("could not release an idempotency key; it expires in %s s", PENDING_TTL)


async def _answer_duplicate(
    store: Store, slot: str, existing: bytes, fingerprint: str, call: Call, sink: Sink
) -> None:
    deadline = time.monotonic() + IN_FLIGHT_WAIT
    value: bytes | None = existing
    while True:
        if value is None:  # the first request failed and released the key meanwhile
            raise GatewayError(409, "A request with this Idempotency-Key failed just now; retry it.",
                               code="idempotency_in_progress", type="invalid_request_error",
                               headers={"retry-after": "1"})  # fmt: skip
        meta, body = _decode(value)
        if meta.get("h") != fingerprint:
            raise GatewayError(422, "This Idempotency-Key was already used with a different request body.",
                               code="idempotency_key_reused", param="Idempotency-Key")  # fmt: skip
        if meta.get("s") == "done":
            break
        if time.monotonic() >= deadline:
            raise GatewayError(409, "A request with this Idempotency-Key is still being processed.",
                               code="idempotency_in_progress", type="invalid_request_error",
                               headers={"retry-after": "1"})  # fmt: skip
        await asyncio.sleep(POLL_INTERVAL)
        try:
            value = await store.get(slot)
        except Exception:
            logger.warning("idempotency store unreachable while waiting for %s", call.request_id)
            deadline = 0.0
    headers = [(str(k).encode("latin-1"), str(v).encode("latin-1")) for k, v in meta.get("hd") or ()]
    headers += [(b"x-request-id", call.request_id.encode()), (b"idempotent-replayed", b"true")]
    await sink.start(int(meta["st"]), headers)
    await sink.send(body, more=False)
