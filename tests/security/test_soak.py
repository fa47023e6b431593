"""The soak's core (bench/soak.py) for about 20 seconds: mixed streaming and non-streaming traffic
with faults injected and a quota running out, against a real gateway process. No 5xx that was not
injected, every counter equal to the ledger, and the gateway's memory steady."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench.soak import counters_vs_ledger, memory, run_load, soak_setup, verdict
from tests.fakes.fault_upstream import FaultUpstream, FullBacklog
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.processes import child_env, free_port, manage, running

SECONDS = 20


@pytest.fixture
def upstreams(fake: FakeOpenAI) -> Iterator[tuple[FakeOpenAI, FaultUpstream, FullBacklog]]:
    with FaultUpstream() as faults, FullBacklog() as backlog:
        yield fake, faults, backlog


@pytest.mark.slow
def test_a_short_soak_keeps_errors_injected_counters_exact_and_memory_steady(
    transactional_db: None, upstreams: Any
) -> None:
    fake, faults, backlog = upstreams
    setup = soak_setup(fake_base_url=fake.base_url, fake_api_key=fake.api_key, fault_base_url=faults.base_url,
                       backlog_base_url=backlog.base_url, seconds=SECONDS)  # fmt: skip
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = child_env(GATEWAY_CIRCUIT_COOLDOWN="2", LOG_LEVEL="ERROR")
    cmd = manage("serve", "--no-migrate", "--no-worker", "--workers", "1", "--port", str(port))
    with running(cmd, env, url=f"{url}/livez") as proc:
        load = run_load(url, setup.keys, SECONDS, concurrency=8, gateway_pid=proc.pid)
    # The gateway stopped gracefully: the ledger is complete, the counters final.
    report = verdict(load, counters_vs_ledger(setup.rule_ids), memory(load.rss_kb, warmup=5))
    assert proc.returncode == 0
    assert report["checks"] == dict.fromkeys(report["checks"], True), [
        c for c in report["counters"] if not c["equal"]
    ]
    assert report["load"]["requests"] > 100
