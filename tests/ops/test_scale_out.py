"""Scale-out: several web processes, and several "hosts", on one PostgreSQL and one Redis.

Each scenario proves the three things that make web processes interchangeable, in one test:
limits are global and exact (a request-count rule and a token rule, hit by concurrent bursts
spread round-robin over every process), the ledger is complete (one row per response, refusals
included, request ids matching), and a revoked key is refused by every process within a second.

The first scenario runs the processes side by side on loopback. The second runs one process in
each of two Linux network namespaces, which reach PostgreSQL, Redis and the fake upstream only
over their veth link, through a relay in the root namespace (the servers listen on 127.0.0.1):
the network shape of separate machines behind a load balancer, on this one.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from django.conf import settings

from gateway.models import ApiKey, Provider
from gateway.services import key_issue, key_revoke
from quotas.engine import READY_KEY
from quotas.models import QuotaRule, UsageEvent
from tests.fakes.openai_upstream import FakeOpenAI
from tests.quotas.test_concurrency import _fire
from tests.support import netns
from tests.support.gateway_fixtures import wait_for_events
from tests.support.processes import child_env, free_port, manage, running, wait_http
from tests.support.processes import test_database_url as child_database_url

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

PROCESSES = 3
BURST = 36  # concurrent requests per burst, spread round-robin over the processes
REQUEST_LIMIT = 7
MAX_TOKENS = 20
# "hello there" is 8 prompt tokens for the gateway's counter and for the fake alike, and the fake
# answers exactly MAX_TOKENS words: the reservation (8 + 20) equals the actual use, so the number
# a token budget admits is exact, not a range. 150 tokens = 5 requests and 10 tokens to spare.
TOKEN_LIMIT = 150
REVOCATION_SECONDS = 1.0
HOST_PORT = 8000  # every namespace has its own port space: the "hosts" listen on the same port


@dataclass(frozen=True)
class Subjects:
    """The keys of the scenario: one under a request-count rule, one under a token rule, one revoked."""

    counted: str
    metered: str
    doomed: ApiKey
    doomed_plaintext: str


@pytest.fixture
def subjects(catalog: Any, django_user_model: Any, fake: FakeOpenAI) -> Subjects:
    """Rules exist before the processes start, so every process loads them with its first snapshot."""
    fake.behaviour(stream_words=MAX_TOKENS)  # every answer runs to max_tokens
    # As after a first deploy or a Redis restart: the first requests find the counters missing and
    # every process races to rebuild them from the ledger while the others admit.
    redis.Redis.from_url(settings.REDIS_URL).delete(READY_KEY)
    alice = django_user_model.objects.create_user("alice", "alice@example.com", "pw")
    bob = django_user_model.objects.create_user("bob", "bob@example.com", "pw")
    carol = django_user_model.objects.create_user("carol", "carol@example.com", "pw")
    _, counted = key_issue(name="counted", user=alice)
    metered_key, metered = key_issue(name="metered", user=bob)
    doomed, doomed_plaintext = key_issue(name="doomed", user=carol)
    QuotaRule.objects.create(subject_type="user", user=alice, metric="requests", window="day", limit=REQUEST_LIMIT)  # fmt: skip
    QuotaRule.objects.create(subject_type="key", key=metered_key, metric="tokens", window="day", limit=TOKEN_LIMIT)  # fmt: skip
    return Subjects(counted=counted, metered=metered, doomed=doomed, doomed_plaintext=doomed_plaintext)


@contextmanager
def gateways(commands: list[tuple[list[str], dict[str, str], str]]) -> Iterator[list[str]]:
    """Start every ``(cmd, env, url)`` at once, then wait for each to answer ``/livez``."""
    with ExitStack() as stack:
        started = [(stack.enter_context(running(cmd, env)), url) for cmd, env, url in commands]
        for proc, url in started:
            wait_http(f"{url}/livez", timeout=60, proc=proc)
        yield [url for _, url in started]


def serve(port: int, host: str = "127.0.0.1") -> list[str]:
    """The web process of one host: the production server, no embedded worker, no migrations."""
    return manage("serve", "--no-migrate", "--no-worker", "--host", host, "--port", str(port))


# --- the three properties --------------------------------------------------------------------------


def _statuses(responses: list[httpx.Response]) -> list[tuple[str, int]]:
    return [(str(r.request.url.netloc, "ascii"), r.status_code) for r in responses]


def assert_limits_exact_and_ledger_complete(urls: list[str], subjects: Subjects) -> None:
    """A request-count rule and a token rule, each hit by a concurrent burst over every process."""
    counted = asyncio.run(_fire(urls, subjects.counted, BURST))
    metered = asyncio.run(_fire(urls, subjects.metered, BURST, max_tokens=MAX_TOKENS))

    statuses = [r.status_code for r in counted]
    assert statuses.count(200) == REQUEST_LIMIT, _statuses(counted)
    assert statuses.count(429) == BURST - REQUEST_LIMIT, _statuses(counted)
    assert {r.json()["error"]["code"] for r in counted if r.status_code == 429} == {"quota_exceeded"}

    for name, responses in (("counted", counted), ("metered", metered)):
        rows = wait_for_events(BURST, timeout=20, key__name=name)
        assert len(rows) == BURST, f"{name}: {len(rows)} ledger rows for {BURST} responses"
        by_id = {row.request_id: row.status for row in rows}
        answered = {r.headers["x-request-id"]: r.status_code for r in responses}
        assert by_id == answered, f"{name}: the ledger does not match the responses"

    ok = [r for r in metered if r.status_code == 200]
    spent = [row.total_tokens for row in UsageEvent.objects.filter(key__name="metered", status=200)]
    assert len(set(spent)) == 1, spent  # every admitted request used the same tokens
    per_request = spent[0]
    assert len(ok) == TOKEN_LIMIT // per_request, (per_request, _statuses(metered))
    assert sum(spent) <= TOKEN_LIMIT
    refused = {r.json()["error"]["code"] for r in metered if r.status_code != 200}
    assert refused == {"quota_exceeded"}, _statuses(metered)


async def _time_to_refusal(urls: list[str], key: str, revoked_at: float) -> dict[str, float]:
    """Seconds from ``revoked_at`` until each process first refused ``key`` (inf: never, in 5 s)."""
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=5) as client:

        async def watch(url: str) -> float:
            while (elapsed := time.monotonic() - revoked_at) < 5:
                response = await client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
                if response.status_code == 401:
                    assert response.json()["error"]["code"] == "key_revoked"
                    return elapsed
                assert response.status_code == 200, response.text
                await asyncio.sleep(0.02)
            return math.inf

        return dict(zip(urls, await asyncio.gather(*(watch(url) for url in urls)), strict=True))


def assert_revocation_reaches_every_process(urls: list[str], subjects: Subjects) -> None:
    """Every process has the key cached (it served it), then refuses it within a second of the revoke."""
    key = subjects.doomed_plaintext
    warm = [
        httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        ).status_code
        for url in urls
    ]
    assert warm == [200] * len(urls)
    revoked_at = time.monotonic()
    key_revoke(key=subjects.doomed)
    took = asyncio.run(_time_to_refusal(urls, key, revoked_at))
    assert max(took.values()) < REVOCATION_SECONDS, took
    again = asyncio.run(_fire(urls, key, len(urls)))  # and it stays refused everywhere
    assert [r.status_code for r in again] == [401] * len(urls)


# --- scenario 1: several processes on one host -----------------------------------------------------


def test_processes_share_limits_ledger_and_revocation(subjects: Subjects, tmp_path: Path) -> None:
    commands = []
    for i in range(PROCESSES):
        port = free_port()
        env = child_env(USAGE_FLUSH_INTERVAL="0.1", PROMETHEUS_MULTIPROC_DIR=str(tmp_path / f"metrics-{i}"))
        commands.append((serve(port), env, f"http://127.0.0.1:{port}"))
    with gateways(commands) as urls:
        assert_limits_exact_and_ledger_complete(urls, subjects)
        assert_revocation_reaches_every_process(urls, subjects)


# --- scenario 2: several hosts (network namespaces) over veth links --------------------------------


@pytest.fixture
def hosts() -> Iterator[list[netns.Host]]:
    """Two namespaces with their veth links, deleted afterwards whatever happened."""
    reason = netns.unavailable()
    if reason:
        pytest.skip(f"cannot make network namespaces: {reason}")
    with netns.hosts(2) as made:
        yield made


def _relayed(url: str, host: str, port: int) -> str:
    """``url`` with its host and port replaced (credentials and path kept)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    return parts._replace(netloc=f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}").geturl()


