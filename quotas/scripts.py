"""The quota scripts on Redis, concurrent calls sent together.

Every proxied request runs two scripts (admission, then settlement). Through redis-py each call
checks a connection out of the pool, packs, sends, parses and checks it back in: about 60 µs of
the event loop, the largest single cost of a request after the upstream call. Calls that arrive
while a batch is on the wire wait for it and then go together in one pipeline (one connection,
one write, one read): at concurrency 1 a call is sent at once as before, under load the cost is
shared. Each script still runs atomically on the server, so admission and settlement mean what
they meant; only the round trips are shared.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from redis.exceptions import NoScriptError

MAX_BATCH = 64  # calls per pipeline; more wait for the next one


class ScriptBatcher:
    """Runs scripts on ``client``, concurrent calls in one pipeline. One per client and event loop."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.loop = asyncio.get_running_loop()
        self.queue: list[tuple[str, str, list[Any], list[Any], asyncio.Future[Any]]] = []
        self.busy = False  # a call or a batch is on the wire
        self.sending: asyncio.Task[None] | None = None  # holds the sender task: the loop keeps weak refs
        self._shas: dict[str, str] = {}
        self.batches = 0  # pipelines sent (tests and benchmarks read them)
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
                return await self._one(source, sha, keys, args)
            finally:
                if self.queue:  # what arrived meanwhile goes next, together
                    self.sending = self.loop.create_task(self._send_all())
                else:
                    self.busy = False
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
            if len(batch) == 1:
                source, sha, keys, args, future = batch[0]
                results: list[Any] = [await self._one(source, sha, keys, args)]
            else:
                pipe = self.client.pipeline(transaction=False)
                for _, sha, keys, args, _ in batch:
                    pipe.evalsha(sha, len(keys), *keys, *args)
                results = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:
            for *_, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # the connection: every call of the batch failed with it
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (source, sha, keys, args, future), result in zip(batch, results, strict=True):
            if isinstance(result, NoScriptError):  # Redis restarted or flushed its scripts
                try:
                    result = await self._one(source, sha, keys, args)
                except Exception as exc:
                    result = exc
            if future.done():  # its caller went away
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _one(self, source: str, sha: str, keys: list[Any], args: list[Any]) -> Any:
        try:
            return await self.client.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.client.script_load(source)
            return await self.client.evalsha(sha, len(keys), *keys, *args)


def batcher_for(client: Any) -> ScriptBatcher:
    """The batcher of ``client`` on the running loop (a client used from another loop gets its own)."""
    loop = asyncio.get_running_loop()
    batcher: ScriptBatcher | None = client.__dict__.get("_llmc_batcher")
    if batcher is None or batcher.loop is not loop:
        batcher = client.__dict__["_llmc_batcher"] = ScriptBatcher(client)
    return batcher
