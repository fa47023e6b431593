"""Measure what the gateway adds, and what its peers add: chat completions direct vs proxied.

The bench builds a throw-away deployment in a temporary DATA_DIR (migrate, ``gateway_sync`` of a
generated YAML file with three quota rules for the bench user, ``issue_key``). For each upstream
latency it starts the fake OpenAI upstream pinned to core 1, the gateway (the production uvicorn
command line of ``manage.py serve``) and any ``--peers`` (Portkey, LiteLLM, the bare relay of
``bench/floor.py``; see ``bench/peers.py``) pinned to core 0, then runs ``hey`` (on core 1)
against the fake DIRECTLY and THROUGH each target, non-streaming and streaming, at several
concurrencies, and times the first byte of streams with an httpx client at c=1. It reports
requests/s, p50/p99, the latency each target adds, its CPU% and peak RSS, gateway/peer
throughput ratios and errors.

Usage::

    .venv/bin/python bench/gateway.py [--quick] [--peers portkey,litellm|all] [--upstream-latency-ms 0,50]
                                      [--redis URL|private] [--database-url URL] [--seconds 5]

Results go to ``bench/results/gateway.json``. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.peers import INSTALL_COMMAND, PEERS, gateway_runtime_python, parse_peers  # noqa: E402
from config.management.commands.serve import server_command  # noqa: E402

GATEWAY_CORE = "0"
CLIENT_CORE = "1"  # hey and the fake upstream
MODEL = "gpt-4o-mini"
UPSTREAM_KEY = "sk-bench-upstream-0123456789abcdef"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
FULL_CONCURRENCIES = (1, 16, 64)
QUICK_CONCURRENCIES = (1, 16)
MODES = ("non-stream", "stream")
DEFAULT_LATENCIES = "0,50"
BENCH_USER = "bench"
BENCH_GROUP = "bench"
RATELIMIT_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-limit-tokens")


# --- hey -------------------------------------------------------------------------------------------


@dataclass
class HeyResult:
    """What one ``hey`` run reported."""

    rps: float
    p50_ms: float | None
    p99_ms: float | None
    statuses: dict[str, int]
    transport_errors: int
    total: int
    errors: int
    error_samples: list[str] = field(default_factory=list)


def parse_hey(out: str) -> HeyResult:
    """Parse hey's summary: requests/s, the latency percentiles, status codes and transport errors.

    The percentiles are read from the "Latency distribution" section only, line by line
    (``  50% in 0.0012 secs``), so ``10%`` or ``100%`` can never be taken for ``50%``/``99%``.
    Errors are non-2xx responses plus the lines of hey's "Error distribution" (timeouts,
    connection resets), which have no status code.
    """
    match = re.search(r"^\s*Requests/sec:\s+([\d.]+)", out, re.M)
    rps = float(match.group(1)) if match else 0.0
    percentiles: dict[int, float] = {}
    statuses: dict[str, int] = {}
    transport_errors = 0
    samples: list[str] = []
    section = ""
    for line in out.splitlines():
        stripped = line.strip()
        if stripped.endswith(":") and not stripped.startswith("["):
            section = stripped
            continue
        if section == "Latency distribution:":
            pct = re.fullmatch(r"(\d+(?:\.\d+)?)% in ([\d.]+) secs", stripped)
            if pct:
                percentiles[int(float(pct.group(1)))] = float(pct.group(2)) * 1000
        elif section == "Status code distribution:":
            status = re.fullmatch(r"\[(\d{3})\]\s+(\d+) responses?", stripped)
            if status:
                statuses[status.group(1)] = statuses.get(status.group(1), 0) + int(status.group(2))
        elif section == "Error distribution:":
            err = re.fullmatch(r"\[(\d+)\]\s+(.*)", stripped)
            if err:
                transport_errors += int(err.group(1))
                samples.append(err.group(2)[:200])
    non_2xx = sum(n for code, n in statuses.items() if not code.startswith("2"))
    return HeyResult(
        rps=rps,
        p50_ms=percentiles.get(50),
        p99_ms=percentiles.get(99),
        statuses=statuses,
        transport_errors=transport_errors,
        total=sum(statuses.values()) + transport_errors,
        errors=non_2xx + transport_errors,
        error_samples=samples[:5],
    )


def hey_command(
    url: str, key: str, body: str, concurrency: int, seconds: int, headers: Mapping[str, str] | None = None
) -> list[str]:
    """The command line of one hey run, pinned to the client core.

    ``key`` is sent as ``Authorization: Bearer`` unless ``headers`` (every header of the target,
    for the peers) has its own Authorization.
    """
    sent = {"Authorization": f"Bearer {key}", **(headers or {})}
    flags = [arg for name, value in sent.items() for arg in ("-H", f"{name}: {value}")]
    return [
        "taskset", "-c", CLIENT_CORE, "hey", "-z", f"{seconds}s", "-c", str(concurrency),
        "-m", "POST", "-T", "application/json", *flags, "-d", body, url,
    ]  # fmt: skip


# --- processes -------------------------------------------------------------------------------------


class Children:
    """Child processes, each in its own process group, all killed on :meth:`close`."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.cleanups: list[Callable[[], None]] = []  # run last by close(): servers not started here

    def start(
        self, cmd: list[str], env: dict[str, str], log: Path | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in a new session (its own process group), output to ``log`` or captured."""
        out: Any = open(log, "wb") if log else subprocess.PIPE  # noqa: SIM115 - closed by the child's exit
        try:
            proc = subprocess.Popen(
                cmd, env=env, cwd=cwd or ROOT, stdout=out, stderr=subprocess.STDOUT if log else subprocess.PIPE,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        finally:
            if log:
                out.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
        """SIGTERM the process group of ``proc`` (a graceful stop), SIGKILL after ``timeout``."""
        if proc.poll() is None:
            _killpg(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _killpg(proc, signal.SIGKILL)
                proc.wait()
        _killpg(proc, signal.SIGKILL)  # whatever it left behind in its group
        if proc in self.procs:
            self.procs.remove(proc)
        return proc.returncode

    def close(self) -> None:
        """Stop every child still known, newest first."""
        for proc in reversed(list(self.procs)):
            self.stop(proc, timeout=5.0)
        for cleanup in reversed(self.cleanups):
            with suppress(Exception):
                cleanup()
        self.cleanups.clear()


def _killpg(proc: subprocess.Popen[bytes], sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def run_checked(children: Children, cmd: list[str], env: dict[str, str], timeout: float = 300.0) -> str:
    """Run ``cmd`` to completion as a managed child; return its stdout, raise with its output on failure."""
    proc = children.start(cmd, env)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        children.stop(proc, timeout=2.0)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:4])}... exited with {proc.returncode}\n{out.decode()[-3000:]}{err.decode()[-3000:]}"
        )
    return out.decode()


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    """Wait until ``url`` answers at all (any status); fail with the log tail if ``proc`` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered\n{tail(log)}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s\n{tail(log)}")


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, labelled with its path."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return f"--- tail of {path} ---\n" + "\n".join(text) + "\n--- end ---"


# --- /proc -----------------------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (uvicorn --workers N forks N children)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    """utime+stime (+ reaped children's cutime+cstime) of each pid, in clock ticks."""
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # Fields after the comm: state is index 0, so utime (field 14) is index 11.
        out[pid] = sum(int(x) for x in fields[11:15])
    return out


def reset_peak_rss(pids: list[int]) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/PID/clear_refs``); False if not allowed."""
    ok = True
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


def peak_rss_kb(pids: list[int]) -> int:
    """VmHWM (peak resident set) summed over ``pids``, in kB."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        total += int(match.group(1)) if match else 0
    return total


