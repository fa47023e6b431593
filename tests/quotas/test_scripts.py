"""Concurrent quota script calls share one pipeline, and each caller still gets its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from quotas.scripts import HiredisPacking, batcher_for, use_hiredis_packing
from tests.support.processes import free_port

pytestmark = pytest.mark.redis

ECHO = "return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}"
FAILS_ON_BOOM = "if ARGV[1] == 'boom' then return redis.error_reply('boom refused') end return ARGV[1]"


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    client = aioredis.Redis.from_url(settings.REDIS_URL)
    use_hiredis_packing(client.connection_pool)  # as the gateway's client
    await client.delete(*[f"test:scripts:{i}" for i in range(40)])
    yield client
    await client.delete(*[f"test:scripts:{i}" for i in range(40)])
    await client.aclose(close_connection_pool=True)


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


async def test_a_lane_talks_on_one_connection_of_the_pool_and_replaces_it_when_broken() -> None:
    client = aioredis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
    await client.delete("test:scripts:4")
    batcher = batcher_for(client, "admit")
    await batcher.call(ECHO, ["test:scripts:4"], ["a"])
    lane = batcher.connection
    assert lane in client.connection_pool._in_use_connections  # the pool closes it with the rest
    await asyncio.gather(*(batcher.call(ECHO, ["test:scripts:4"], [str(i)]) for i in range(10)))
    assert batcher.connection is lane and batcher.timeout == 2 and lane.socket_timeout is None
    # The server drops it (a restart, an idle timeout, CLIENT KILL): the next call reconnects once.
    killed = await client.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    assert (await batcher.call(ECHO, ["test:scripts:4"], ["b"]))[2] == 12
    await client.delete("test:scripts:4", "test:scripts:5")
    await client.aclose(close_connection_pool=True)
    assert not lane.is_connected


async def test_a_lane_whose_exchange_outlives_the_socket_timeout_fails_and_starts_afresh() -> None:
    client = aioredis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.05)
    await client.delete("test:scripts:5")
    batcher = batcher_for(client, "admit")
    spin = "local t = redis.call('TIME') repeat local n = redis.call('TIME') until (n[1] - t[1]) * 1e6 + (n[2] - t[2]) > 300000 return 1"
    with pytest.raises(RedisTimeoutError):
        await batcher.call(spin, [], [])
    assert not batcher.connection.is_connected and not batcher.busy  # its reply will never be read
    await asyncio.sleep(0.4)  # the script finishes on the server
    assert await batcher.call(ECHO, ["test:scripts:5"], ["a"]) == [b"test:scripts:5", b"a", 1]
    await client.delete("test:scripts:5")
    await client.aclose(close_connection_pool=True)


async def test_each_event_loop_has_its_own_batcher(client: Any) -> None:
    first = batcher_for(client)
    assert batcher_for(client) is first

    def elsewhere() -> Any:
        async def get() -> Any:
            return batcher_for(client)

        return asyncio.run(get())

    other = await asyncio.to_thread(elsewhere)
    assert other is not first and other.loop is not first.loop


async def test_a_lane_never_waits_for_another_lanes_batch(client: Any) -> None:
    settle, admit = batcher_for(client, "settle"), batcher_for(client, "admit")
    assert settle is not admit and batcher_for(client, "admit") is admit
    first = asyncio.ensure_future(settle.call(ECHO, ["test:scripts:2"], ["s1"]))
    await asyncio.sleep(0)
    assert settle.busy
    second = asyncio.ensure_future(admit.call(ECHO, ["test:scripts:3"], ["a"]))
    third = asyncio.ensure_future(settle.call(ECHO, ["test:scripts:2"], ["s2"]))
    await asyncio.sleep(0)
    assert admit.busy and not admit.queue  # on the wire at once, beside the settlement
    assert len(settle.queue) == 1  # the same lane waits its turn
    assert await asyncio.gather(first, second, third) == [
        [b"test:scripts:2", b"s1", 1], [b"test:scripts:3", b"a", 1], [b"test:scripts:2", b"s2", 2]
    ]  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        (
            "EVALSHA",
            "a" * 40,
            2,
            "q:{u1}:1:1764806400",
            "quotas:{ready}",
            "10000.0",
            1.5,
            0.1 + 0.2,
            90000,
            -3,
        ),
        (b"RPUSH", "usage:events", b'{"request_id":"r"}', "caf\u00e9 \u2603", 1e20),
        ("SCRIPT LOAD", "return 1"),
        (b"CLIENT SETNAME", b"x"),
        ("SET", memoryview(b"k"), bytearray(b"v" * 10_000), b""),
    ],
)
def test_hiredis_packs_commands_byte_for_byte_as_redis_py(args: tuple[Any, ...]) -> None:
    ours = type("Packing", (HiredisPacking, Connection), {})()
    assert b"".join(ours.pack_command(*args)) == b"".join(Connection().pack_command(*args))


@pytest.mark.parametrize("bad", [None, True, object()])
def test_hiredis_packing_refuses_what_redis_py_refuses(bad: Any) -> None:
    ours = type("Packing", (HiredisPacking, Connection), {})()
    with pytest.raises(DataError):
        Connection().pack_command("SET", "k", bad)
    with pytest.raises(DataError):
        ours.pack_command("SET", "k", bad)


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("redis://h:1/0", Connection),
        ("rediss://h:1/0", SSLConnection),
        ("unix:///tmp/r.sock", UnixDomainSocketConnection),
    ],
)
def test_every_kind_of_gateway_connection_packs_with_hiredis(url: str, base: type) -> None:
    pool = aioredis.BlockingConnectionPool.from_url(url)
    use_hiredis_packing(pool)
    use_hiredis_packing(pool)  # twice is once
    assert issubclass(pool.connection_class, HiredisPacking)
    assert pool.connection_class.__mro__[1:3] == (HiredisPacking, base)
    assert isinstance(pool.make_connection(), base)
