"""Count SQL queries issued on behalf of one piece of async code, in whatever thread they run.

Django's CaptureQueriesContext sees one thread's connection only, but the async ORM runs queries
in executor threads. sync_to_async copies context variables into those threads, so a context
variable marks the queries that belong to the code under test (and not to background tasks).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db.backends import utils

_counting: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("counting", default=None)


@contextmanager
def count_queries() -> Iterator[list[str]]:
    """Yield a list that collects the SQL of every query run inside the block's context."""
    seen: list[str] = []
    original = utils.CursorWrapper._execute_with_wrappers  # type: ignore[attr-defined]

    def spy(self: Any, sql: str, params: Any, many: bool, executor: Any) -> Any:
        bucket = _counting.get()
        if bucket is not None:
            bucket.append(sql)
        return original(self, sql, params, many, executor)

    utils.CursorWrapper._execute_with_wrappers = spy  # type: ignore[method-assign,attr-defined]
    token = _counting.set(seen)
    try:
        yield seen
    finally:
        _counting.reset(token)
        utils.CursorWrapper._execute_with_wrappers = original  # type: ignore[method-assign,attr-defined]