class ProcessMeter:
    """CPU% and peak RSS of a process tree over a measured interval.

    CPU comes from /proc/PID/stat tick deltas (100% = one core). Peak RSS is VmHWM after resetting
    it at the start of the interval; where the reset is refused, a thread samples the summed current
    RSS every 50 ms instead.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._start_ticks: dict[int, int] = {}
        self._start = 0.0
        self._sampled_kb = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reset_ok = False

    def _sample(self, pids: list[int]) -> None:
        while not self._stop.wait(0.05):
            kb = 0
            for pid in pids:
                with suppress(OSError, IndexError, ValueError):
                    kb += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB
            self._sampled_kb = max(self._sampled_kb, kb)

    def start(self) -> None:
        """Begin the interval."""
        pids = process_tree(self.pid)
        self.reset_ok = reset_peak_rss(pids)
        self._start_ticks = cpu_ticks(pids)
        self._start = time.monotonic()
        self._sampled_kb = 0
        self._stop.clear()
        self._thread = None
        if not self.reset_ok:
            self._thread = threading.Thread(target=self._sample, args=(pids,), daemon=True)
            self._thread.start()

    def stop(self) -> tuple[float, float]:
        """End the interval: (CPU% of one core, peak RSS in MB)."""
        elapsed = time.monotonic() - self._start
        pids = process_tree(self.pid)
        end_ticks = cpu_ticks(pids)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        ticks = sum(t - self._start_ticks.get(pid, 0) for pid, t in end_ticks.items())
        cpu = 100.0 * ticks / CLK_TCK / elapsed if elapsed > 0 else 0.0
        peak_kb = max(peak_rss_kb(pids) if self.reset_ok else 0, self._sampled_kb)
        return cpu, peak_kb / 1024


# --- the deployment --------------------------------------------------------------------------------


def config_yaml(upstream_base_url: str) -> str:
    """The gateway configuration: one OpenAI-compatible provider on the fake, one priced model."""
    return f"""\
