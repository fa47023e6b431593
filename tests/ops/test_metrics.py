"""GET /metrics: protected, and what the gateway, the quotas and transcription recorded."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from config import metrics
from quotas.models import QuotaRule
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.live import LiveServer
from tests.support.processes import ROOT, child_env, free_port, manage, stop, wait_http
from transcription.engines.base import Result, Segment
from transcription.models import JobStatus, TranscriptionJob
from transcription.services import job_complete

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) → value of a text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of ``name`` over the samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in scraped.items() if n == name and want <= ls)


def scrape(base: str, **headers: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(f"{base}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


# --- protection ----------------------------------------------------------------------------------


def test_a_scraper_outside_the_allowed_networks_gets_a_403_without_data(db: None) -> None:
    response = Client(REMOTE_ADDR="203.0.113.9").get("/metrics")
    assert response.status_code == 403
    assert b"llmc_" not in response.content
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="::1").get("/metrics").status_code == 200


def test_the_token_is_required_when_set(db: None, settings: Any) -> None:
    settings.METRICS_TOKEN = "scrape-secret"
    local = Client(REMOTE_ADDR="127.0.0.1")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic scrape-secret"}):
        response = local.get("/metrics", headers=headers)
        assert response.status_code == 401, headers
        assert b"llmc_" not in response.content
        assert response["WWW-Authenticate"].startswith("Bearer")
    assert local.get("/metrics", headers={"Authorization": "Bearer scrape-secret"}).status_code == 200
    # The token alone, from anywhere: an empty network list allows every address.
    settings.METRICS_ALLOWED_NETWORKS = []
    remote = Client(REMOTE_ADDR="203.0.113.9")
    assert remote.get("/metrics").status_code == 401
    assert remote.get("/metrics", headers={"Authorization": "Bearer scrape-secret"}).status_code == 200
    # Neither protection configured: nobody, rather than everybody.
    settings.METRICS_TOKEN = ""
    assert local.get("/metrics").status_code == 403


# --- what is recorded ----------------------------------------------------------------------------


@pytest.fixture
def alice_in_engineering(alice_key: tuple[User, str], engineering: Group) -> tuple[User, str]:
    alice_key[0].groups.add(engineering)
    return alice_key


def test_requests_latency_ttft_tokens_and_cost_by_model_provider_and_group(
    gateway: LiveServer, alice_in_engineering: tuple[User, str], ledger: Any
) -> None:
    headers = {"Authorization": f"Bearer {alice_in_engineering[1]}"}
    before = scrape(gateway.url)
    url = f"{gateway.url}/v1/chat/completions"
    assert httpx.post(url, json=CHAT, headers=headers).status_code == 200
    assert httpx.post(url, json={**CHAT, "stream": True}, headers=headers).status_code == 200
    assert httpx.post(url, json={**CHAT, "model": "no-such-model"}, headers=headers).status_code == 404
    assert httpx.post(url, json=CHAT, headers={"Authorization": "Bearer llmc-wrong"}).status_code == 401
    rows = ledger(3)
    after = scrape(gateway.url)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    ok = {"endpoint": "chat/completions", "model": "gpt-4o-mini", "provider": "local"}
    assert delta("llmc_gateway_requests_total", **ok, status_class="2xx") == 2
    # The unknown model is not a label value (clients choose it): "-".
    assert (
        delta("llmc_gateway_requests_total", endpoint="chat/completions", model="-", status_class="4xx") == 2
    )
    assert delta("llmc_gateway_request_duration_seconds_count", **ok) == 2
    assert delta("llmc_gateway_time_to_first_token_seconds_count", **ok) == 1
    assert all("no-such-model" not in str(key) for key in after)
    served = [r for r in rows if r.status == 200]
    prompt = sum(r.prompt_tokens for r in served)
    completion = sum(r.completion_tokens for r in served)
    assert prompt > 0 and completion > 0
    by_group = {"model": "gpt-4o-mini", "provider": "local", "group": "engineering"}
    assert delta("llmc_gateway_tokens_total", **by_group, type="prompt") == pytest.approx(prompt)
    assert delta("llmc_gateway_tokens_total", **by_group, type="completion") == pytest.approx(completion)
    cost = float(sum(r.cost_usd for r in served))
    assert cost > 0
    assert delta("llmc_gateway_cost_usd_total", **by_group) == pytest.approx(cost, rel=1e-6)


def test_a_member_of_two_groups_is_split_between_them(
    gateway: LiveServer, alice_in_engineering: tuple[User, str], ledger: Any
) -> None:
    alice_in_engineering[0].groups.add(Group.objects.create(name="research"))
    before = scrape(gateway.url)
    headers = {"Authorization": f"Bearer {alice_in_engineering[1]}"}
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
    prompt = ledger(1)[0].prompt_tokens
    after = scrape(gateway.url)
    for group in ("engineering", "research"):
        labels = {"group": group, "type": "prompt"}
        grew = total(after, "llmc_gateway_tokens_total", **labels) - total(
            before, "llmc_gateway_tokens_total", **labels
        )
        assert grew == pytest.approx(prompt / 2)


def test_quota_refusals_are_counted_by_code(gateway: LiveServer, alice_key: tuple[User, str]) -> None:
    QuotaRule.objects.create(subject_type="user", user=alice_key[0], metric="requests", window="day", limit=1)
    before = scrape(gateway.url)
    headers = {"Authorization": f"Bearer {alice_key[1]}"}
    statuses = [
        httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=headers).status_code
        for _ in range(3)
    ]
    assert statuses == [200, 429, 429]
    after = scrape(gateway.url)
    name = "llmc_quota_refusals_total"
    assert total(after, name, code="quota_exceeded") - total(before, name, code="quota_exceeded") == 2


def test_upstream_errors_and_the_circuit_state_per_deployment(
    gateway: LiveServer, alice_key: tuple[User, str], fake: FakeOpenAI, settings: Any
) -> None:
    settings.GATEWAY_CIRCUIT_FAILURES = 2
    before = scrape(gateway.url)
    closed = {"deployment": "local/gpt-4o-mini", "model": "gpt-4o-mini", "provider": "local"}
    assert total(before, "llmc_gateway_circuit_state", **closed) == 0  # listed before any request
    fake.fail_next(500, n=2)
    headers = {"Authorization": f"Bearer {alice_key[1]}"}
    for _ in range(2):
        assert httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=headers).status_code == 502
    after = scrape(gateway.url)
    kind = {"provider": "local", "kind": "upstream_server_error"}
    errors = "llmc_gateway_upstream_errors_total"
    assert total(after, errors, **kind) - total(before, errors, **kind) == 2
    assert total(after, "llmc_gateway_circuit_state", **closed) == 2  # open
    other = {"deployment": "azure-eu/gpt-4o", "model": "gpt-4o", "provider": "azure-eu"}
    assert total(after, "llmc_gateway_circuit_state", **other) == 0


def test_transcription_queue_and_real_time_factor(alice: User) -> None:
    def job(status: str, **fields: Any) -> TranscriptionJob:
        return TranscriptionJob.objects.create(
            user=alice, source="api", status=status, model="whisper-1", engine="faster-whisper",
            engine_model="tiny.en", duration=10.0, expires_at=timezone.now() + timedelta(days=1), **fields,
        )  # fmt: skip

    for _ in range(3):
        job(JobStatus.QUEUED)
    running = job(JobStatus.RUNNING, started_at=timezone.now() - timedelta(seconds=2), attempts=1)
    job(JobStatus.COMPLETED)
    local = Client(REMOTE_ADDR="127.0.0.1")
    before = samples(local.get("/metrics").content.decode())
    assert total(before, "llmc_transcription_jobs", status="queued") == 3
    assert total(before, "llmc_transcription_jobs", status="running") == 1
    segment = Segment(id=0, seek=0, start=0.0, end=10.0, text=" Hello.", tokens=[1], temperature=0.0,
                      avg_logprob=-0.1, compression_ratio=1.0, no_speech_prob=0.0)  # fmt: skip
    assert job_complete(job=running, result=Result(language="en", duration=10.0, segments=[segment]))
    after = samples(local.get("/metrics").content.decode())
    assert total(after, "llmc_transcription_jobs", status="running") == 0
    name = "llmc_transcription_real_time_factor"
    assert (
        total(after, f"{name}_count", model="whisper-1") - total(before, f"{name}_count", model="whisper-1")
        == 1
    )
    rtf = total(after, f"{name}_sum", model="whisper-1") - total(before, f"{name}_sum", model="whisper-1")
    assert 0.2 <= rtf < 0.5  # 2 s of work (plus the test's own) for 10 s of audio


def test_recording_a_call_costs_microseconds() -> None:
    class _Call:
        model = served_model = object()

    event = {
        "endpoint": "chat/completions", "model": "bench-model", "provider": "bench", "status": 200,
        "latency_ms": 120, "ttft_ms": 30, "streamed": True, "prompt_tokens": 12, "completion_tokens": 40,
        "cost_usd": "0.0000123", "group_ids": [1, 2], "error_kind": "",
    }  # fmt: skip
    call = _Call()
    metrics.call_finished(call, event)  # warm: the label children exist
    n = 2000
    started = time.perf_counter()
    for _ in range(n):
        metrics.call_finished(call, event)
    per_call = (time.perf_counter() - started) / n
    # Typically 10-20 µs here; the bound leaves room for a loaded shared machine.
    assert per_call < 200e-6, f"{per_call * 1e6:.1f} µs per call"


# --- several web processes -----------------------------------------------------------------------


def _per_process_requests(directory: Path, tmp: Path) -> list[float]:
    """llmc_gateway_requests_total of each process's own file."""
    totals = []
    for i, db in enumerate(sorted(directory.glob("counter_*.db"))):
        alone = tmp / f"p{i}"
        alone.mkdir(parents=True)
        shutil.copy(db, alone / db.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, str(alone))
        totals.append(total(samples(generate_latest(registry).decode()), "llmc_gateway_requests_total"))
    return totals


