"""The quota scripts on Redis, concurrent calls sent together.

Every proxied request runs two scripts (admission, then settlement). Through redis-py's client each
call checks a connection out of the pool, packs, sends, parses and checks it back in: about 60 µs
of the event loop, the largest single cost of a request after the upstream call. Here calls that
arrive while an exchange is on the wire wait for it and then go together (one write, one read of
all the replies): at concurrency 1 a call is sent at once, under load the cost is shared. Each
script still runs atomically on the server, so admission and settlement mean what they meant;
only the round trips are shared. Admissions and settlements are separate lanes, each with a
connection of its own, so an admission never waits behind a settlement.

The gateway's connections also pack their commands with hiredis's C packer, as redis-py's sync
client does (`HiredisPacking`): redis-py's asyncio client packs in Python, 25 µs for one admission
call against 4.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

MAX_BATCH = 64  # calls per pipeline; more wait for the next one


Call = tuple[str, str, list[Any], list[Any]]  # script source, its SHA1, keys, args


class ScriptBatcher:
    """Runs scripts on ``client``, concurrent calls in one pipeline. One per client, lane and event loop.

    A lane has at most one exchange on the wire, so it keeps one connection of the client's pool
    for itself (the pool closes it with the others) and talks on it directly: no pool checkout,
    retry wrapper or pipeline object per call, and one deadline per exchange (the pool's socket
    timeout) instead of one per write and per read, the write's a task of its own on Python 3.11.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.loop = asyncio.get_running_loop()
        self.queue: list[tuple[str, str, list[Any], list[Any], asyncio.Future[Any]]] = []
        self.busy = False  # a call or a batch is on the wire
        self.sending: asyncio.Task[None] | None = None  # holds the sender task: the loop keeps weak refs
        self._shas: dict[str, str] = {}
        self.connection: Any = None
        self.timeout: float | None = None
        self.batches = 0  # exchanges sent (tests and benchmarks read them)
        self.calls = 0

    async def call(self, source: str, keys: list[Any], args: list[Any]) -> Any:
        """The result of script ``source`` run with ``keys`` and ``args`` (its error, raised)."""
        sha = self._shas.get(source)
        if sha is None:
            sha = self._shas[source] = hashlib.sha1(source.encode()).hexdigest()  # Redis's script id
        if not self.busy:  # nothing on the wire: this call goes now, from its own task
            self.busy = True
            self.batches += 1
            self.calls += 1
            try:
                (result,) = await self._run([(source, sha, keys, args)])
            finally:
                if self.queue:  # what arrived meanwhile goes next, together
                    self.sending = self.loop.create_task(self._send_all())
                else:
                    self.busy = False
            if isinstance(result, Exception):
                raise result
            return result
        future: asyncio.Future[Any] = self.loop.create_future()
        self.queue.append((source, sha, keys, args, future))
        return await future

    async def _send_all(self) -> None:
        try:
            while self.queue:
                batch, self.queue = self.queue[:MAX_BATCH], self.queue[MAX_BATCH:]
                await self._send(batch)
        except asyncio.CancelledError:  # the loop is closing: nobody may be left waiting
            for *_, future in self.queue:
                future.cancel()
            self.queue = []
            raise
        finally:
            self.sending = None
            self.busy = False

    async def _send(self, batch: list[tuple[str, str, list[Any], list[Any], asyncio.Future[Any]]]) -> None:
        batch = [call for call in batch if not call[4].done()]  # a caller gone before it left: not run
        if not batch:
            return
        self.batches += 1
        self.calls += len(batch)
        try:
            results = await self._run([call[:4] for call in batch])
        except asyncio.CancelledError:
            for *_, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # the connection: every call of the batch failed with it
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done():  # its caller went away
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _run(self, calls: list[Call]) -> list[Any]:
        """Each call's result or error reply; scripts Redis lost (restart, SCRIPT FLUSH) are loaded again."""
        commands = [("EVALSHA", sha, len(keys), *keys, *args) for _, sha, keys, args in calls]
        results = await self._exchange(commands)
        lost = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if lost:
            sources = list(dict.fromkeys(calls[i][0] for i in lost))
            again = await self._exchange([("SCRIPT", "LOAD", source) for source in sources]
                                         + [commands[i] for i in lost])  # fmt: skip
            for i, result in zip(lost, again[len(sources) :], strict=True):
                results[i] = result
        return results

    async def _exchange(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one write and read their replies in order (an error reply is returned).

        A connection found broken is replaced once, as redis-py's client retries.
        """
        for attempt in (1, 2):
            connection = await self._connection()
            try:
                async with asyncio.timeout(self.timeout):
                    await connection.send_packed_command(
                        connection.pack_commands(commands), check_health=False
                    )
                    results: list[Any] = []
                    for _ in commands:
                        try:
                            results.append(await connection.read_response())
                        except ResponseError as exc:
                            results.append(exc)
                    return results
            except TimeoutError:  # redis-py dropped the connection when the deadline cancelled it
                await connection.disconnect(nowait=True)
                raise RedisTimeoutError(f"Redis did not answer within {self.timeout} s") from None
            except RedisConnectionError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _connection(self) -> Any:
        if self.connection is None:
            connection = await self.client.connection_pool.get_connection()
            # The exchange has its deadline: the connection's own per-read/write timeouts would double it.
            self.timeout, connection.socket_timeout = connection.socket_timeout, None
            self.connection = connection
        return self.connection


def batcher_for(client: Any, lane: str = "") -> ScriptBatcher:
    """The batcher of ``client`` and ``lane`` on the running loop (another loop gets its own).

    Lanes are independent: a call never waits for another lane's batch to come back. The gateway
    sends admissions and settlements on two lanes, so a request's admission does not wait behind
    the previous request's settlement (at concurrency 1 it always would).
    """
    loop = asyncio.get_running_loop()
    batchers: dict[str, ScriptBatcher] = client.__dict__.setdefault("_llmc_batchers", {})
    batcher = batchers.get(lane)
    if batcher is None or batcher.loop is not loop:
        batcher = batchers[lane] = ScriptBatcher(client)
    return batcher


class HiredisPacking:
    """A redis-py asyncio connection mixin: commands packed by hiredis, byte for byte as redis-py packs them."""

    def pack_command(self, *args: Any) -> list[bytes]:
        # As redis-py's sync HiredisRespSerializer: a command name may hold its subcommand.
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            pass
        args = tuple(bytes(a) if isinstance(a, (bytearray, memoryview)) else a for a in args)
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:  # what redis-py's own encoder refuses too (None, bool, objects)
            raise DataError(str(exc)) from None


def use_hiredis_packing(pool: Any) -> None:
    """Make the connections ``pool`` opens pack with hiredis (TCP, TLS or Unix socket alike)."""
    base = pool.connection_class
    if not issubclass(base, HiredisPacking):
        pool.connection_class = type(f"Hiredis{base.__name__}", (HiredisPacking, base), {})
