"""WebSocket consumers of the portal."""

from __future__ import annotations

from channels.generic.websocket import AsyncJsonWebsocketConsumer


class PingConsumer(AsyncJsonWebsocketConsumer):
    """Answers `{"type": "ping"}` with `{"type": "pong"}`: lets probes check the WebSocket path."""

    async def receive_json(self, content: dict[str, object], **kwargs: object) -> None:
        if content.get("type") == "ping":
            await self.send_json({"type": "pong"})
