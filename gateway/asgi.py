"""The lean ASGI handler of the proxy routes (/v1, /openai, /anthropic), mounted in front of Django.

Django's request cycle costs more than the whole proxy (see DESIGN.md), so these routes are served
by plain ASGI code that still uses Django's settings, apps and async ORM on cold paths.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import GatewayError

PROXY_PREFIXES = ("/v1/", "/openai/", "/anthropic/")


def is_proxy_path(path: str) -> bool:
    """True for the paths this handler serves instead of Django."""
    return path.startswith(PROXY_PREFIXES) or path in ("/v1", "/openai", "/anthropic")


async def send_error(send: Any, error: GatewayError, extra_headers: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
    """Send ``error`` as a complete JSON response."""
    body = error.body()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    headers += list(extra_headers)
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Serve one proxy request."""
    headers = dict(scope["headers"])
    if b"authorization" not in headers and b"api-key" not in headers and b"x-api-key" not in headers:
        await send_error(send, GatewayError(401, "Missing API key.", code="missing_api_key"))
        return
    await send_error(send, GatewayError(404, f"Unknown route {scope['path']}.", code="unknown_route"))
