"""Concurrent quota script calls share one pipeline, and each caller still gets its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from quotas.scripts import batcher_for
from tests.support.processes import free_port

pytestmark = pytest.mark.redis

ECHO = "return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}"
FAILS_ON_BOOM = "if ARGV[1] == 'boom' then return redis.error_reply('boom refused') end return ARGV[1]"


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    client = aioredis.Redis.from_url(settings.REDIS_URL)
    await client.delete(*[f"test:scripts:{i}" for i in range(40)])
    yield client
    await client.delete(*[f"test:scripts:{i}" for i in range(40)])
    await client.aclose()


async def test_concurrent_calls_go_in_one_pipeline_each_with_its_own_result(client: Any) -> None:
    batcher = batcher_for(client)
    results = await asyncio.gather(
        *(batcher.call(ECHO, [f"test:scripts:{i}"], [f"arg-{i}"]) for i in range(40))
    )
    assert results == [[f"test:scripts:{i}".encode(), f"arg-{i}".encode(), 1] for i in range(40)]
    # The first went at once, the 39 that came while it was on the wire went together.
    assert (batcher.batches, batcher.calls) == (2, 40)
    assert [int(v) for v in await client.mget([f"test:scripts:{i}" for i in range(40)])] == [1] * 40


async def test_a_call_alone_is_sent_at_once(client: Any) -> None:
    batcher = batcher_for(client)
    for i in range(3):
        assert await batcher.call(ECHO, ["test:scripts:0"], ["x"]) == [b"test:scripts:0", b"x", i + 1]
    assert (batcher.batches, batcher.calls) == (3, 3)
    assert not batcher.busy


async def test_scripts_flushed_from_the_server_are_loaded_again(client: Any) -> None:
    batcher = batcher_for(client)
    assert await batcher.call(ECHO, ["test:scripts:1"], ["a"]) == [b"test:scripts:1", b"a", 1]
    await client.script_flush()
    results = await asyncio.gather(*(batcher.call(ECHO, ["test:scripts:1"], [str(i)]) for i in range(5)))
    assert sorted(r[2] for r in results) == [2, 3, 4, 5, 6]
    await client.script_flush()
    assert await batcher.call(ECHO, ["test:scripts:1"], ["b"]) == [b"test:scripts:1", b"b", 7]


async def test_an_error_of_one_script_is_raised_to_its_caller_only(client: Any) -> None:
    batcher = batcher_for(client)
    results = await asyncio.gather(
        *(batcher.call(FAILS_ON_BOOM, ["test:scripts:2"], [arg]) for arg in ("a", "b", "boom", "c")),
        return_exceptions=True,
    )
    assert results[0] == b"a" and results[1] == b"b" and results[3] == b"c"
    assert isinstance(results[2], ResponseError) and "boom refused" in str(results[2])
    assert not batcher.busy


async def test_a_caller_that_goes_away_leaves_the_others_their_answers(client: Any) -> None:
    batcher = batcher_for(client)
    calls = [asyncio.ensure_future(batcher.call(ECHO, [f"test:scripts:{i}"], ["v"])) for i in range(6)]
    await asyncio.sleep(0)
    calls[3].cancel()
    results: list[Any] = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[3], asyncio.CancelledError)
    assert [r[2] for i, r in enumerate(results) if i != 3] == [1] * 5
    assert not batcher.busy
    # Its call was still waiting to leave: it was never run (an admission would have reserved).
    assert await client.get("test:scripts:3") is None
    assert batcher.calls == 5


async def test_an_unreachable_server_fails_every_call_and_nothing_hangs() -> None:
    client = aioredis.Redis(port=free_port(), socket_connect_timeout=1)
    batcher = batcher_for(client)
    results = await asyncio.wait_for(
        asyncio.gather(*(batcher.call(ECHO, ["k"], ["v"]) for _ in range(5)), return_exceptions=True), 10
    )
    assert all(isinstance(r, RedisConnectionError) for r in results), results
    assert not batcher.busy
    await client.aclose()


async def test_each_event_loop_has_its_own_batcher(client: Any) -> None:
    first = batcher_for(client)
    assert batcher_for(client) is first

    def elsewhere() -> Any:
        async def get() -> Any:
            return batcher_for(client)

        return asyncio.run(get())

    other = await asyncio.to_thread(elsewhere)
    assert other is not first and other.loop is not first.loop
