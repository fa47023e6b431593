"""Soak: minutes of mixed traffic with faults injected and quotas near their limits, on loopback.

A throw-away deployment (temporary ``DATA_DIR``: SQLite and in-process backends unless ``--redis``
/ ``--database-url``) with models whose primary deployment is a fault (reset, 503, 429 with
Retry-After, a silent upstream) and whose fallback is the fake OpenAI; models with faults and no
fallback (5xx, connect timeout, a stream reset or stalled mid-way, a 1-byte-per-second trickle);
a healthy model; and two users, one far from their limits and one whose token quota runs out
during the run. ``--concurrency`` workers send streaming and non-streaming chat completions for
``--minutes`` while the gateway's RSS is sampled every second. At the end, after a graceful stop
(which flushes the ledger):

* no 5xx (and no stream error event) that was not injected: every fault with a fallback is
  invisible to the client;
* each quota counter equals the ledger's total for its rule (every reservation settled);
* memory is steady: the RSS after the warm-up, at the end and at its peak.

Usage::

    .venv/bin/python bench/soak.py [--minutes 3] [--quick] [--concurrency 12] [--redis URL]

Results go to ``bench/results/soak.json``. ``tests/security/test_soak.py`` runs the same core for
about 20 seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
PROMPT = [{"role": "user", "content": "soak test, please answer briefly"}]

# model -> (primary fault mode or "" for healthy, fallback to the fake?, client-visible faults expected?)
MODELS: dict[str, tuple[str, bool, bool]] = {
    "soak-ok": ("", False, False),
    "soak-reset": ("reset", True, False),
    "soak-503": ("status:503", True, False),
    "soak-429": ("status:429:2", True, False),
    "soak-silent": ("silent", True, False),
    "soak-down": ("status:500", False, True),
    "soak-connect": ("connect", False, True),
    "soak-broken": ("reset_after:3", False, True),
    "soak-stall": ("stall_after:2", False, True),
    "soak-trickle": ("trickle_after:2", False, True),
}
# How often each model is asked for: mostly healthy or recoverable traffic.
WEIGHTS = {"soak-ok": 30, "soak-reset": 8, "soak-503": 8, "soak-429": 8, "soak-silent": 3, "soak-down": 4,
           "soak-connect": 2, "soak-broken": 4, "soak-stall": 2, "soak-trickle": 1}  # fmt: skip
TIGHT_TOKENS_PER_SECOND = 20  # the tight user's token quota per second of run: it runs out mid-way


@dataclass
class Setup:
    """What soak_setup created: the two users' keys and the rules to check against the ledger."""

    keys: dict[str, str]
    user_ids: dict[str, int]
    rule_ids: list[int]


def soak_setup(
    *, fake_base_url: str, fake_api_key: str, fault_base_url: str, backlog_base_url: str, seconds: float
) -> Setup:
    """The catalogue, users, keys and quota rules of a soak of ``seconds`` (sync ORM)."""
    from django.contrib.auth.models import User

    from gateway.models import CatalogModel, Deployment, Provider
    from gateway.services import key_issue
    from quotas.models import QuotaRule

    fake = Provider(name="soak-fake", kind="openai_compatible", base_url=fake_base_url)
    fake.set_api_key(fake_api_key)
    fake.save()
    faulty = Provider.objects.create(name="soak-faults", kind="openai_compatible", base_url=fault_base_url,
                                     connect_timeout_seconds=0.3, timeout_seconds=1.5)  # fmt: skip
    unreachable = Provider.objects.create(name="soak-backlog", kind="openai_compatible", base_url=backlog_base_url,
                                          connect_timeout_seconds=0.3, timeout_seconds=1.5)  # fmt: skip
    for name, (mode, fallback, _) in MODELS.items():
        model = CatalogModel.objects.create(name=name, input_per_mtok=Decimal("0.15"), output_per_mtok=Decimal("0.60"),
                                            max_output_tokens=64)  # fmt: skip
        if not mode:
            Deployment.objects.create(model=model, provider=fake, provider_model="gpt-4o-mini")
            continue
        provider = unreachable if mode == "connect" else faulty
        Deployment.objects.create(model=model, provider=provider, provider_model=mode, priority=0,
                                  first_byte_timeout=0.4, chunk_timeout=0.8)  # fmt: skip
        if fallback:
            Deployment.objects.create(model=model, provider=fake, provider_model="gpt-4o-mini", priority=1)
    keys, user_ids, rules = {}, {}, []
    for name, tokens in (
        ("soak-steady", Decimal(10**9)),
        ("soak-tight", Decimal(int(TIGHT_TOKENS_PER_SECOND * seconds))),
    ):
        user = User.objects.create_user(name)
        _, keys[name] = key_issue(name=f"{name} key", user=user)
        user_ids[name] = user.pk
        for metric, limit in (("requests", Decimal(10**9)), ("tokens", tokens), ("cost_usd", Decimal(10**6))):
            rule = QuotaRule.objects.create(
                subject_type="user", user=user, metric=metric, window="day", limit=limit
            )
            rules.append(rule.id)
    return Setup(keys=keys, user_ids=user_ids, rule_ids=rules)


