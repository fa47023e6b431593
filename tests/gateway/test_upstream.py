"""The proxy's provider connections (gateway.upstream), on aiohttp directly and on httpx's own pool.

A real HTTP server on loopback (aiohttp.web) answers; both kinds must send the same request, give
the same answer and raise the same httpx errors, which the proxy turns into its 502s and 504s.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from gateway.proxy import transport_error
from gateway.upstream import AiohttpUpstream, HttpxUpstream, Upstream
from tests.support.processes import free_port

KINDS = ["aiohttp", "httpcore"]


@pytest.fixture(params=KINDS)
async def upstream(request: pytest.FixtureRequest) -> AsyncIterator[Upstream]:
    made: Upstream = (
        AiohttpUpstream(max_connections=8)
        if request.param == "aiohttp"
        else HttpxUpstream(httpx.AsyncHTTPTransport(trust_env=False))
    )
    yield made
    await made.aclose()


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def echo(request: web.Request) -> web.StreamResponse:
        seen.append({"headers": dict(request.headers), "body": await request.read(), "path": request.path_qs})
        response = web.StreamResponse(status=201, headers={"X-Upstream": "yes", "Content-Type": "text/plain"})
        response.set_cookie("session", "secret-of-another-user")
        await response.prepare(request)
        for part in (b"one ", b"two ", b"three"):
            await response.write(part)
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    async def stall(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_post("/stall", stall)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    # By name: aiohttp keeps no cookies for IP addresses anyway, so only a name shows a jar at work.
    yield f"http://localhost:{port}", seen
    await runner.cleanup()


async def test_a_call_sends_what_the_adapter_built_and_reads_the_answer_as_it_comes(
    upstream: Upstream, server: tuple[str, list[dict[str, Any]]]
) -> None:
    base, seen = server
    headers = {"authorization": "Bearer sk-provider", "accept-encoding": "identity", "user-agent": "gw"}
    for _ in range(2):
        answer = await upstream.send("POST", f"{base}/echo?api-version=2024-10-21", headers, b'{"a":1}',
                                     read_timeout=5, connect_timeout=5)  # fmt: skip
        assert answer.status_code == 201
        assert answer.headers.get("x-upstream") == "yes" and answer.headers.get("X-UPSTREAM") == "yes"
        chunks = [chunk async for chunk in answer.aiter_raw()]
        await answer.aclose()
        assert b"".join(chunks) == b"one two three"
    first, second = seen
    assert first["path"] == "/echo?api-version=2024-10-21"
    assert first["body"] == b'{"a":1}'
    assert first["headers"]["Authorization"] == "Bearer sk-provider"
    assert first["headers"]["User-Agent"] == "gw"
    # Nothing the adapter did not set: no content type, no compression, and above all no cookie
    # that the provider handed to an earlier request (of another user, perhaps).
    assert "Content-Type" not in first["headers"]
    assert first["headers"]["Accept-Encoding"] == "identity"
    assert "Cookie" not in second["headers"]


async def test_a_refused_connection_is_a_502_and_a_stalled_answer_a_504(
    upstream: Upstream, server: tuple[str, list[dict[str, Any]]]
) -> None:
    base, _ = server
    with pytest.raises(httpx.TransportError) as refused:
        await upstream.send("POST", f"http://127.0.0.1:{free_port()}/v1", {}, b"{}", read_timeout=5,
                            connect_timeout=2)  # fmt: skip
    assert transport_error(refused.value).status == 502
    with pytest.raises(httpx.TransportError) as stalled:
        await upstream.send("POST", f"{base}/stall", {}, b"{}", read_timeout=0.3, connect_timeout=2)
    assert transport_error(stalled.value).status == 504
