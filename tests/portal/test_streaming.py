"""The portal's sink of the gateway stream, and the messages people see for gateway errors."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from config.logs import new_request_id
from gateway.errors import GatewayError
from portal.streaming import DeltaSink, client_left, friendly_error, relay


def chunk(text: str) -> bytes:
    return b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}) + b"\n\n"


def feed(sink: DeltaSink, *pieces: bytes, content_type: bytes = b"text/event-stream") -> None:
    async def run() -> None:
        await sink.start(200, [(b"content-type", content_type)])
        for i, piece in enumerate(pieces):
            await sink.send(piece, more=i < len(pieces) - 1)

    asyncio.run(run())


def test_deltas_survive_events_split_anywhere() -> None:
    got: list[str] = []
    sink = DeltaSink(got.append)
    stream = chunk("Hel") + chunk("lo") + b"data: [DONE]\n\n"
    feed(sink, *[stream[i : i + 7] for i in range(0, len(stream), 7)])
    assert got == ["Hel", "lo"] and "".join(sink.text) == "Hello" and sink.error is None


def test_crlf_framing_finish_reason_and_an_error_event() -> None:
    got: list[str] = []
    sink = DeltaSink(got.append)
    last = b'data: {"choices":[{"delta":{},"finish_reason":"length"}]}\r\n\r\n'
    error = b'data: {"error":{"message":"The provider\'s stream stalled.","code":"upstream_timeout"}}\n\n'
    feed(sink, chunk("a").replace(b"\n\n", b"\r\n\r\n"), last, error)
    assert got == ["a"] and sink.finish_reason == "length"
    assert sink.error == {"message": "The provider's stream stalled.", "code": "upstream_timeout"}


def test_a_whole_json_answer_is_taken_too() -> None:
    got: list[str] = []
    sink = DeltaSink(got.append)
    body = orjson.dumps({"choices": [{"message": {"content": "whole"}, "finish_reason": "stop"}]})
    feed(sink, body[:10], body[10:], content_type=b"application/json")
    assert got == ["whole"] and sink.finish_reason == "stop"


def test_errors_read_as_sentences_for_people() -> None:
    quota = GatewayError(
        429, "Quota 'daily' reached; resets in 3 h.", code="quota_exceeded", type="insufficient_quota"
    )
    assert friendly_error(quota).startswith("Your quota is used up: Quota 'daily'")
    rate = GatewayError(
        429, "Slow down.", code="rate_limit_exceeded", type="requests", headers={"retry-after": "7"}
    )
    assert friendly_error(rate) == "Too many requests: Slow down. Try again in 7 s."
    policy = GatewayError(
        403, "Your data policy allows no deployment of `gpt-4o` (regions eu).", code="policy_denied"
    )
    assert friendly_error(policy).startswith("Your department's data policy does not allow this")
    denied = GatewayError(403, "You are not allowed to use the model `x`.", code="model_not_allowed")
    assert "Pick another model" in friendly_error(denied)
    down = GatewayError(502, "The provider could not be reached.", code="upstream_unreachable")
    assert friendly_error(down) == "The model provider failed: The provider could not be reached."
    assert friendly_error(GatewayError(400, "Bad.", code="invalid_value")) == "The request was refused: Bad."


def test_request_ids_look_like_the_gateways() -> None:
    rid = new_request_id()
    assert rid.startswith("req_") and len(rid) == 36 and rid != new_request_id()


class EndlessTurn:
    """A turn that keeps streaming until it is stopped."""

    def __init__(self) -> None:
        self.stopped = asyncio.Event()

    async def events(self, heartbeat: float) -> Any:
        while not self.stopped.is_set():
            yield "delta", "word "
            await asyncio.sleep(0.01)

    def stop(self) -> None:
        self.stopped.set()


def test_the_client_leaving_stops_the_turn_while_its_stream_is_still_held() -> None:
    """Django drops (does not close) the stream of a cancelled request: the disconnect event stops it."""

    async def run() -> bool:
        turn, left = EndlessTurn(), asyncio.Event()
        stream = relay(turn, left)  # type: ignore[arg-type]
        assert (await anext(stream)).startswith(b"event: delta")
        left.set()  # the client disconnected; the generator is neither closed nor collected
        try:
            await asyncio.wait_for(turn.stopped.wait(), 1)
        finally:
            await stream.aclose()
        return turn.stopped.is_set()

    assert asyncio.run(run())


def test_django_requests_carry_an_event_set_when_the_client_disconnects(monkeypatch: Any) -> None:
    import config.asgi

    seen: list[tuple[bool, bool]] = []

    async def django(scope: dict[str, Any], receive: Any, send: Any) -> None:
        left = client_left(type("Request", (), {"scope": scope})())
        assert left is not None
        await receive()  # the body
        before = left.is_set()
        await receive()  # what Django's disconnect listener gets
        seen.append((before, left.is_set()))

    messages = iter([{"type": "http.request", "body": b"", "more_body": False}, {"type": "http.disconnect"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        return None

    monkeypatch.setattr(config.asgi, "django_asgi", django)
    scope = {"type": "http", "path": "/chat/", "method": "POST", "headers": []}
    asyncio.run(config.asgi.application(scope, receive, send))
    assert seen == [(False, True)]
