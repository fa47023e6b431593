"""WebSocket URL patterns, mounted by config/asgi.py."""

from __future__ import annotations

from django.urls import path

from portal.consumers import PingConsumer

websocket_urlpatterns = [
    path("ws/ping/", PingConsumer.as_asgi()),
]
