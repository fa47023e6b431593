"""Calling the sync ORM from async code outside Django's request cycle."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError, close_old_connections

# What a closed or unreachable database raises (not query errors, which are bugs to surface).
DB_UNREACHABLE = (OperationalError, InterfaceError)

P = ParamSpec("P")
T = TypeVar("T")


def _with_connection_hygiene(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    # What Django does around each request: drop broken or expired connections before and after.
    close_old_connections()
    try:
        return fn(*args, **kwargs)
    finally:
        close_old_connections()


async def adb(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run the sync ORM function ``fn`` in Django's thread-sensitive executor."""
    return await sync_to_async(_with_connection_hygiene)(fn, *args, **kwargs)
