"""Separate "hosts" on this machine: Linux network namespaces joined to the root namespace by veth.

Each :class:`Host` is a network namespace with a veth pair, ``10.231.X.(4i+1)`` on the root side
and ``10.231.X.(4i+2)`` inside, and a route to the rest of ``10.231.X.0/24`` through its own link.
A process started with :meth:`Host.command` sees only its loopback and that link, as a process on
another machine would see its network card. The shared PostgreSQL and Redis listen on 127.0.0.1
only, so :class:`TcpRelay` listens on the root-side addresses and forwards to them.

Creating namespaces needs CAP_SYS_ADMIN (root); :func:`unavailable` says why it cannot be done.
Names carry a random token per run, and :func:`hosts` deletes what it made even when a test fails.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


def unavailable() -> str | None:
    """Why network namespaces cannot be made here (None when they can): tries one and deletes it."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    name = f"llmc-probe-{secrets.token_hex(4)}"
    made = _ip("netns", "add", name, check=False)
    if made.returncode != 0:
        return f"`ip netns add` is not permitted here: {made.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


@dataclass(frozen=True)
class Host:
    """One namespace: its name and the two ends of its veth link."""

    name: str
    address: str  # inside the namespace
    gateway_address: str  # the root namespace's end of the link

    def command(self, cmd: list[str]) -> list[str]:
        """``cmd`` run inside this namespace (``ip netns exec`` execs it: same pid, same signals)."""
        return ["ip", "netns", "exec", self.name, *cmd]


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.231.X.0/24 that no interface of the root namespace uses."""
    used = _ip("-4", "-o", "addr", "show").stdout + _ip("-4", "route", "show").stdout
    candidates = [x for x in range(256) if f"10.231.{x}." not in used]
    if not candidates:
        raise RuntimeError("no free 10.231.X.0/24 for test namespaces")
    return ipaddress.IPv4Network(f"10.231.{random.choice(candidates)}.0/24")


@contextmanager
def hosts(count: int) -> Iterator[list[Host]]:
    """``count`` namespaces, each with its veth link up; all deleted on exit, even after a failure."""
    token = secrets.token_hex(3)
    subnet = _free_subnet()
    made: list[tuple[str, str]] = []  # (namespace, root-side veth)
    try:
        result = []
        for i in range(count):
            name, outer, inner = f"llmc-{token}-{i}", f"vh{token}{i}", f"vn{token}{i}"
            base = subnet.network_address + 4 * i
            host = Host(name=name, address=str(base + 2), gateway_address=str(base + 1))
            _ip("netns", "add", name)
            made.append((name, outer))
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", name)
            _ip("addr", "add", f"{host.gateway_address}/30", "dev", outer)
            _ip("link", "set", outer, "up")
            inside = ("-n", name)
            _ip(*inside, "link", "set", "lo", "up")
            _ip(*inside, "addr", "add", f"{host.address}/30", "dev", inner)
            _ip(*inside, "link", "set", inner, "up")
            _ip(*inside, "route", "add", str(subnet), "via", host.gateway_address)
            result.append(host)
        yield result
    finally:
        for name, outer in reversed(made):
            _ip("netns", "del", name, check=False)  # takes its veth end, and so the pair, with it
            _ip("link", "del", outer, check=False)  # in case the pair outlived the namespace


class TcpRelay:
    """TCP forwarders on an asyncio loop in a daemon thread: ``forward(bind, target)`` → port.

    Bytes are copied both ways as they arrive; a half-close is passed on, so protocols that end
    with a shutdown (PostgreSQL's Terminate, Redis QUIT) behave as on a direct connection.
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.Server] = []
        self._handlers: set[asyncio.Task[None]] = set()  # strong refs: asyncio keeps only weak ones
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-relay", daemon=True)
        self._thread.start()

    def forward(self, bind_host: str, target_host: str, target_port: int) -> int:
        """Listen on ``bind_host`` (a free port) and relay each connection to the target; the port."""

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._handlers.add(task)
                task.add_done_callback(self._handlers.discard)
            try:
                up_reader, up_writer = await asyncio.open_connection(target_host, target_port)
            except OSError:
                writer.close()
                return
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                writer.close()
                up_writer.close()

        async def listen() -> int:
            server = await asyncio.start_server(handle, bind_host, 0)
            self._servers.append(server)
            return int(server.sockets[0].getsockname()[1])

        return asyncio.run_coroutine_threadsafe(listen(), self._loop).result(timeout=10)

    def close(self) -> None:
        """Stop listening, drop the relayed connections, and end the thread."""

        async def shutdown() -> None:
            for server in self._servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> TcpRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()
