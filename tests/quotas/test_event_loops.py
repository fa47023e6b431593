"""Per-process asyncio state is per event loop.

The in-process test client and every sync caller run async views in a transient loop
(``asyncio.run`` via asgiref). An asyncio.Lock shared by all loops belongs to the first loop that
waits on it; a loop that ends while holding it left every later admission that needed a counter
rebuild waiting forever (a hung CI run), or failing with "bound to a different event loop".
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest


def test_a_loop_that_ended_holding_the_rebuild_lock_blocks_no_other(monkeypatch: Any) -> None:
    """The counters' rebuild lock is per loop: a loop abandoned mid-rebuild never hangs another."""
    from quotas import services

    release = threading.Event()
    calls: list[int] = []

    def rebuild() -> int:
        calls.append(1)
        if len(calls) == 1:
            release.wait(10)
        return 0

    monkeypatch.setattr(services, "counters_rebuild", rebuild)
    abandoned = asyncio.new_event_loop()
    abandoned.create_task(services._rebuild_once())
    abandoned.run_until_complete(asyncio.sleep(0.05))  # the task holds the lock, rebuilding
    abandoned.close()
    release.set()
    done: list[bool] = []
    thread = threading.Thread(
        target=lambda: done.append(asyncio.run(asyncio.wait_for(services._rebuild_once(), 5)) is None),
        daemon=True,
    )
    thread.start()
    thread.join(10)
    assert done == [True] and len(calls) == 2


@pytest.mark.redis
def test_a_burst_larger_than_the_redis_pool_waits_for_connections_instead_of_failing(settings: Any) -> None:
    """redis-py's default pool raises MaxConnectionsError past 100: at c=64 admissions failed closed."""
    from gateway.state import GatewayState

    settings.GATEWAY_REDIS_MAX_CONNECTIONS = 3

    async def burst() -> list[Any]:
        state = GatewayState()
        try:
            return await asyncio.gather(*(state.redis.ping() for _ in range(150)), return_exceptions=True)
        finally:
            await state.close()

    assert asyncio.run(burst()) == [True] * 150


def test_a_background_loop_whose_cancel_a_library_swallowed_still_ends(settings: Any) -> None:
    """asyncio.run cancels the tasks left when its coroutine ends and waits for them. redis-py can
    turn that cancel into an error the usage flusher (and the config poller) log and go on from:
    they used to loop on, and the transient loop never closed (a hung CI run). They stop now."""
    from quotas.buffer import Flusher

    settings.USAGE_FLUSH_INTERVAL = 0.01

    class CancelBecomesError:
        flushes = 0

        async def flush(self) -> int:
            self.flushes += 1
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                raise ConnectionError("Connection closed by server.") from None
            return 0

    buffer = CancelBecomesError()

    async def request() -> None:  # what a view does: the flusher starts, the view ends
        Flusher(buffer).start()  # type: ignore[arg-type]
        while not buffer.flushes:
            await asyncio.sleep(0.01)

    runner = threading.Thread(target=asyncio.run, args=(request(),), daemon=True)
    runner.start()
    runner.join(10)
    assert not runner.is_alive(), "the event loop never closed: the flusher went on after its cancel"
    assert buffer.flushes == 1