# --- the load --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    model: str
    user: str
    stream: bool
    status: int
    stream_error: str = ""  # the code of an SSE error event
    transport_error: str = ""


@dataclass
class LoadResult:
    seconds: float
    outcomes: list[Outcome] = field(default_factory=list)
    rss_kb: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        unexpected = [o for o in self.outcomes if is_unexpected(o)]
        by = Counter(f"{o.model} {'stream' if o.stream else 'json'} {o.status}{' ' + o.stream_error if o.stream_error else ''}"
                     for o in self.outcomes)  # fmt: skip
        return {
            "requests": len(self.outcomes),
            "rps": round(len(self.outcomes) / self.seconds, 1) if self.seconds else 0,
            "streams": sum(o.stream for o in self.outcomes),
            "ok": sum(o.status == 200 and not o.stream_error for o in self.outcomes),
            "quota_refused": sum(o.status == 429 and o.user == "soak-tight" for o in self.outcomes),
            "injected_5xx": sum(o.status >= 500 and MODELS[o.model][2] for o in self.outcomes),
            "injected_stream_errors": sum(bool(o.stream_error) and MODELS[o.model][2] for o in self.outcomes),
            "unexpected": len(unexpected),
            "unexpected_samples": [asdict(o) for o in unexpected[:10]],
            "by_outcome": dict(sorted(by.items())),
        }