def _loopback_refuses(host: netns.Host, port: int) -> bool:
    """Whether 127.0.0.1:``port`` refuses a connection inside ``host`` (its own, empty loopback)."""
    probe = (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "except ConnectionRefusedError:\n"
        "    sys.exit(3)\n"
    )
    run = subprocess.run(host.command([sys.executable, "-c", probe]), capture_output=True, timeout=20)
    return run.returncode == 3


def test_hosts_over_veth_share_limits_ledger_and_revocation(
    subjects: Subjects, hosts: list[netns.Host], fake: FakeOpenAI, tmp_path: Path
) -> None:
    database, redis_url = child_database_url(), settings.REDIS_URL
    db_parts, redis_parts = urlsplit(database), urlsplit(redis_url)
    assert _loopback_refuses(hosts[0], db_parts.port or 5432), "the namespace reaches the host's PostgreSQL"
    allowed = ",".join(sorted({f"{h.gateway_address.rsplit('.', 1)[0]}.0/24" for h in hosts}))
    with netns.TcpRelay() as relay:
        # One upstream address for every host, as a provider URL is one row: each namespace's
        # route to the /24 goes through its own link to reach it.
        upstream_host = hosts[0].gateway_address
        upstream_port = relay.forward(upstream_host, "127.0.0.1", fake.port)
        Provider.objects.filter(name="local").update(base_url=f"http://{upstream_host}:{upstream_port}/v1")
        commands = []
        for i, host in enumerate(hosts):
            pg = relay.forward(host.gateway_address, db_parts.hostname or "127.0.0.1", db_parts.port or 5432)
            rd = relay.forward(host.gateway_address, redis_parts.hostname or "127.0.0.1", redis_parts.port or 6379)  # fmt: skip
            redis_here = _relayed(redis_url, host.gateway_address, rd)
            env = child_env(
                DATABASE_URL=_relayed(database, host.gateway_address, pg),
                REDIS_URL=redis_here,
                CELERY_BROKER_URL=redis_here,
                CELERY_RESULT_BACKEND=redis_here,
                ALLOWED_HOSTS=f"{host.address},127.0.0.1,localhost",
                GATEWAY_UPSTREAM_ALLOWED_NETWORKS=allowed,
                USAGE_FLUSH_INTERVAL="0.1",
                PROMETHEUS_MULTIPROC_DIR=str(tmp_path / f"metrics-{i}"),
            )
            commands.append((host.command(serve(HOST_PORT, host.address)), env, f"http://{host.address}:{HOST_PORT}"))  # fmt: skip
        with gateways(commands) as urls:
            assert_limits_exact_and_ledger_complete(urls, subjects)
            assert_revocation_reaches_every_process(urls, subjects)
