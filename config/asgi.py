"""The ASGI application: lifespan hooks, HTTP to Django, WebSocket to channels."""

from __future__ import annotations

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

tracing.setup()  # OpenTelemetry, when OTEL_EXPORTER_OTLP_ENDPOINT or TRACING_ENABLED asks for it

websocket_app = AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Dispatch by protocol. Django's own handler refuses lifespan, so it is answered here."""
    kind = scope["type"]
    if kind == "http":
        if gateway_asgi.is_proxy_path(scope["path"]):
            await gateway_asgi.app(scope, receive, send)
        else:
            await django_asgi(scope, receive, send)
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
