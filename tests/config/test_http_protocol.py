"""The web server's HTTP protocol sends a response's head in the same write as the body's first bytes."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import pytest

from config.http import HeadHoldingTransport, HttpToolsProtocol
from tests.support.live import LiveServer


class Recording:
    """A transport that records what is written to it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8000) if name == "sockname" else default


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


async def test_a_head_and_the_body_written_in_the_same_step_go_in_one_write() -> None:
    inner = Recording()
    transport = HeadHoldingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(HEAD)
    assert inner.writes == []
    transport.write(b"{}")
    assert inner.writes == [HEAD + b"{}"]
    await asyncio.sleep(0)  # the flush scheduled for the head finds nothing left
    assert inner.writes == [HEAD + b"{}"]


async def test_a_head_whose_body_is_not_ready_leaves_at_the_end_of_the_step() -> None:
    inner = Recording()
    transport = HeadHoldingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(HEAD)
    await asyncio.sleep(0)
    assert inner.writes == [HEAD]  # a stream's head does not wait for its first chunk
    transport.write(b"2\r\n{}\r\n")
    assert inner.writes == [HEAD, b"2\r\n{}\r\n"]


async def test_only_heads_are_held_and_close_and_abort_keep_their_meaning() -> None:
    inner = Recording()
    transport = HeadHoldingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"data: chunk\n\n")
    assert inner.writes == [b"data: chunk\n\n"]
    transport.write(HEAD)
    transport.close()  # a held head is sent before the connection closes
    assert inner.writes == [b"data: chunk\n\n", HEAD] and inner.closed
    other = Recording()
    transport = HeadHoldingTransport(other, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(HEAD)
    transport.abort()
    await asyncio.sleep(0)
    assert other.writes == [] and other.aborted
    assert transport.get_extra_info("sockname") == ("127.0.0.1", 8000)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/stream":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        for part in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
        return
    body = scope["path"].encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def server() -> Any:
    with LiveServer(app) as live:
        yield live


def test_the_server_answers_whole_responses_and_streams_on_one_kept_alive_connection(
    server: LiveServer,
) -> None:
    with httpx.Client(base_url=server.url) as client:
        for path in ("/a", "/bb", "/ccc"):
            assert client.get(path).text == path
        with client.stream("GET", "/stream") as response:
            assert response.headers["transfer-encoding"] == "chunked"
            assert b"".join(response.iter_bytes()) == b"one two three"
        assert client.get("/after").text == "/after"


def test_the_servers_we_run_use_this_protocol(server: LiveServer) -> None:
    from config.management.commands.serve import server_command

    command = server_command("uvicorn", "127.0.0.1", 8000, 1)
    assert command[command.index("--http") + 1] == "config.http:HttpToolsProtocol"
    assert server._server is not None and server._server.config.http_protocol_class is HttpToolsProtocol
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /raw HTTP/1.1\r\nhost: x\r\n\r\n")
        data = b""
        while not data.endswith(b"/raw"):
            data += sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 4\r\n" in data
