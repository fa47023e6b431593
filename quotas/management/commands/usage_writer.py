"""`manage.py usage_writer`: drain the Redis usage buffer into the ledger until stopped.

Run with ``USAGE_WEB_DRAIN=false`` on the web processes: they then only append to the buffer, and
writing the ledger (batches of rows and their rollups) costs them nothing. Several writers may run:
they take turns under the buffer's lock. SIGTERM or Ctrl-C stops after a last full drain.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from quotas.buffer import Flusher, RedisBuffer

logger = logging.getLogger("quotas.usage_writer")
REPORT_SECONDS = 60.0


class Command(BaseCommand):
    help = "Write the usage events that web processes leave in Redis to the ledger, continuously."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--interval", type=float, default=None, help="seconds between drains (USAGE_FLUSH_INTERVAL)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.REDIS_URL:
            raise CommandError("usage_writer drains the Redis usage buffer: set REDIS_URL.")
        interval = options["interval"] if options["interval"] is not None else settings.USAGE_FLUSH_INTERVAL
        asyncio.run(self._run(max(0.01, interval)))

    async def _run(self, interval: float) -> None:
        import redis.asyncio as aioredis

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        client = aioredis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
        flusher = Flusher(RedisBuffer(client), interval)
        self.stdout.write(f"usage writer: draining the Redis usage buffer every {interval:g} s")
        flusher.start()
        try:
            reported = 0
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), REPORT_SECONDS)
                except TimeoutError:
                    logger.info("usage writer: %d events written in the last %.0f s",
                                flusher.written - reported, REPORT_SECONDS)  # fmt: skip
                    reported = flusher.written
            await flusher.stop()  # the current drain, then what arrived since
        finally:
            await client.aclose()
        self.stdout.write(f"usage writer stopped: {flusher.written} events written")
