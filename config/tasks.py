"""Platform-level Celery tasks."""

from __future__ import annotations

import socket

from config.celery import app


@app.task(name="config.ping")
def ping(payload: str = "ping") -> dict[str, str]:
    """Echo back with the worker's host name: proves a real worker picked the task up."""
    return {"payload": payload, "worker_host": socket.gethostname()}