providers:
  - name: bench-upstream
    kind: openai_compatible
    base_url: {upstream_base_url}
    api_key: {UPSTREAM_KEY}
    timeout: 60
models:
  - name: {MODEL}
    kind: chat
    price:
      input_per_mtok: 0.15
      output_per_mtok: 0.60
      cached_input_per_mtok: 0.075
    deployments:
      - provider: bench-upstream
        model: {MODEL}
"""


def manage(*args: str) -> list[str]:
    """The command line of ``manage.py args`` under this interpreter."""
    return [sys.executable, str(ROOT / "manage.py"), *args]


def gateway_env(data_dir: Path, args: argparse.Namespace) -> dict[str, str]:
    """The environment of the gateway and of the management commands."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "DATA_DIR": str(data_dir)}
    env["LOG_LEVEL"] = "WARNING"
    # Embedded mode unless told otherwise: do not inherit a developer's Redis or Postgres.
    for name in ("REDIS_URL", "DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DEBUG"):
        env.pop(name, None)
    # The fake upstream listens on loopback, which provider URLs may only name when allowed.
    env.setdefault("GATEWAY_UPSTREAM_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128")
    if args.redis:
        env["REDIS_URL"] = args.redis
        # The production layout: web processes append usage events, `usage_writer` (on the client
        # core, its CPU reported apart) writes the ledger. --web-drain: the web process does both.
        env["USAGE_WEB_DRAIN"] = "true" if args.web_drain else "false"
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
    return env


def quota_yaml() -> str:
    """The bench user in a group, with three quota rules whose limits are never reached.

    Requests per day and tokens per month for the user, a monthly cost budget for the group: every
    request is admitted against all three and settled into their counters, as in production.
    """
    return f"""\
groups:
  - {BENCH_GROUP}
users:
  - {{username: {BENCH_USER}, groups: [{BENCH_GROUP}]}}
quotas:
  - {{subject: "user:{BENCH_USER}", metric: requests, window: day, limit: 1000000000}}
  - {{subject: "user:{BENCH_USER}", metric: tokens, window: month, limit: 100000000000}}
  - {{subject: "group:{BENCH_GROUP}", metric: cost_usd, window: month, limit: 1000000}}
"""


def bodies() -> dict[str, str]:
    """The request body of each mode; streams ask for the usage chunk (the gateway asks for it anyway)."""
    base: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hello benchmark"}]}
    stream = {**base, "stream": True, "stream_options": {"include_usage": True}}
    return {
        "non-stream": json.dumps(base, separators=(",", ":")),
        "stream": json.dumps(stream, separators=(",", ":")),
    }


def smoke(
    url: str, key: str, body: str, label: str, log: Path, headers: Mapping[str, str] | None = None
) -> httpx.Response:
    """One request by hand, so a misconfiguration fails loudly with the response and the log."""
    response = httpx.post(
        url,
        content=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **(headers or {})},
        timeout=60,
    )
    if response.status_code != 200 or (
        b'"stream":true' in body.encode() and b"[DONE]" not in response.content
    ):
        raise RuntimeError(f"{label}: HTTP {response.status_code}: {response.text[:1000]}\n{tail(log)}")
    return response


# --- running ---------------------------------------------------------------------------------------


@contextmanager
def _signals_as_exit() -> Iterator[None]:
    """SIGTERM/SIGHUP raise SystemExit, so the `finally` blocks kill the children (Ctrl-C already does)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_hey(children: Children, cmd: list[str], seconds: int) -> HeyResult:
    """Run hey as a managed child (killed on Ctrl-C) and parse its output."""
    proc = children.start(cmd, dict(os.environ))
    try:
        out, err = proc.communicate(timeout=seconds + 60)
    finally:
        children.stop(proc, timeout=2.0)
    if proc.returncode != 0:
        raise RuntimeError(f"hey exited with {proc.returncode}: {err.decode()[-2000:]}")
    return parse_hey(out.decode())


def fmt(value: float | None, spec: str = ".2f") -> str:
    """``value`` formatted, or "-" when hey reported nothing."""
    return "-" if value is None else format(value, spec)


def added(gateway: float | None, direct: float | None) -> float | None:
    """Target minus direct, when both are known."""
    return None if gateway is None or direct is None else gateway - direct


def parse_latencies(text: str) -> list[float]:
    """``"0,50"`` -> ``[0.0, 50.0]``: the fake's delays before the first byte, one matrix each."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"need one or more latencies >= 0 ms, got {text!r}")
    return list(dict.fromkeys(values))


