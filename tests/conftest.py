"""Shared fixtures: a few named users, and the backends the run was pointed at."""

from __future__ import annotations

import linecache
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings

pytest_plugins = ["tests.support.gateway_fixtures", "tests.support.browser"]

_EXIT_STATUS = pytest.StashKey[int]()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """Tests marked `redis` need REDIS_URL: the embedded pass deselects them with -m, never skips."""
    if not settings.REDIS_URL:
        for item in items:
            if item.get_closest_marker("redis"):
                raise pytest.UsageError(
                    f"{item.nodeid} needs Redis but REDIS_URL is unset: run with -m 'not redis'"
                )


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: Any) -> None:
    """Never hang at exit: a thread left running by a failed test would block the interpreter forever.

    The run's result is already printed; the stray threads' stacks are printed too, then the process
    ends with the run's own status.
    """
    deadline = time.monotonic() + 10
    stray = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    for thread in stray:
        if not _idle_pool_worker(thread):
            thread.join(max(0.0, deadline - time.monotonic()))
    stray = [t for t in stray if t.is_alive() and not _idle_pool_worker(t)]
    if not stray:
        return
    frames = sys._current_frames()
    print(f"\n{len(stray)} thread(s) still running at exit; ending the process anyway:", file=sys.stderr)
    for thread in stray:
        print(f"--- {thread.name}", file=sys.stderr)
        traceback.print_stack(frames.get(thread.ident or 0), file=sys.stderr)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(config.stash.get(_EXIT_STATUS, 1))


def _idle_pool_worker(thread: threading.Thread) -> bool:
    """A concurrent.futures worker waiting for work: the interpreter's own exit handler ends it."""
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "_worker" and code.co_filename.endswith(
            os.path.join("concurrent", "futures", "thread.py")
        ):
            return "work_queue.get" in linecache.getline(code.co_filename, frame.f_lineno)
        frame = frame.f_back
    return False


@pytest.fixture(scope="session", autouse=True)
def _clean_redis() -> None:
    """Each run starts on an empty Redis database (the test settings point at a dedicated one)."""
    if settings.REDIS_URL:
        import redis

        redis.Redis.from_url(settings.REDIS_URL).flushdb()


@pytest.fixture(scope="session", autouse=True)
def _loopback_upstreams() -> Iterator[None]:
    """The fake upstreams listen on 127.0.0.1: allow loopback provider URLs (the SSRF guard refuses
    them by default), here and in the server processes that tests start."""
    from django.test import override_settings

    allowed = "127.0.0.0/8,::1/128"
    previous = os.environ.get("GATEWAY_UPSTREAM_ALLOWED_NETWORKS")
    os.environ["GATEWAY_UPSTREAM_ALLOWED_NETWORKS"] = allowed
    with override_settings(GATEWAY_UPSTREAM_ALLOWED_NETWORKS=allowed.split(",")):
        yield
    if previous is None:
        del os.environ["GATEWAY_UPSTREAM_ALLOWED_NETWORKS"]
    else:
        os.environ["GATEWAY_UPSTREAM_ALLOWED_NETWORKS"] = previous


@pytest.fixture
def alice(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("alice", "alice@example.com", "alice-password")


@pytest.fixture
def bob(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("bob", "bob@example.com", "bob-password")
