"""Private PostgreSQL and Redis servers on free ports, so a test may stop and restart them.

The machine's shared servers are never touched: each of these lives in a temporary directory of
its own and is gone when the test ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.support.processes import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _as_postgres(cmd: list[str]) -> list[str]:
    """``cmd`` run as the `postgres` OS user when we are root (initdb and postgres refuse root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


class PrivatePostgres:
    """A PostgreSQL cluster of this test's own: initdb into a temporary directory, trust auth."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="llmc-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--no-sync", "--no-instructions")  # fmt: skip

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str) -> None:
        subprocess.run(_as_postgres(list(cmd)), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       cwd=self.root, timeout=60)  # fmt: skip

    def start(self, cpus: str | None = None) -> None:
        """Start (again) on the same port and data directory; returns once it accepts connections.

        ``cpus`` (a taskset list) pins the server and every backend it forks to those cores.
        """
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
                   "-c fsync=off -c max_connections=50")  # fmt: skip
        pin = ["taskset", "-c", cpus] if cpus else []
        self._run(*pin, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "-t", "30", "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m fast`` (clients disconnected, clean shutdown) or ``immediate`` (a crash)."""
        if (self.data / "postmaster.pid").exists():
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """A redis-server of this test's own, so it can be stopped without harming anyone else.

    Memory-only by default (what a restart of a cache-style Redis loses); ``appendonly=True`` runs it
    as production should (AOF, ``appendfsync everysec``) in a temporary directory.
    """

    def __init__(self, appendonly: bool = False) -> None:
        self.port = free_port()
        # Only an AOF server writes anything; a memory-only one needs no directory (nothing to clean up).
        self.dir = Path(tempfile.mkdtemp(prefix="llmc-redis-")) if appendonly else None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (again) on the same port and directory; returns once it answers PING."""
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed (.ci/run installs it)"
        aof = ["--appendonly", "no"]
        if self.dir is not None:
            aof = ["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.dir)]
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *aof],
                                     stdout=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except (redis.ConnectionError, redis.BusyLoadingError):
                assert self.proc.poll() is None, "private redis exited"
                assert time.monotonic() < deadline, "private redis did not start"
                time.sleep(0.05)

    def stop(self, graceful: bool = False) -> None:
        """SIGKILL (a crash), or SIGTERM (a clean shutdown: the AOF is written out first)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.proc = None

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