def percentile(ordered: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not ordered:
        return None
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


# --- targets ---------------------------------------------------------------------------------------


@dataclass
class Target:
    """Something hey sends chat completions to: the fake directly, the gateway, or a peer."""

    name: str
    label: str
    base_url: str
    key: str
    headers: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None  # None for "direct": the fake is not metered
    command: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1/chat/completions"

    def hey(self, body: str, concurrency: int, seconds: int) -> list[str]:
        return hey_command(self.url, self.key, body, concurrency, seconds, self.headers)

    def request_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json", **self.headers}


def start_peer(children: Children, name: str, port: int, upstream: str, tmp: Path, tag: str) -> Target:
    """Start peer ``name`` pinned to the gateway's core and wait until it answers."""
    launch = PEERS[name].launch(port, f"{upstream}/v1", UPSTREAM_KEY, tmp)
    log = tmp / f"{name}-{tag}.log"
    cmd = ["taskset", "-c", GATEWAY_CORE, *launch.command]
    proc = children.start(cmd, launch.env, log, cwd=launch.cwd)
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}{launch.ready_path}", proc, log, timeout=launch.startup_timeout)
    headers = {k: v for k, v in launch.headers.items() if k.lower() != "authorization"}
    auth = launch.headers.get("Authorization", "").removeprefix("Bearer ")
    return Target(name, PEERS[name].label, base, auth, headers, log, proc, cmd)


# --- time to first byte ----------------------------------------------------------------------------


async def _ttfb_samples(
    target: Target, body: str, n: int, warmup: int
) -> tuple[list[float], list[float], int]:
    """Time to the first body byte and to the last, in ms, of ``n`` streamed requests one at a time."""
    first_ms: list[float] = []
    total_ms: list[float] = []
    errors = 0
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=1)) as client:
        for i in range(warmup + n):
            started = time.perf_counter()
            first: float | None = None
            try:
                async with client.stream(
                    "POST", target.url, content=body, headers=target.request_headers()
                ) as response:
                    async for chunk in response.aiter_raw():
                        if first is None and chunk:
                            first = time.perf_counter()
                    ok = response.status_code == 200 and first is not None
            except httpx.HTTPError:
                ok = False
            done = time.perf_counter()
            if i < warmup:
                continue
            if not ok or first is None:
                errors += 1
                continue
            first_ms.append((first - started) * 1000)
            total_ms.append((done - started) * 1000)
    return first_ms, total_ms, errors


