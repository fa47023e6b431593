"""Soft limits: one warning per rule, subject and window, to the user (e-mail, banner) and the admins (webhook)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import httpx
import pytest
from django.core import mail
from django.test import Client

from quotas.models import QuotaAlert, QuotaRule
from quotas.tasks import quota_alert_notify

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def webhook() -> Iterator[list[dict[str, Any]]]:
    """A local stand-in for a Teams/Slack incoming webhook: records what is posted."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    received.append({"url": f"http://127.0.0.1:{server.server_port}/hook"})
    yield received
    server.shutdown()


def test_a_soft_limit_warns_once_per_window(
    gateway: Any, alice_key: Any, ledger: Any, settings: Any, webhook: list[dict[str, Any]]
) -> None:
    user, key = alice_key
    rule = QuotaRule.objects.create(
        subject_type="user", user=user, metric="requests", window="day", limit=4, warn_at_percent=50
    )
    time.sleep(0.3)
    for _ in range(4):
        assert (
            httpx.post(
                f"{gateway.url}/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {key}"}
            ).status_code
            == 200
        )
    ledger(4)
    deadline = time.monotonic() + 5
    while not QuotaAlert.objects.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    [alert] = QuotaAlert.objects.all()  # crossed at the 2nd request; the 3rd and 4th do not warn again
    assert alert.rule == rule and alert.user == user
    # The notification (a Celery task; run inline here) e-mails the user and posts to the webhook.
    settings.QUOTA_ALERT_WEBHOOK_URL = webhook.pop(0)["url"]
    quota_alert_notify(alert.pk)
    assert [m.to for m in mail.outbox] == [["alice@example.com"]]
    assert "50%" in mail.outbox[0].body
    assert webhook and "Usage warning" in webhook[0]["text"]
    quota_alert_notify(alert.pk)  # idempotent: sent once
    assert len(mail.outbox) == 1
    # The portal shows a banner.
    client = Client()
    client.force_login(user)
    assert "Usage warning" in client.get("/").content.decode()
