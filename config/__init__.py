"""Project configuration: settings, URLs, the ASGI application and the Celery app.

The Celery app lives in ``config.celery``; each app's ``tasks.py`` imports it, and whatever sends a
task imports that ``tasks.py`` when it sends. A web process that enqueues nothing never loads Celery
and kombu (about 6 MB), and ``celery -A config`` still finds the app in ``config.celery``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["celery_app"]


def __getattr__(name: str) -> Any:
    if name == "celery_app":
        from .celery import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
