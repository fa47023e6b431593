"""A warm request makes no SQL query (DESIGN.md, the hot path)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from config.asgi import application
from gateway.state import shutdown
from tests.support.queries import count_queries

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def asgi_client(catalog: Any, fast_flush: None) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application), base_url="http://gw"
    ) as client:
        yield client
    await shutdown()


async def test_a_warm_request_makes_no_sql_query(asgi_client: httpx.AsyncClient, alice_key: Any) -> None:
    headers = {"Authorization": f"Bearer {alice_key[1]}"}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    with count_queries() as cold:
        assert (await asgi_client.post("/v1/chat/completions", json=body, headers=headers)).status_code == 200
    assert cold, "the first request must load the key and the catalogue (proves the counter counts)"
    with count_queries() as warm:
        assert (await asgi_client.post("/v1/chat/completions", json=body, headers=headers)).status_code == 200
        stream = await asgi_client.post(
            "/v1/chat/completions", json={**body, "stream": True}, headers=headers
        )
        assert stream.status_code == 200
        assert (await asgi_client.get("/v1/models", headers=headers)).status_code == 200
    assert warm == []
