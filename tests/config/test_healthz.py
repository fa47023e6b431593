from __future__ import annotations

import pytest
from django.test import Client, override_settings

from config.celery import app as celery_app

pytestmark = pytest.mark.django_db


def test_it_is_200_when_everything_answers(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["failing"] == []
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["celery_broker"]["ok"] is True


@override_settings(REDIS_URL="redis://127.0.0.1:1/0", HEALTHZ_TIMEOUT=0.5)
def test_it_is_503_naming_an_unreachable_redis(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["failing"] == ["redis"]


def test_it_is_503_naming_an_unreachable_broker(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(celery_app.conf, "broker_url", "redis://127.0.0.1:1/0")
    with override_settings(HEALTHZ_TIMEOUT=0.5):
        response = client.get("/healthz")
    assert response.status_code == 503
    assert "celery_broker" in response.json()["failing"]
