"""End to end: `manage.py serve` starts the real ASGI server and a Celery worker; the URLs answer."""

from __future__ import annotations

import asyncio
import json
import signal

import httpx
import pytest
import websockets
from websockets.typing import Origin

from config.tasks import ping
from tests.support.processes import child_env, free_port, manage, running

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _check_urls(base: str) -> None:
    health = httpx.get(f"{base}/healthz", timeout=10)
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ok"

    portal = httpx.get(f"{base}/", timeout=10)
    assert portal.status_code == 302
    assert portal.headers["location"].startswith("/accounts/login/")
    assert httpx.get(f"{base}/accounts/login/", timeout=10).status_code == 200

    admin = httpx.get(f"{base}/admin/", timeout=10, follow_redirects=True)
    assert admin.status_code == 200
    assert "Django administration" in admin.text or "Log in" in admin.text

    assert httpx.get(f"{base}/static/admin/css/base.css", timeout=10).status_code == 200
    assert httpx.get(f"{base}/static/django_htmx/htmx-2.min.js", timeout=10).status_code == 200

    api = httpx.get(f"{base}/v1/models", timeout=10)
    assert api.status_code == 401
    assert api.headers["content-type"].startswith("application/json")
    assert api.json()["error"]["code"] == "missing_api_key"


async def _ws_ping(url: str) -> dict[str, str]:
    async with websockets.connect(url, origin=Origin("http://127.0.0.1")) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        return json.loads(await asyncio.wait_for(ws.recv(), 10))


def test_serve_runs_web_and_worker_and_stops_on_ctrl_c() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running(
        manage("serve", "--no-migrate", "--port", str(port)), child_env(), url=f"{base}/healthz"
    ) as proc:
        _check_urls(base)
        assert asyncio.run(_ws_ping(f"ws://127.0.0.1:{port}/ws/ping/")) == {"type": "pong"}
        # The worker that `serve` started picks the task up.
        assert ping.delay("smoke").get(timeout=60)["payload"] == "smoke"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def test_daphne_serves_the_same_platform() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = manage("serve", "--no-migrate", "--no-worker", "--server", "daphne", "--port", str(port))
    with running(cmd, child_env(), url=f"{base}/healthz"):
        _check_urls(base)
