"""Startup and shutdown hooks run by the ASGI lifespan protocol.

Apps register async callables here (the gateway closes its HTTP pool and flushes the usage
buffer on shutdown, so a graceful stop loses no event).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]
startup_hooks: list[Hook] = []
shutdown_hooks: list[Hook] = []


def on_startup(hook: Hook) -> Hook:
    """Register ``hook`` to run when the server starts."""
    startup_hooks.append(hook)
    return hook


def on_shutdown(hook: Hook) -> Hook:
    """Register ``hook`` to run when the server stops gracefully."""
    shutdown_hooks.append(hook)
    return hook


async def run(hooks: list[Hook]) -> None:
    """Run every hook; one failing hook does not stop the others."""
    for hook in hooks:
        try:
            await hook()
        except Exception:
            logger.exception("lifespan hook %s failed", getattr(hook, "__qualname__", hook))
