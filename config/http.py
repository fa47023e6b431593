"""uvicorn's httptools protocol, sending a response's head in the same write as its first body bytes.

uvicorn writes the status line and headers as soon as the app sends `http.response.start`, and the
body on `http.response.body`: two send() calls and two TCP segments for every response, though a
proxied JSON answer has both at hand in the same step of the event loop. Here the head waits until
the body's first write, or until the end of that loop step if the body is not ready (a stream): it
never waits for the app. Selected with `--http config.http:HttpToolsProtocol` (`manage.py serve`
and the production command lines).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http import httptools_impl

HEAD = b"HTTP/1.1 "  # how uvicorn's heads start (STATUS_LINE), 100 Continue included


class HeadHoldingTransport:
    """A connection's transport that holds a response head back until the next write or the loop step's end."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data.startswith(HEAD):
            # Only a head is held: anything else (a body that happens to start so) is merely late
            # by the rest of this loop step, and order is kept either way.
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def __getattr__(self, name: str) -> Any:  # get_extra_info, set_protocol, …
        return getattr(self._transport, name)


class HttpToolsProtocol(httptools_impl.HttpToolsProtocol):
    """uvicorn's httptools protocol on a `HeadHoldingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadHoldingTransport(transport, self.loop))  # type: ignore[arg-type]

    def handle_websocket_upgrade(self) -> None:
        # A WebSocket gets the connection itself: its frames are not HTTP heads.
        held = self.transport
        if isinstance(held, HeadHoldingTransport):
            held.flush()
            self.transport = held._transport
        super().handle_websocket_upgrade()