def measure_ttfb(target: Target, body: str, n: int) -> dict[str, Any]:
    """TTFB percentiles of streamed chat completions at c=1 (hey times streams to the last byte only).

    The client is httpx on asyncio in this process (on the client core); its own overhead is the
    same for every target, so the difference to "direct" is what the target adds.
    """
    first, total, errors = asyncio.run(_ttfb_samples(target, body, n, warmup=min(20, max(3, n // 10))))
    first.sort()
    total.sort()
    return {
        "n": len(first),
        "errors": errors,
        "p50_ms": percentile(first, 50),
        "p90_ms": percentile(first, 90),
        "p99_ms": percentile(first, 99),
        "mean_ms": statistics.fmean(first) if first else None,
        "total_p50_ms": percentile(total, 50),
        "total_p99_ms": percentile(total, 99),
    }


# --- output ----------------------------------------------------------------------------------------


def print_tables(document: dict[str, Any]) -> None:
    """Per upstream latency: one block per target (times in ms, RSS in MB), then time to first byte."""
    for run in document["runs"]:
        names = run["targets"]
        print(
            f"\n=== upstream latency {run['upstream_latency_ms']:g} ms ({run['seconds']} s per hey run) ==="
        )
        header = (
            f"{'target':<8} {'mode':<10} {'c':>3} {'r/s':>8} {'p50':>8} {'p99':>8} {'+p50':>8} {'+p99':>8} "
            f"{'CPU%':>6} {'RSS MB':>7} {'errors':>6} {'gw/this r/s':>11}"
        )
        print(header)
        print("-" * len(header))
        for name in names:
            for row in run["results"]:
                t = row["targets"][name]
                ratio = row["gateway_rps_ratio"].get(name)
                metered = name != "direct"
                print(
                    f"{name:<8} {row['mode']:<10} {row['concurrency']:>3} {t['rps']:>8.0f} {fmt(t['p50_ms']):>8} "
                    f"{fmt(t['p99_ms']):>8} {fmt(t.get('added_p50_ms')):>8} {fmt(t.get('added_p99_ms')):>8} "
                    f"{fmt(t.get('cpu_percent') if metered else None, '.1f'):>6} "
                    f"{fmt(t.get('peak_rss_mb') if metered else None, '.1f'):>7} {t['errors']:>6} "
                    f"{fmt(ratio, '.2f'):>11}"
                )
            print()
        n = max((v["n"] for v in run["ttfb"].values()), default=0)
        print(f"time to first byte, streams, c=1, {n} requests per target (httpx client):")
        header = f"{'target':<8} {'p50':>8} {'p90':>8} {'p99':>8} {'+p50':>8} {'+p99':>8} {'last p50':>9} {'errors':>6}"
        print(header)
        print("-" * len(header))
        for name, t in run["ttfb"].items():
            print(
                f"{name:<8} {fmt(t['p50_ms']):>8} {fmt(t['p90_ms']):>8} {fmt(t['p99_ms']):>8} "
                f"{fmt(t.get('added_p50_ms')):>8} {fmt(t.get('added_p99_ms')):>8} {fmt(t['total_p50_ms']):>9} "
                f"{t['errors']:>6}"
            )


def count_ledger(children: Children, env: dict[str, str]) -> int | None:
    """Rows in the usage ledger (after the gateway stopped and flushed), or None if unreadable."""
    code = "from quotas.models import UsageEvent; print(UsageEvent.objects.count())"
    try:
        return int(run_checked(children, manage("shell", "-c", code), env).strip().splitlines()[-1])
    except (RuntimeError, ValueError, IndexError):
        return None


def git_revision() -> str | None:
    """The checkout's commit (``+dirty`` when the work tree has changes), for the results file."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def start_private_postgres(children: Children) -> str:
    """A throw-away PostgreSQL cluster (fsync off) whose server and backends run on the client core.

    The system's PostgreSQL may schedule the ledger's inserts on the gateway's core; this one cannot.
    """
    from tests.support.servers import PrivatePostgres

    server = PrivatePostgres()
    server.start(cpus=CLIENT_CORE)
    children.cleanups.append(server.close)
    return server.url


def start_private_redis(children: Children, tmp: Path) -> str:
    """A throw-away redis-server on a free port (no persistence), on the client core; its URL."""
    if shutil.which("redis-server") is None:
        raise RuntimeError("--redis private needs redis-server (apt-get install redis-server)")
    port = free_port()
    log = tmp / "redis.log"
    cmd = ["taskset", "-c", CLIENT_CORE, "redis-server", "--port", str(port), "--bind", "127.0.0.1",
           "--save", "", "--appendonly", "no", "--dir", str(tmp)]  # fmt: skip
    proc = children.start(cmd, dict(os.environ), log)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}\n{tail(log)}")
        with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            if sock.recv(16).startswith(b"+PONG"):
                return f"redis://127.0.0.1:{port}/0"
        time.sleep(0.1)
    raise TimeoutError(f"redis-server did not answer within 15s\n{tail(log)}")


@dataclass
class Deployment:
    """What stays the same across upstream latencies: ports, the gateway's environment and key."""

    env: dict[str, str]
    tmp: Path
    upstream_port: int
    gateway_port: int
    peer_ports: dict[str, int]
    key: str
    gateway_command: list[str]

    @property
    def upstream(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"


def run_latency(
    args: argparse.Namespace, children: Children, dep: Deployment, latency: float
) -> tuple[dict[str, Any], int]:
    """The whole matrix at one upstream latency; returns its JSON block and the gateway's 2xx count.

    The fake, the gateway and the peers are started fresh for each latency (no pooled connection
    to a previous fake) and all run at once, idle but for the target being measured, so each cell
    is measured direct and through every target back to back.
    """
    seconds = 2 if args.quick else args.seconds
    concurrencies = QUICK_CONCURRENCIES if args.quick else FULL_CONCURRENCIES
    ttfb_n = args.ttfb_requests if args.ttfb_requests is not None else (50 if args.quick else 300)
    tag = f"{latency:g}ms"
    fake_log = dep.tmp / f"upstream-{tag}.log"
    fake_cmd = ["taskset", "-c", CLIENT_CORE, sys.executable, "-m", "tests.fakes.openai_upstream",
                "--port", str(dep.upstream_port), "--api-key", UPSTREAM_KEY, "--latency-ms", str(latency)]  # fmt: skip
    if args.stream_words:
        fake_cmd += ["--stream-words", str(args.stream_words)]
    fake = children.start(fake_cmd, dep.env, fake_log)
    wait_http(f"{dep.upstream}/v1/models", fake, fake_log)

    print(
        f"\n--- upstream latency {latency:g} ms: starting the gateway and {len(args.peers)} peer(s) ...",
        flush=True,
    )
    gateway_log = dep.tmp / f"gateway-{tag}.log"
    gw = children.start(dep.gateway_command, dep.env, gateway_log)
    gateway = Target("gateway", "gateway", f"http://127.0.0.1:{dep.gateway_port}", dep.key, {}, gateway_log, gw,
                     dep.gateway_command)  # fmt: skip
    wait_http(f"{gateway.base_url}/livez", gw, gateway_log)
    writer = None
    if dep.env.get("USAGE_WEB_DRAIN") == "false":
        writer = children.start(["taskset", "-c", CLIENT_CORE, *manage("usage_writer")], dep.env,
                                dep.tmp / f"usage-writer-{tag}.log")  # fmt: skip
    direct = Target("direct", "fake upstream, direct", dep.upstream, UPSTREAM_KEY, {}, fake_log)
    targets = [direct, gateway]
    targets += [
        start_peer(children, name, dep.peer_ports[name], dep.upstream, dep.tmp, tag) for name in args.peers
    ]

    body = bodies()
    ratelimit: dict[str, dict[str, str]] = {}
    for mode in MODES:
        for target in targets:
            response = smoke(
                target.url, target.key, body[mode], f"{target.name} {mode}", target.log, target.headers
            )
            if target.name == "gateway" and not args.no_quotas:
                missing = [h for h in RATELIMIT_HEADERS if h not in response.headers]
                if missing:
                    raise RuntimeError(
                        f"gateway {mode}: no {', '.join(missing)} header: the quota rules are not applied"
                    )
                ratelimit[mode] = {k: v for k, v in response.headers.items() if k.startswith("x-ratelimit-")}
    if args.warmup > 0:  # fill connection pools, JITs and caches; not recorded
        print(f"warming up ({args.warmup}s per mode and target) ...", flush=True)
        for mode in MODES:
            for target in targets:
                run_hey(children, target.hey(body[mode], max(concurrencies), args.warmup), args.warmup)

    meters = {t.name: ProcessMeter(t.proc.pid) for t in targets if t.proc is not None}
    writer_meter = ProcessMeter(writer.pid) if writer is not None else None
    rows: list[dict[str, Any]] = []
    gateway_2xx = 0
    for mode in MODES:
        for concurrency in concurrencies:
            cells: dict[str, dict[str, Any]] = {}
            for target in targets:
                time.sleep(0.5)
                meter = meters.get(target.name)
                if meter is not None:
                    meter.start()
                if target is gateway and writer_meter is not None:
                    writer_meter.start()
                result = run_hey(children, target.hey(body[mode], concurrency, seconds), seconds)
                cell: dict[str, Any] = asdict(result)
                if target is gateway and writer_meter is not None:
                    cell["usage_writer_cpu_percent"] = writer_meter.stop()[0]
                if meter is not None and target.proc is not None:
                    cell["cpu_percent"], cell["peak_rss_mb"] = meter.stop()
                    cell["peak_rss_reset"] = meter.reset_ok
                    if target.proc.poll() is not None:
                        raise RuntimeError(
                            f"{target.name} exited with {target.proc.returncode}\n{tail(target.log)}"
                        )
                if target is not direct:
                    cell["added_p50_ms"] = added(result.p50_ms, cells["direct"]["p50_ms"])
                    cell["added_p99_ms"] = added(result.p99_ms, cells["direct"]["p99_ms"])
                if target is gateway:
                    gateway_2xx += result.total - result.errors
                cells[target.name] = cell
                extra = (f" CPU {cell['cpu_percent']:5.1f}% RSS {cell['peak_rss_mb']:4.0f} MB" if "cpu_percent" in cell
                         else "")  # fmt: skip
                if "usage_writer_cpu_percent" in cell:
                    extra += f" (usage writer CPU {cell['usage_writer_cpu_percent']:.1f}%)"
                print(
                    f"{latency:>4g} ms {mode:<10} c={concurrency:<3} {target.name:<8} {result.rps:7.0f} r/s "
                    f"p50 {fmt(result.p50_ms):>7} p99 {fmt(result.p99_ms):>7} ms{extra} errors {result.errors}",
                    flush=True,
                )
            gw_rps = cells["gateway"]["rps"]
            rows.append({
                "mode": mode,
                "concurrency": concurrency,
                "seconds": seconds,
                "targets": cells,
                # gateway r/s over the peer's: > 1 means the gateway serves more.
                "gateway_rps_ratio": {n: gw_rps / c["rps"] if c["rps"] else None for n, c in cells.items()
                                      if n in PEERS},
            })  # fmt: skip

    print(f"time to first byte: {ttfb_n} streamed requests at c=1 per target ...", flush=True)
    ttfb: dict[str, dict[str, Any]] = {}
    for target in targets:
        ttfb[target.name] = measure_ttfb(target, body["stream"], ttfb_n)
        if target is not direct:
            for pct in ("p50", "p99"):
                ttfb[target.name][f"added_{pct}_ms"] = added(
                    ttfb[target.name][f"{pct}_ms"], ttfb["direct"][f"{pct}_ms"]
                )
    gateway_2xx += ttfb["gateway"]["n"]

    exit_codes = {t.name: children.stop(t.proc) for t in reversed(targets) if t.proc is not None}
    if writer is not None:  # after the gateway: its last events are drained on SIGTERM
        exit_codes["usage_writer"] = children.stop(writer)
    children.stop(fake)
    return {
        "upstream_latency_ms": latency,
        "seconds": seconds,
        "targets": [t.name for t in targets],
        "commands": {t.name: t.command for t in targets if t.command},
        "exit_codes": exit_codes,
        "gateway_ratelimit_headers": ratelimit,
        "results": rows,
        "ttfb": ttfb,
    }, gateway_2xx


def benchmark(args: argparse.Namespace, children: Children, tmp: Path) -> dict[str, Any]:
    """Set up the deployment once, run the matrix per upstream latency, return the results document."""
    data_dir = tmp / "data"
    data_dir.mkdir()
    redis_label = args.redis or None
    database_label = args.database_url or "sqlite (embedded)"
    if args.database_url == "private":
        args.database_url = start_private_postgres(children)
        database_label = f"{args.database_url} (private PostgreSQL, core {CLIENT_CORE})"
    if args.redis == "private":
        args.redis = start_private_redis(children, tmp)
        redis_label = f"{args.redis} (private redis-server, core {CLIENT_CORE})"
    env = gateway_env(data_dir, args)
    upstream_port, gateway_port = free_port(), free_port()
    print(f"setting up in {data_dir} ...", flush=True)
    run_checked(children, manage("migrate", "--noinput", "-v", "0"), env)
    config = tmp / "gateway.yaml"
    config.write_text(
        config_yaml(f"http://127.0.0.1:{upstream_port}/v1") + ("" if args.no_quotas else quota_yaml())
    )
    run_checked(children, manage("gateway_sync", str(config)), env)
    key = run_checked(
        children, manage("issue_key", "--user", BENCH_USER, "--create-user", "--name", "bench"), env
    )
    server = server_command("uvicorn", "127.0.0.1", gateway_port, args.workers)
    runtime = args.python or gateway_runtime_python()
    if runtime:  # the production install (no dev tools), running this checkout's code
        server[0] = str(runtime)
        env["PYTHONPATH"] = str(ROOT)
    else:
        print(f"note: the gateway runs on this interpreter, with the development tools; `{INSTALL_COMMAND}` "
              "installs the production runtime it should be measured on (its RSS is about 6 MB lower)")  # fmt: skip
    gw_cmd = ["taskset", "-c", GATEWAY_CORE, *server]
    dep = Deployment(
        env=env, tmp=tmp, upstream_port=upstream_port, gateway_port=gateway_port,
        peer_ports={name: free_port() for name in args.peers}, key=key.strip().splitlines()[-1].strip(),
        gateway_command=gw_cmd,
    )  # fmt: skip

    runs, gateway_2xx = [], 0
    for latency in args.upstream_latency_ms:
        run, count = run_latency(args, children, dep, latency)
        runs.append(run)
        gateway_2xx += count
    ledger_rows = count_ledger(children, env)
    return {
        "meta": {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
            "python": platform.python_version(),
            "revision": git_revision(),
            "seconds": 2 if args.quick else args.seconds,
            "quick": args.quick,
            "backend": {
                "redis": redis_label,
                "database_url": database_label,
            },
            "gateway_command": gw_cmd,
            "gateway_core": GATEWAY_CORE,
            "client_core": CLIENT_CORE,
            "upstream_latencies_ms": args.upstream_latency_ms,
            "stream_words": args.stream_words,
            "body": bodies(),
            "quota_rules": None if args.no_quotas else quota_yaml(),
            "peers": {name: PEERS[name].version() for name in args.peers},
            "gateway_2xx_measured": gateway_2xx,
            "ledger_rows_after_stop": ledger_rows,
        },
        "runs": runs,
    }


def report_errors(document: dict[str, Any]) -> bool:
    """Print every run with errors; True when the gateway or the direct runs had any (peers only warn)."""
    fatal = False
    lines = []
    for run in document["runs"]:
        tag = f"{run['upstream_latency_ms']:g} ms"
        for row in run["results"]:
            for name, res in row["targets"].items():
                if res["errors"]:
                    fatal = fatal or name in ("gateway", "direct")
                    lines.append(f"  {tag} {row['mode']} c={row['concurrency']} {name}: statuses {res['statuses']}, "
                                 f"transport errors {res['transport_errors']} {res['error_samples']}")  # fmt: skip
        for name, res in run["ttfb"].items():
            if res["errors"]:
                fatal = fatal or name in ("gateway", "direct")
                lines.append(f"  {tag} time to first byte {name}: {res['errors']} failed requests")
    if lines:
        print(
            "\nruns with errors (the gateway's or direct ones fail the bench, a peer's only warn):",
            file=sys.stderr,
        )
        print("\n".join(lines), file=sys.stderr)
    return fatal


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every gateway and direct request succeeded, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=5, help="length of each hey run (default 5)")
    parser.add_argument("--quick", action="store_true", help="2-second runs, c=1 and c=16 only")
    parser.add_argument(
        "--redis",
        default="",
        help="REDIS_URL for the gateway (Redis backends); `private` starts a redis-server",
    )
    parser.add_argument(
        "--database-url",
        default="",
        help="DATABASE_URL (default: SQLite in the temp DATA_DIR); `private` starts a PostgreSQL cluster on the client core",
    )
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers (default 1: one core)")
    parser.add_argument(
        "--upstream-latency-ms", type=parse_latencies, default=parse_latencies(DEFAULT_LATENCIES),
        help=f"the fake's delay before the first byte; a list runs the matrix once per value (default {DEFAULT_LATENCIES})",
    )  # fmt: skip
    parser.add_argument(
        "--peers", default="", help=f"also measure these peers: {','.join(PEERS)} or all (default none); "
        f"install them first with `{INSTALL_COMMAND}`",
    )  # fmt: skip
    parser.add_argument(
        "--ttfb-requests", type=int, default=None,
        help="streamed requests per target for time to first byte (default 300, --quick 50)",
    )  # fmt: skip
    parser.add_argument(
        "--no-quotas", action="store_true", help="no quota rules (default: three, never reached)"
    )
    parser.add_argument(
        "--stream-words", type=int, default=0, help="words (chunks) per reply; 0 = the fake's echo"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="seconds of unrecorded load per mode first (0 = none)"
    )
    parser.add_argument(
        "--web-drain", action="store_true",
        help="with Redis: the web process also writes the ledger (USAGE_WEB_DRAIN=true) instead of a usage_writer",
    )  # fmt: skip
    parser.add_argument(
        "--python", type=Path, default=None,
        help="the interpreter that runs the gateway (default: the production runtime that "
        f"`{INSTALL_COMMAND}` puts in var/peers/gateway-venv, else this one)",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "gateway.json")
    args = parser.parse_args(argv)
    for tool in ("hey", "taskset"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed")
    try:
        args.peers = parse_peers(args.peers)
    except ValueError as exc:
        parser.error(str(exc))
    missing = [name for name in args.peers if PEERS[name].version() is None]
    if missing:
        parser.error(f"not installed: {', '.join(missing)}; run `{INSTALL_COMMAND} {' '.join(missing)}`")

    # This process (and the management commands it starts) stays off the gateway's core.
    os.sched_setaffinity(0, {int(CLIENT_CORE)})
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    children = Children()
    keep = args.keep  # also kept after a failure, for its logs; removed after success or Ctrl-C
    try:
        with _signals_as_exit():
            try:
                document = benchmark(args, children, tmp)
            finally:
                children.close()
        print_tables(document)
        meta = document["meta"]
        print(
            f"\ngateway 2xx responses measured: {meta['gateway_2xx_measured']}; usage ledger rows after stop: "
            f"{meta['ledger_rows_after_stop']} (includes warm-up and smoke requests)"
        )
        ledger = meta["ledger_rows_after_stop"]
        if ledger is not None and ledger < meta["gateway_2xx_measured"]:
            print("WARNING: fewer ledger rows than successful gateway responses: usage events were lost",
                  file=sys.stderr)  # fmt: skip
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(document, indent=2) + "\n")
        print(f"written to {args.output}")
        if report_errors(document):
            for log in sorted(tmp.glob("gateway-*.log")):
                print(tail(log), file=sys.stderr)
            keep = True
            return 1
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; child processes stopped", file=sys.stderr)
        return 130
    except Exception as exc:
        keep = True
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        for log in sorted(tmp.glob("*.log")):
            print(tail(log), file=sys.stderr)
        return 1
    finally:
        if keep:
            print(f"temporary directory kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