@pytest.fixture
def two_workers(catalog: Any, tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """`manage.py serve --workers 2` (two uvicorn worker processes), JSON logs to a file."""
    directory = tmp_path / "prometheus"
    directory.mkdir()
    (directory / "counter_4242.db").write_bytes(b"left over by a process of an earlier run")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    token = tmp_path / "metrics-token"
    token.write_text("scrape-secret\n")
    env = child_env(
        PROMETHEUS_MULTIPROC_DIR=str(directory), LOG_FORMAT="json", GATEWAY_CONFIG_POLL_SECONDS="0.2",
        METRICS_TOKEN="not-this-one", METRICS_TOKEN_FILE=str(token),
    )  # fmt: skip
    with log.open("wb") as err:
        proc = subprocess.Popen(
            manage("serve", "--no-migrate", "--no-worker", "--workers", "2", "--port", str(port)),
            env=env, cwd=ROOT, stderr=err,
        )  # fmt: skip
        try:
            wait_http(f"{url}/livez", proc=proc)
            yield url, directory, log
        finally:
            stop(proc)


@pytest.mark.slow
def test_the_scraped_total_adds_up_every_web_process(
    two_workers: tuple[str, Path, Path], alice_key: tuple[User, str], fake: FakeOpenAI, tmp_path: Path
) -> None:
    url, directory, log = two_workers
    assert not (directory / "counter_4242.db").exists()  # emptied at start
    fake.behaviour(latency_ms=60)  # requests overlap, so both workers accept some
    batch = 40

    async def fire() -> list[int]:
        # One connection per request: the kernel hands each to whichever worker accepts first.
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            calls = [
                client.post(f"{url}/v1/chat/completions", json={**CHAT, "stream": i % 2 == 1},
                            headers={"Authorization": f"Bearer {alice_key[1]}"})
                for i in range(batch)
            ]  # fmt: skip
            return [r.status_code for r in await asyncio.gather(*calls)]

    # Which worker accepts is the kernel's choice: one may take a whole burst, so burst until both
    # have served some (at most ten bursts).
    n = 0
    for attempt in range(10):
        assert asyncio.run(fire()) == [200] * batch
        n += batch
        per_process = _per_process_requests(directory, tmp_path / str(attempt))
        if len([t for t in per_process if t > 0]) == 2:
            break
    assert len([t for t in per_process if t > 0]) == 2, per_process  # both workers served some
    assert sum(per_process) == n
    assert httpx.get(f"{url}/metrics").status_code == 401
    assert httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer not-this-one"}).status_code == 401
    # Whichever worker answers, it reports both; the token came from METRICS_TOKEN_FILE.
    scraped = scrape(url, Authorization="Bearer scrape-secret")
    assert total(scraped, "llmc_gateway_requests_total") == n
    assert total(scraped, "llmc_gateway_requests_total", status_class="2xx", model="gpt-4o-mini") == n
    assert total(scraped, "llmc_gateway_request_duration_seconds_count") == n
    assert total(scraped, "llmc_gateway_time_to_first_token_seconds_count") == n // 2
    # LOG_FORMAT=json: the workers' own lines (uvicorn's included) are JSON objects.
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    started = [r for r in lines if r["logger"] == "uvicorn.error" and "startup complete" in r["message"]]
    assert len(started) == 2, log.read_text()
    assert all({"ts", "level", "logger", "message", "request_id"} <= set(r) for r in lines)
