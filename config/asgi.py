"""The ASGI application: lifespan hooks, HTTP to Django, WebSocket to channels."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# Django must be set up before anything imports models.
django_asgi = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from config import lifespan, tracing  # noqa: E402
from gateway import asgi as gateway_asgi  # noqa: E402
from portal.routing import websocket_urlpatterns  # noqa: E402
from portal.streaming import DISCONNECTED  # noqa: E402

tracing.setup()  # OpenTelemetry, when OTEL_EXPORTER_OTLP_ENDPOINT or TRACING_ENABLED asks for it
lifespan.on_startup(lifespan.freeze_startup_objects)

websocket_app = AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))


async def _django(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Django, with an event in the scope that is set when the client disconnects.

    Django notices the disconnect (it listens for it) and cancels the view's task, but a streaming
    response it was sending is then left to the garbage collector; the portal's streams watch this
    event to stop their upstream call at once (portal.streaming.relay).
    """
    left = asyncio.Event()

    async def watched() -> Any:
        message = await receive()
        if message["type"] == "http.disconnect":
            left.set()
        return message

    await django_asgi({**scope, DISCONNECTED: left}, watched, send)


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Dispatch by protocol. Django's own handler refuses lifespan, so it is answered here."""
    kind = scope["type"]
    if kind == "http":
        if gateway_asgi.is_proxy_path(scope["path"]):
            await gateway_asgi.app(scope, receive, send)
        else:
            await _django(scope, receive, send)
    elif kind == "websocket":
        await websocket_app(scope, receive, send)
    elif kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await lifespan.run(lifespan.startup_hooks)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await lifespan.run(lifespan.shutdown_hooks)
                await send({"type": "lifespan.shutdown.complete"})
                return
    else:
        raise ValueError(f"unsupported ASGI scope type {kind!r}")
