"""The floor: the least any Python proxy adds on this machine, measured next to the gateway.

A plain ASGI callable that relays ``POST /v1/...`` to the upstream through one aiohttp session and
streams the answer back as it comes: no authentication, quotas, routing, ledger or parsing. It is
served exactly as the gateway is (the production uvicorn command line of ``manage.py serve``,
pinned to the gateway's core), so what it adds over "direct" is the cost of the extra hop itself:
one more process, the loopback connections, and each side of the hop waking up on its core. What
the gateway adds over the floor is the gateway's own work. ``bench/gateway.py --peers floor`` (or
``all``) starts it as ``python -m uvicorn bench.floor:app`` with ``FLOOR_UPSTREAM`` set to the fake's
base URL; it is the stack DESIGN.md measured as "plain ASGI callable + aiohttp".
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# Relayed both ways; the rest (hop-by-hop headers, lengths) is the server's and the client's business.
REQUEST_HEADERS = (b"authorization", b"content-type")
RESPONSE_HEADERS = ("content-type",)

_session: aiohttp.ClientSession | None = None


def session() -> aiohttp.ClientSession:
    """One pooled session per process, made on the server's event loop."""
    global _session
    if _session is None:
        _session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
    return _session


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Relay one request to ``FLOOR_UPSTREAM``; any GET is the readiness probe."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _session is not None:
                    await _session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["method"] == "GET":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    headers = {k.decode(): v.decode() for k, v in scope["headers"] if k in REQUEST_HEADERS}
    url = os.environ["FLOOR_UPSTREAM"] + scope["path"].removeprefix("/v1")
    async with session().post(url, data=b"".join(chunks), headers=headers) as upstream:
        out = [(k.encode(), upstream.headers[k].encode()) for k in RESPONSE_HEADERS if k in upstream.headers]
        await send({"type": "http.response.start", "status": upstream.status, "headers": out})
        async for chunk in upstream.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
