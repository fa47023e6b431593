"""Dependency faults under load: Redis restarted, PostgreSQL stopped, a web process SIGKILLed.

Each test runs real gateway processes (`manage.py serve`) on a private PostgreSQL and a private
Redis (tests/support/servers.py; the machine's shared servers are never touched), sends a steady
stream of chat completions (streamed and not) from a few async clients, breaks one dependency in
the middle, and then checks the README's promises ("Quotas, rate limits and budgets"): every
request got a 200 or the documented error, the ledger has exactly one row per answered request
with its tokens, and the counters agree with the ledger.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from quotas.buffer import LOCK_MS, REDIS_LIST
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.processes import ROOT, child_env, free_port, manage, running
from tests.support.servers import PrivatePostgres, PrivateRedis

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

CLIENTS = 4  # concurrent client loops: at most this many requests are in flight at any moment
SETUP = """
import json
from django.contrib.auth.models import User
from django.core.management import call_command
from gateway.services import key_issue
call_command("migrate", verbosity=0)
call_command("gateway_sync", {path!r}, verbosity=0)
print(json.dumps({{u: key_issue(name=u, user=User.objects.get(username=u))[1] for u in ("alice", "bob", "carol")}}))
"""


@dataclass
class Stack:
    pg: PrivatePostgres
    keys: dict[str, str]  # username → plaintext key
    ids: dict[str, int]  # username → user id
    bob_requests_rule: int  # bob's `requests` per `total` rule: a counter that must equal the ledger


def _sql(pg: PrivatePostgres, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(pg.url, connect_timeout=5) as conn:
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def stack(fake_upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A private PostgreSQL, migrated once, with a provider on the fake, three users, keys and rules.

    alice: only a rate limit (fails open without Redis); bob: a monthly budget and a total request
    quota (fail closed); carol: never used before a fault (a cold key).
    """
    config = tmp_path_factory.mktemp("faults") / "gateway.yaml"
    config.write_text(
        textwrap.dedent(f"""\
        providers:
          - {{name: local, kind: openai_compatible, base_url: "{fake_upstream.base_url}", api_key: {fake_upstream.api_key}}}
        models:
          - name: gpt-4o-mini
            max_output_tokens: 64
            price: {{input_per_mtok: 0.15, output_per_mtok: 0.60}}
            deployments: [{{provider: local, model: gpt-4o-mini}}]
        users: [{{username: alice}}, {{username: bob}}, {{username: carol}}]
        quotas:
          - {{subject: "user:alice", metric: requests, window: minute, limit: 100000}}
          - {{subject: "user:bob", metric: cost_usd, window: month, limit: 1000}}
          - {{subject: "user:bob", metric: requests, window: total, limit: 1000000}}
        """)
    )  # fmt: skip
    pg = PrivatePostgres()
    try:
        pg.start()
        env = child_env(DATABASE_URL=pg.url)
        env.pop("REDIS_URL", None)  # setup writes the database only (never the shared Redis)
        started = time.monotonic()
        out = subprocess.run(manage("shell", "-c", SETUP.format(path=str(config))), env=env, cwd=ROOT,
                             check=True, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert time.monotonic() - started < 60, "migrating the private database took too long"
        keys = json.loads(out.stdout.strip().splitlines()[-1])
        ids = dict(_sql(pg, "select username, id from auth_user"))
        [(rule,)] = _sql(
            pg, "select id from quotas_quotarule where user_id = %s and metric = 'requests'", ids["bob"]
        )
        yield Stack(pg=pg, keys=keys, ids=ids, bob_requests_rule=rule)
    finally:
        pg.close()


@pytest.fixture
def fake(fake_upstream: FakeOpenAI) -> Iterator[FakeOpenAI]:
    fake_upstream.reset()
    # Answers take a little while, so faults land on requests in flight.
    fake_upstream.behaviour(latency_ms=20, chunk_delay_ms=5)
    yield fake_upstream
    fake_upstream.reset()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis(appendonly=True)  # as production runs it (README "Production")
    server.start()
    yield server
    server.close()


def _gateways(
    stack: ExitStack, pg: PrivatePostgres, rd: PrivateRedis | None, n: int, **env: str
) -> list[tuple[str, int]]:
    """``n`` gateway processes on the private servers: (base URL, pid of the `serve` process).

    Without ``rd``, no Redis at all: counters and the usage buffer are the database and memory.
    """
    out = []
    for _ in range(n):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        environment = child_env(DATABASE_URL=pg.url, REDIS_URL=rd.url if rd else "", USAGE_FLUSH_INTERVAL="0.1",
                                GATEWAY_CONFIG_POLL_SECONDS="0.2", **env)  # fmt: skip
        if rd is None:
            for name in ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
                environment.pop(name, None)
        cmd = manage("serve", "--no-migrate", "--no-worker", "--port", str(port))
        proc = stack.enter_context(running(cmd, environment, url=f"{url}/livez"))
        out.append((url, proc.pid))
    return out


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


# --- the load ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    server: int
    user: str
    stream: bool
    started: float
    ended: float = 0.0
    status: int | None = None  # None: the connection failed or broke
    code: str = ""
    request_id: str = ""
    complete: bool = False  # the whole answer arrived (a stream up to [DONE])
    usage: tuple[int, int] | None = None  # (prompt, completion) tokens the client was told

    @property
    def answered(self) -> bool:
        return self.status == 200 and self.complete


async def _one(
    client: httpx.AsyncClient, urls: list[str], server: int, user: str, key: str, stream: bool
) -> Outcome:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "tell me a story"}],
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    out = Outcome(server=server, user=user, stream=stream, started=time.monotonic())
    try:
        async with client.stream("POST", f"{urls[server]}/v1/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {key}"}) as response:  # fmt: skip
            out.request_id = response.headers.get("x-request-id", "")
            raw = await response.aread()
            out.status = response.status_code
    except httpx.TransportError:
        out.ended = time.monotonic()
        return out
    out.ended = time.monotonic()
    if out.status != 200:
        out.code = json.loads(raw)["error"]["code"]
        return out
    usage: dict[str, int] | None = None
    if stream:
        lines = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
        out.complete = bool(lines) and lines[-1] == "[DONE]"
        usage = next((json.loads(x)["usage"] for x in lines[:-1] if json.loads(x).get("usage")), None)
    else:
        out.complete, usage = True, json.loads(raw)["usage"]
    if usage:
        out.usage = (usage["prompt_tokens"], usage["completion_tokens"])
    return out