def is_unexpected(o: Outcome) -> bool:
    """A 5xx, a transport error or a broken stream on a model whose faults all have a fallback;
    or, on any model, a status that no fault explains."""
    injected = MODELS[o.model][2]
    if o.transport_error:
        return True
    if not injected:
        return o.status >= 500 or bool(o.stream_error) or o.status not in (200, 429)
    return o.status not in (200, 429, 502, 503, 504)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                children.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def rss_kb(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants, in kB."""
    total = 0
    for p in process_tree(pid):
        with suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE_KB
    return total


async def _one(client: httpx.AsyncClient, url: str, key: str, user: str, model: str, stream: bool) -> Outcome:
    body: dict[str, Any] = {"model": model, "messages": PROMPT, "stream": stream, "max_tokens": 24}
    outcome = Outcome(model=model, user=user, stream=stream, status=0)
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {key}"}) as response:  # fmt: skip
            outcome.status = response.status_code
            data = await response.aread()
        if stream and response.status_code == 200:
            for line in data.split(b"\n"):
                if line.startswith(b"data: {") and b'"error"' in line[:20]:
                    outcome.stream_error = str(json.loads(line[6:])["error"].get("code"))
            if not outcome.stream_error and b"[DONE]" not in data:
                outcome.stream_error = "no_done"
    except httpx.HTTPError as exc:
        outcome.transport_error = type(exc).__name__
    return outcome


def run_load(url: str, keys: dict[str, str], seconds: float, concurrency: int, gateway_pid: int | None,
             seed: int = 7) -> LoadResult:  # fmt: skip
    """``concurrency`` workers for ``seconds`` of mixed traffic; RSS of ``gateway_pid`` every second."""
    rng = random.Random(seed)
    models, weights = list(WEIGHTS), list(WEIGHTS.values())
    result = LoadResult(seconds=seconds)
    stop = threading.Event()

    def sample() -> None:
        while gateway_pid is not None:
            result.rss_kb.append(rss_kb(gateway_pid))
            if stop.wait(1.0):
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    async def worker(deadline: float) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            while time.monotonic() < deadline:
                user = "soak-tight" if rng.random() < 0.15 else "soak-steady"
                model = rng.choices(models, weights)[0]
                result.outcomes.append(await _one(client, url, keys[user], user, model, rng.random() < 0.5))

    async def main() -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(worker(deadline) for _ in range(concurrency)))

    started = time.monotonic()
    try:
        asyncio.run(main())
    finally:
        result.seconds = time.monotonic() - started
        stop.set()
        sampler.join()
    if gateway_pid is not None:
        result.rss_kb.append(rss_kb(gateway_pid))
    return result


# --- checks ----------------------------------------------------------------------------------------


def counters_vs_ledger(rule_ids: list[int]) -> list[dict[str, Any]]:
    """Each rule's counter next to the ledger's total for it (sync ORM; after the final flush)."""
    from django.db.models import F, Sum

    from quotas.models import QuotaRule, UsageEvent
    from quotas.reports import counter_value

    out = []
    for rule in QuotaRule.objects.filter(id__in=rule_ids).select_related("user"):
        rows = UsageEvent.objects.filter(user=rule.user, counted=True)  # refused at admission: never reserved
        if rule.metric == "requests":
            ledger = float(rows.count())
        elif rule.metric == "tokens":
            ledger = float(rows.aggregate(t=Sum(F("prompt_tokens") + F("completion_tokens")))["t"] or 0)
        else:
            ledger = float(rows.aggregate(c=Sum("cost_usd"))["c"] or 0)
        counter = counter_value(rule, f"u{rule.user_id}")
        out.append({"rule": rule.label, "counter": counter, "ledger": ledger,
                    "equal": abs(counter - ledger) <= 1e-6 * max(1.0, ledger)})  # fmt: skip
    return out


def memory(rss: list[int], warmup: int) -> dict[str, Any]:
    """RSS in MB: first (after ``warmup`` samples), last, peak, and whether it stayed steady."""
    samples = rss[warmup:] or rss
    if not samples:
        return {"steady": False}
    first, last, peak = samples[0] / 1024, samples[-1] / 1024, max(samples) / 1024
    # Steady: the end is within 15% (and 24 MB) of the post-warm-up level; a leak of one small object
    # per request would grow by more than that over thousands of requests.
    steady = last - first <= max(24.0, 0.15 * first)
    return {"first_mb": round(first, 1), "last_mb": round(last, 1), "peak_mb": round(peak, 1),
            "samples": len(rss), "warmup_samples": warmup, "steady": steady}  # fmt: skip


def verdict(load: LoadResult, counters: list[dict[str, Any]], mem: dict[str, Any]) -> dict[str, Any]:
    summary = load.summary()
    checks = {
        "no_unexpected_errors": summary["unexpected"] == 0,
        "faults_were_injected": summary["injected_5xx"] > 0 and summary["injected_stream_errors"] > 0,
        "quota_was_reached": summary["quota_refused"] > 0,
        "counters_equal_ledger": all(c["equal"] for c in counters) and len(counters) > 0,
        "memory_steady": bool(mem.get("steady")),
    }
    return {
        "ok": all(checks.values()),
        "checks": checks,
        "load": summary,
        "counters": counters,
        "memory": mem,
    }


# --- the CLI ---------------------------------------------------------------------------------------


def _env(data_dir: Path, args: argparse.Namespace) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATA_DIR": str(data_dir),
        "LOG_LEVEL": "ERROR",
    }
    for name in ("REDIS_URL", "DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DEBUG"):
        env.pop(name, None)
    env["GATEWAY_UPSTREAM_ALLOWED_NETWORKS"] = "127.0.0.0/8,::1/128"
    env["GATEWAY_CIRCUIT_COOLDOWN"] = "2"  # probes keep happening during the run
    if args.redis:
        env["REDIS_URL"] = args.redis
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="30 seconds")
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--redis", default=None, help="REDIS_URL (a database of its own: it is used as is)")
    parser.add_argument("--database-url", default=None, help="DATABASE_URL (an empty database of its own)")
    args = parser.parse_args(argv)
    seconds = 30.0 if args.quick else args.minutes * 60

    from tests.fakes.fault_upstream import FaultUpstream, FullBacklog
    from tests.fakes.openai_upstream import FakeOpenAI

    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp, FakeOpenAI() as fake, FaultUpstream() as faults, \
            FullBacklog() as backlog:  # fmt: skip
        env = _env(Path(tmp), args)
        os.environ.clear()
        os.environ.update(env)
        manage = [sys.executable, str(ROOT / "manage.py")]
        subprocess.run([*manage, "migrate", "--no-input", "-v", "0"], env=env, cwd=ROOT, check=True)
        import django

        django.setup()
        setup = soak_setup(fake_base_url=fake.base_url, fake_api_key=fake.api_key, fault_base_url=faults.base_url,
                           backlog_base_url=backlog.base_url, seconds=seconds)  # fmt: skip
        from django.db import connections

        connections.close_all()
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(Path(tmp) / "gateway.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([*manage, "serve", "--no-migrate", "--no-worker", "--workers", "1", "--port", str(port)],
                                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            _wait(f"{url}/livez", proc)
            print(
                f"soak: {seconds:.0f} s, concurrency {args.concurrency}, gateway pid {proc.pid} on {url}",
                flush=True,
            )
            load = run_load(url, setup.keys, seconds, args.concurrency, proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        report = verdict(
            load,
            counters_vs_ledger(setup.rule_ids),
            memory(load.rss_kb, warmup=min(10, len(load.rss_kb) // 5)),
        )
        report["backends"] = {
            "redis": bool(args.redis),
            "database": "postgres" if args.database_url else "sqlite",
        }
        report["gateway_exit_code"] = proc.returncode
        if not report["ok"]:
            report["gateway_log_tail"] = (Path(tmp) / "gateway.log").read_text(errors="replace")[-4000:]
    (results / "soak.json").write_text(json.dumps(report, indent=2, default=str))
    _print(report)
    return 0 if report["ok"] else 1


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with {proc.returncode}")
        with suppress(httpx.TransportError):
            httpx.get(url, timeout=1)
            return
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer")


def _print(report: dict[str, Any]) -> None:
    load, mem = report["load"], report["memory"]
    print(f"requests {load['requests']} ({load['rps']}/s, {load['streams']} streams): ok {load['ok']}, "
          f"quota refusals {load['quota_refused']}, injected 5xx {load['injected_5xx']}, "
          f"injected stream errors {load['injected_stream_errors']}, unexpected {load['unexpected']}")  # fmt: skip
    for c in report["counters"]:
        print(f"  {c['rule']}: counter {c['counter']:g} ledger {c['ledger']:g} {'=' if c['equal'] else '!='}")
    print(
        f"gateway RSS: first {mem.get('first_mb')} MB, last {mem.get('last_mb')} MB, peak {mem.get('peak_mb')} MB"
    )
    print("checks: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in report["checks"].items()))
    print("written to bench/results/soak.json")


if __name__ == "__main__":
    sys.exit(main())
