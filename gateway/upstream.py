"""The proxy's calls to providers: one pooled aiohttp session per process, used directly.

The proxy needs little of an HTTP client: send a method, URL, headers and body; read the status,
the headers and the body as it arrives; close. Through httpx's API on aiohttp's pool
(httpx-aiohttp) each call also built an ``httpx.Request`` and an ``httpx.Response`` around
aiohttp's own and normalised every header twice: ``bench/hotpath.py`` measured 192–202 µs of CPU
per call at 16 and 64 concurrent calls against 159–164 µs for aiohttp alone, and 346 against
265 µs for a call alone. So the proxy calls aiohttp itself, and keeps httpx's exceptions:
errors are mapped exactly as httpx-aiohttp maps them (its ``map_aiohttp_exceptions``), so
everything that reads them (``gateway.proxy.transport_error``, the relay) is unchanged.
``GATEWAY_HTTP_TRANSPORT=httpcore`` sends through httpx's own pool instead.

The session keeps no cookies (a provider's cookie must not travel with another user's request),
decompresses nothing (the proxy asks for ``identity`` and relays bytes) and trusts the same
certificate authorities as httpx (certifi).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import aiohttp
import httpx
from django.conf import settings
from httpx_aiohttp.transport import map_aiohttp_exceptions
from yarl import URL


class UpstreamResponse(Protocol):
    """What the proxy reads of an answer (``httpx.Response`` has it too)."""

    status_code: int

    @property
    def headers(self) -> Any: ...  # case-insensitive ``.get``

    def aiter_raw(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class Upstream(Protocol):
    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes, *, read_timeout: float | None,
        connect_timeout: float | None,
    ) -> UpstreamResponse: ...  # fmt: skip

    async def aclose(self) -> None: ...


class _AiohttpResponse:
    CHUNK_SIZE = 16 * 1024  # as httpx-aiohttp reads

    __slots__ = ("_response", "headers", "status_code")

    def __init__(self, response: Any) -> None:
        self._response = response
        self.status_code: int = response.status
        self.headers = response.headers

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        with map_aiohttp_exceptions():
            async for chunk in self._response.content.iter_chunked(self.CHUNK_SIZE):
                yield chunk

    async def aclose(self) -> None:
        with map_aiohttp_exceptions():
            await self._response.__aexit__(None, None, None)


class AiohttpUpstream:
    """aiohttp's connection pool, created on the first call (it must be made inside the event loop)."""

    def __init__(self, max_connections: int, keepalive_expiry: float = 60) -> None:
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self._session: Any = None
        self._timeouts: dict[tuple[float | None, float | None], Any] = {}

    def _session_now(self) -> Any:
        connector = aiohttp.TCPConnector(
            limit=self.max_connections, keepalive_timeout=self.keepalive_expiry,
            ssl=httpx.create_ssl_context(trust_env=False),
        )  # fmt: skip
        self._session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
            trust_env=False, skip_auto_headers=("Content-Type",),  # as httpx: only what the adapter sets
        )  # fmt: skip
        return self._session

    def _timeout(self, read: float | None, connect: float | None) -> Any:
        timeout = self._timeouts.get((read, connect))
        if timeout is None:
            # httpx.Timeout(read, connect=connect) as httpx-aiohttp hands it over: the pool wait
            # (aiohttp's `connect`) is httpx's `pool`, which is the read value there.
            timeout = aiohttp.ClientTimeout(sock_connect=connect, sock_read=read, connect=read)
            if len(self._timeouts) < 256:
                self._timeouts[(read, connect)] = timeout
        return timeout

    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes, *, read_timeout: float | None,
        connect_timeout: float | None,
    ) -> UpstreamResponse:  # fmt: skip
        session = self._session or self._session_now()
        with map_aiohttp_exceptions():
            response = await session.request(
                method, URL(url, encoded=True), headers=headers, data=body or None, allow_redirects=False,
                compress=False, timeout=self._timeout(read_timeout, connect_timeout),
            ).__aenter__()  # fmt: skip
        return _AiohttpResponse(response)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class HttpxUpstream:
    """httpx's own connection pool (httpcore), straight to the transport."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self.transport = transport
        self._urls: dict[str, httpx.URL] = {}

    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes, *, read_timeout: float | None,
        connect_timeout: float | None,
    ) -> UpstreamResponse:  # fmt: skip
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) >= 1024:  # URLs with a per-request part (Azure, Gemini): start over
                self._urls.clear()
            parsed = self._urls[url] = httpx.URL(url)
        timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        request = httpx.Request(method, parsed, headers=headers, content=body,
                                extensions={"timeout": timeout.as_dict()})  # fmt: skip
        return await self.transport.handle_async_request(request)

    async def aclose(self) -> None:
        await self.transport.aclose()


def make_transport() -> httpx.AsyncBaseTransport:
    """The connection pool of the gateway's own httpx calls (Entra ID's keys, not the proxied calls).

    httpx's API on aiohttp's connection pool: httpcore's pool costs O(connections) per request
    and collapses under concurrency (bench/README.md has the figures), aiohttp's does not.
    ``GATEWAY_HTTP_TRANSPORT=httpcore`` makes it httpx's own, for these calls and the proxied ones.
    """
    limits = httpx.Limits(
        max_connections=settings.GATEWAY_UPSTREAM_MAX_CONNECTIONS,
        max_keepalive_connections=settings.GATEWAY_UPSTREAM_MAX_CONNECTIONS,
        keepalive_expiry=60,
    )
    if settings.GATEWAY_HTTP_TRANSPORT == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        return AiohttpTransport(limits=limits, trust_env=False)
    return httpx.AsyncHTTPTransport(limits=limits, trust_env=False)


def make_upstream() -> Upstream:
    """The process's one pool of provider connections (``GATEWAY_HTTP_TRANSPORT``)."""
    if settings.GATEWAY_HTTP_TRANSPORT == "aiohttp":
        return AiohttpUpstream(settings.GATEWAY_UPSTREAM_MAX_CONNECTIONS)
    return HttpxUpstream(make_transport())