async def _load(urls: list[str], keys: dict[str, str], fault: Callable[[], Awaitable[None]]) -> list[Outcome]:
    """CLIENTS loops of requests (servers, users alice/bob and stream or not all interleaved) for
    the whole of ``fault``: warm-up (every server has answered every user both ways: first requests
    pay for loading the catalogue, tiktoken and the counters), a second of steady state, the fault,
    a second and a half of recovery."""
    done = asyncio.Event()
    outcomes: list[Outcome] = []

    async def loop(client: httpx.AsyncClient, i: int) -> None:
        while not done.is_set():
            user = ("alice", "bob")[(i // len(urls)) % 2]
            out = await _one(
                client, urls, i % len(urls), user, keys[user], stream=(i // (2 * len(urls))) % 2 == 1
            )
            outcomes.append(out)
            if out.status is None:
                await asyncio.sleep(0.05)  # a dead server refuses at once: do not spin
            i += 1

    async def timeline() -> None:
        kinds = {(s, u, b) for s in range(len(urls)) for u in ("alice", "bob") for b in (False, True)}
        deadline = time.monotonic() + 30
        while not kinds <= {(o.server, o.user, o.stream) for o in outcomes if o.answered}:
            assert time.monotonic() < deadline, "the gateways never warmed up"
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        await fault()
        await asyncio.sleep(1.5)
        done.set()

    async with httpx.AsyncClient(timeout=15, limits=httpx.Limits(max_connections=2 * CLIENTS)) as client:
        await asyncio.gather(timeline(), *(loop(client, i) for i in range(CLIENTS)))
    return outcomes


# --- the checks ----------------------------------------------------------------------------------


@dataclass
class Ledger:
    rows: dict[str, tuple[int, int, int, bool]] = field(default_factory=dict)  # id → status, tokens, counted


def _ledger_since(stack: Stack, first_id: int) -> Ledger:
    rows = _sql(stack.pg, "select request_id, status, prompt_tokens, completion_tokens, counted from quotas_usageevent "
                          "where id > %s and user_id in (%s, %s)", first_id, stack.ids["alice"], stack.ids["bob"])  # fmt: skip
    return Ledger({r[0]: (r[1], r[2], r[3], r[4]) for r in rows})


def _last_id(stack: Stack) -> int:
    return int(_sql(stack.pg, "select coalesce(max(id), 0) from quotas_usageevent")[0][0])


def _wait_ledger(stack: Stack, first_id: int, expected: set[str], timeout: float = 20.0) -> Ledger:
    """The ledger rows since ``first_id`` once every id in ``expected`` is there (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ledger = _ledger_since(stack, first_id)
            if expected <= ledger.rows.keys() or time.monotonic() > deadline:
                return ledger
        except psycopg.OperationalError:
            assert time.monotonic() < deadline, "the private database never came back"
        time.sleep(0.1)


def _assert_tokens(ledger: Ledger, answered: list[Outcome]) -> None:
    for out in answered:
        assert out.usage is not None, out
        status, prompt, completion, counted = ledger.rows[out.request_id]
        assert (status, counted) == (200, True), out
        assert (prompt, completion) == out.usage, out


def _bob_counter(rd: PrivateRedis, stack: Stack) -> float:
    client = redis.Redis.from_url(rd.url)
    names = client.keys(f"q:{{u{stack.ids['bob']}}}:{stack.bob_requests_rule}:*")
    return sum(float(client.get(name) or 0) for name in names)


def _bob_counted(stack: Stack) -> int:
    query = "select count(*) from quotas_usageevent where user_id = %s and counted"
    return int(_sql(stack.pg, query, stack.ids["bob"])[0][0])


def _wait_counter(rd: PrivateRedis, stack: Stack, expected: int) -> float:
    """Bob's request counter once it reads ``expected`` (settlements in flight land within a moment)."""
    deadline = time.monotonic() + 5
    while (value := _bob_counter(rd, stack)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def _post(url: str, key: str) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(
        f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )


def _during(outcomes: list[Outcome], start: float, end: float, user: str) -> list[Outcome]:
    return [o for o in outcomes if o.user == user and o.started >= start and o.ended <= end]


# --- the scenarios -------------------------------------------------------------------------------


def test_a_redis_restart_under_load_keeps_the_policy_and_loses_nothing_settled(
    stack: Stack, fake: FakeOpenAI, private_redis: PrivateRedis
) -> None:
    first = _last_id(stack)
    window: dict[str, float] = {}

    async def restart_redis() -> None:
        await asyncio.to_thread(private_redis.stop, graceful=True)  # SIGTERM: the AOF is written out
        window["down"] = time.monotonic()  # between these two, Redis is certainly away
        await asyncio.sleep(2.5)
        window["up"] = time.monotonic()
        await asyncio.to_thread(private_redis.start)

    with ExitStack() as procs:
        [(url, _)] = _gateways(procs, stack.pg, private_redis, 1)
        outcomes = asyncio.run(_load([url], stack.keys, restart_redis))
        # Written by the running gateway (a drain cut off by the restart is retried).
        ledger = _wait_ledger(stack, first, {o.request_id for o in outcomes})

    # Every request: a whole 200, or the documented 503 of a quota that cannot be checked.
    assert all(o.answered or (o.status, o.code) == (503, "quota_unavailable") for o in outcomes), [
        o for o in outcomes if not o.answered and o.code != "quota_unavailable"
    ]
    # The policy held while Redis was down: alice's rate limit failed open, bob's budget closed.
    assert any(o.answered for o in _during(outcomes, window["down"], window["up"], "alice"))
    assert not any(o.answered for o in _during(outcomes, window["down"], window["up"], "bob"))
    assert all(o.user == "bob" for o in outcomes if o.status == 503)
    answered = [o for o in outcomes if o.answered]
    assert len(answered) >= 20 and any(o.code for o in outcomes)
    # Nothing settled is lost: one ledger row per response (a 503 too), every 200 with its tokens.
    assert ledger.rows.keys() == {o.request_id for o in outcomes}
    _assert_tokens(ledger, answered)
    assert all(not ledger.rows[o.request_id][3] for o in outcomes if o.status == 503)  # refused: not counted
    # Bob's quota counter never undercounts (a settlement cut off by the restart keeps its reservation).
    assert _bob_counter(private_redis, stack) >= _bob_counted(stack)


def test_b_postgres_down_under_load_warm_keys_serve_and_usage_is_written_after_recovery(
    stack: Stack, fake: FakeOpenAI, private_redis: PrivateRedis
) -> None:
    first = _last_id(stack)
    window: dict[str, float] = {}
    cold: list[Outcome] = []

    async def stop_postgres() -> None:
        await asyncio.to_thread(stack.pg.stop, "fast")
        window["down"] = time.monotonic()
        # A change signal arriving while the database is away must not drop the warm cache.
        await asyncio.to_thread(redis.Redis.from_url(private_redis.url).incr, "gateway:{config}:generation")
        await asyncio.sleep(1.0)
        async with httpx.AsyncClient(timeout=10) as client:  # a key never seen before: it cannot be checked
            cold.append(await _one(client, [url], 0, "carol", stack.keys["carol"], stream=False))
        await asyncio.sleep(1.5)
        window["up"] = time.monotonic()
        await asyncio.to_thread(stack.pg.start)

    with ExitStack() as procs:
        # A one-second cache TTL: cached keys and the catalogue go stale during the outage.
        [(url, _)] = _gateways(procs, stack.pg, private_redis, 1, GATEWAY_CACHE_TTL="1")
        outcomes = asyncio.run(_load([url], stack.keys, stop_postgres))

        assert all(o.answered for o in outcomes), (window, [o for o in outcomes if not o.answered])
        for user in ("alice", "bob"):
            assert len(_during(outcomes, window["down"], window["up"], user)) >= 5, user
        [carol] = cold
        assert (carol.status, carol.code) == (503, "database_unavailable"), carol
        # Usage spooled in Redis meanwhile is written once the database is back: one row per request.
        ledger = _wait_ledger(stack, first, {o.request_id for o in outcomes})
        assert ledger.rows.keys() == {o.request_id for o in outcomes}
        _assert_tokens(ledger, outcomes)
        assert _wait_counter(private_redis, stack, _bob_counted(stack)) == _bob_counted(stack)
        # Revocation is honoured again once the database is back (the stale cache is not sticky):
        # what `key_revoke` does, the row and the change signal.
        _sql(stack.pg, "update gateway_apikey set revoked_at = now() where name = 'alice' returning id")
        try:
            redis.Redis.from_url(private_redis.url).incr("gateway:{config}:generation")
            deadline = time.monotonic() + 5
            while (refused := _post(url, stack.keys["alice"])).status_code == 200:
                assert time.monotonic() < deadline, (
                    "the revoked key kept working after the database came back"
                )
                time.sleep(0.1)
            assert refused.json()["error"]["code"] == "key_revoked"
        finally:
            _sql(stack.pg, "update gateway_apikey set revoked_at = null where name = 'alice' returning id")


def test_d_postgres_down_without_redis_rate_limits_fail_open_and_budgets_closed(
    stack: Stack, fake: FakeOpenAI
) -> None:
    """No Redis: the counters live in the database too, so admission follows the outage policy
    (alice's rate limit fails open, bob's budget closed with a 503), and alice's answered requests
    reach the ledger from the process's memory once the database is back."""
    first = _last_id(stack)
    window: dict[str, float] = {}

    async def stop_postgres() -> None:
        await asyncio.to_thread(stack.pg.stop, "fast")
        window["down"] = time.monotonic()
        await asyncio.sleep(2.0)
        window["up"] = time.monotonic()
        await asyncio.to_thread(stack.pg.start)

    with ExitStack() as procs:
        [(url, _)] = _gateways(procs, stack.pg, None, 1)
        outcomes = asyncio.run(_load([url], stack.keys, stop_postgres))
    # The gateway was stopped gracefully: what it kept in memory is written by now.
    during = {user: _during(outcomes, window["down"], window["up"], user) for user in ("alice", "bob")}
    assert len(during["alice"]) >= 5 and all(o.answered for o in during["alice"]), during["alice"]
    refused = [o for o in during["bob"] if not o.answered]
    assert refused and all((o.status, o.code) == (503, "quota_unavailable") for o in refused), refused
    assert all(o.answered or (o.status, o.code) == (503, "quota_unavailable") for o in outcomes), [
        o for o in outcomes if not o.answered and o.code != "quota_unavailable"
    ]
    answered = [o for o in outcomes if o.answered]
    ledger = _wait_ledger(stack, first, {o.request_id for o in answered})
    assert {o.request_id for o in answered} <= ledger.rows.keys()
    _assert_tokens(ledger, answered)


def test_c_a_web_process_killed_under_load_loses_at_most_its_requests_in_flight(
    stack: Stack, fake: FakeOpenAI, private_redis: PrivateRedis
) -> None:
    first = _last_id(stack)

    with ExitStack() as procs:
        servers = _gateways(procs, stack.pg, private_redis, 2)
        [uvicorn] = _children(servers[0][1])  # the web process itself, under `manage.py serve`

        async def kill_web() -> None:
            os.kill(uvicorn, signal.SIGKILL)

        outcomes = asyncio.run(_load([u for u, _ in servers], stack.keys, kill_web))
        answered = [o for o in outcomes if o.answered]
        _wait_ledger(stack, first, {o.request_id for o in answered if o.server == 1})
        # Whatever the killed process settled is in the Redis buffer: the survivor drains it.
        buffer = redis.Redis.from_url(private_redis.url)
        deadline = time.monotonic() + LOCK_MS / 1000 + 10  # a drain lock the killed process held expires
        while buffer.llen(REDIS_LIST):
            assert time.monotonic() < deadline, "the survivor never drained the usage buffer"
            time.sleep(0.05)
        ledger = _ledger_since(stack, first)

    survivor = [o for o in outcomes if o.server == 1]
    killed = [o for o in outcomes if o.server == 0]
    assert all(o.answered for o in survivor), [o for o in survivor if not o.answered]
    assert any(o.status is None for o in killed) and any(o.answered for o in killed)
    # Cut off by the kill: a broken connection, never an error answer.
    assert all(o.answered or o.status is None or (o.status == 200 and not o.complete) for o in killed)
    # The survivor: every answered request has its row, with its tokens.
    assert {o.request_id for o in survivor} <= ledger.rows.keys()
    # The killed process: an answered request loses its row only if its settlement had not reached
    # Redis yet, so at most the requests in flight at the kill (one per client loop).
    lost = [o for o in killed if o.answered and o.request_id not in ledger.rows]
    assert len(lost) <= CLIENTS, lost
    _assert_tokens(ledger, [o for o in answered if o not in lost])
    broken = [o for o in killed if not o.answered]
    # Rows of requests that were not answered: only ones in flight at the kill could have one.
    assert len(ledger.rows.keys() - {o.request_id for o in answered}) <= CLIENTS
    # Bob's counter: reservations of requests cut off by the kill stay (never an undercount), and
    # there are no more of those than requests in flight.
    excess = _bob_counter(private_redis, stack) - _bob_counted(stack)
    assert 0 <= excess <= CLIENTS
    print(
        f"killed process: {len([o for o in killed if o.answered])} answered, {len(broken)} cut off or refused, "
        f"{len(lost)} answered without a ledger row, counter excess {excess:g}"
    )
