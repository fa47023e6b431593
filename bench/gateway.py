"""Measure what the gateway adds: latency and throughput of chat completions, direct vs proxied.

The bench builds a throw-away deployment in a temporary DATA_DIR (migrate, ``gateway_sync`` of a
generated YAML file, ``issue_key``), starts the fake OpenAI upstream pinned to core 1 and the
gateway (the production uvicorn command line of ``manage.py serve``) pinned to core 0, then runs
``hey`` (on core 1) against the fake DIRECTLY and THROUGH the gateway, non-streaming and streaming,
at several concurrencies. It reports requests/s, p50/p99, the latency the gateway adds, the
gateway's CPU% and peak RSS, and non-2xx responses.

Usage::

    .venv/bin/python bench/gateway.py [--seconds 5] [--quick] [--redis URL] [--database-url URL]

Results go to ``bench/results/gateway.json``. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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


def hey_command(url: str, key: str, body: str, concurrency: int, seconds: int) -> list[str]:
    """The command line of one hey run, pinned to the client core."""
    return [
        "taskset", "-c", CLIENT_CORE, "hey", "-z", f"{seconds}s", "-c", str(concurrency),
        "-m", "POST", "-T", "application/json", "-H", f"Authorization: Bearer {key}", "-d", body, url,
    ]  # fmt: skip


# --- processes -------------------------------------------------------------------------------------


class Children:
    """Child processes, each in its own process group, all killed on :meth:`close`."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in a new session (its own process group), output to ``log`` or captured."""
        out: Any = open(log, "wb") if log else subprocess.PIPE  # noqa: SIM115 - closed by the child's exit
        try:
            proc = subprocess.Popen(
                cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT if log else subprocess.PIPE,
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
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
    return env


def bodies() -> dict[str, str]:
    """The request body of each mode."""
    base: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hello benchmark"}]}
    return {
        "non-stream": json.dumps(base, separators=(",", ":")),
        "stream": json.dumps({**base, "stream": True}, separators=(",", ":")),
    }


def smoke(url: str, key: str, body: str, label: str, log: Path) -> None:
    """One request by hand, so a misconfiguration fails loudly with the response and the log."""
    response = httpx.post(
        url,
        content=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=30,
    )
    if response.status_code != 200 or (
        b'"stream":true' in body.encode() and b"[DONE]" not in response.content
    ):
        raise RuntimeError(f"{label}: HTTP {response.status_code}: {response.text[:1000]}\n{tail(log)}")


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
    """Gateway minus direct, when both are known."""
    return None if gateway is None or direct is None else gateway - direct


def print_table(rows: list[dict[str, Any]]) -> None:
    """The results table (times in ms, RSS in MB)."""
    header = (
        f"{'mode':<10} {'c':>3} {'direct r/s':>10} {'gw r/s':>9} {'dir p50':>8} {'dir p99':>8} "
        f"{'gw p50':>8} {'gw p99':>8} {'+p50':>7} {'+p99':>7} {'gw CPU%':>7} {'RSS MB':>7} {'err gw':>6} {'err dir':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        d, g = row["direct"], row["gateway"]
        print(
            f"{row['mode']:<10} {row['concurrency']:>3} {d['rps']:>10.0f} {g['rps']:>9.0f} "
            f"{fmt(d['p50_ms']):>8} {fmt(d['p99_ms']):>8} {fmt(g['p50_ms']):>8} {fmt(g['p99_ms']):>8} "
            f"{fmt(row['added_p50_ms']):>7} {fmt(row['added_p99_ms']):>7} {row['gateway_cpu_percent']:>7.1f} "
            f"{row['gateway_peak_rss_mb']:>7.1f} {g['errors']:>6} {d['errors']:>7}"
        )


def count_ledger(children: Children, env: dict[str, str]) -> int | None:
    """Rows in the usage ledger (after the gateway stopped and flushed), or None if unreadable."""
    code = "from quotas.models import UsageEvent; print(UsageEvent.objects.count())"
    try:
        return int(run_checked(children, manage("shell", "-c", code), env).strip().splitlines()[-1])
    except (RuntimeError, ValueError, IndexError):
        return None


def benchmark(args: argparse.Namespace, children: Children, tmp: Path) -> dict[str, Any]:
    """Set up the deployment, run the matrix, and return the JSON document of the results."""
    seconds = 2 if args.quick else args.seconds
    concurrencies = QUICK_CONCURRENCIES if args.quick else FULL_CONCURRENCIES
    data_dir = tmp / "data"
    data_dir.mkdir()
    env = gateway_env(data_dir, args)
    upstream_port, gateway_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    gateway = f"http://127.0.0.1:{gateway_port}"

    fake_log, gateway_log = tmp / "upstream.log", tmp / "gateway.log"
    fake_cmd = ["taskset", "-c", CLIENT_CORE, sys.executable, "-m", "tests.fakes.openai_upstream",
                "--port", str(upstream_port), "--api-key", UPSTREAM_KEY, "--latency-ms", str(args.upstream_latency_ms)]  # fmt: skip
    if args.stream_words:
        fake_cmd += ["--stream-words", str(args.stream_words)]
    fake = children.start(fake_cmd, env, fake_log)

    print(f"setting up in {data_dir} ...", flush=True)
    run_checked(children, manage("migrate", "--noinput", "-v", "0"), env)
    config = tmp / "gateway.yaml"
    config.write_text(config_yaml(f"{upstream}/v1"))
    run_checked(children, manage("gateway_sync", str(config)), env)
    key = run_checked(
        children, manage("issue_key", "--user", "bench", "--create-user", "--name", "bench"), env
    )
    key = key.strip().splitlines()[-1].strip()
    wait_http(f"{upstream}/v1/models", fake, fake_log)

    gw_cmd = [
        "taskset",
        "-c",
        GATEWAY_CORE,
        *server_command("uvicorn", "127.0.0.1", gateway_port, args.workers),
    ]
    gw = children.start(gw_cmd, env, gateway_log)
    wait_http(f"{gateway}/livez", gw, gateway_log)

    body = bodies()
    direct_url, gateway_url = f"{upstream}/v1/chat/completions", f"{gateway}/v1/chat/completions"
    for mode in MODES:
        smoke(direct_url, UPSTREAM_KEY, body[mode], f"direct {mode}", fake_log)
        smoke(gateway_url, key, body[mode], f"gateway {mode}", gateway_log)
    if args.warmup > 0:  # fill connection pools and warm caches; not recorded
        print(f"warming up ({args.warmup}s per mode and target) ...", flush=True)
        for mode in MODES:
            run_hey(
                children,
                hey_command(direct_url, UPSTREAM_KEY, body[mode], max(concurrencies), args.warmup),
                args.warmup,
            )
            run_hey(children, hey_command(gateway_url, key, body[mode], max(concurrencies), args.warmup), args.warmup)  # fmt: skip

    meter = ProcessMeter(gw.pid)
    rows: list[dict[str, Any]] = []
    gateway_2xx = 0
    for mode in MODES:
        for concurrency in concurrencies:
            time.sleep(0.5)
            direct = run_hey(
                children, hey_command(direct_url, UPSTREAM_KEY, body[mode], concurrency, seconds), seconds
            )
            time.sleep(0.5)
            meter.start()
            proxied = run_hey(
                children, hey_command(gateway_url, key, body[mode], concurrency, seconds), seconds
            )
            cpu, rss = meter.stop()
            gateway_2xx += proxied.total - proxied.errors
            if gw.poll() is not None:
                raise RuntimeError(f"the gateway exited with {gw.returncode}\n{tail(gateway_log)}")
            row = {
                "mode": mode,
                "concurrency": concurrency,
                "seconds": seconds,
                "direct": asdict(direct),
                "gateway": asdict(proxied),
                "added_p50_ms": added(proxied.p50_ms, direct.p50_ms),
                "added_p99_ms": added(proxied.p99_ms, direct.p99_ms),
                "gateway_cpu_percent": cpu,
                "gateway_peak_rss_mb": rss,
                "peak_rss_reset": meter.reset_ok,
            }
            rows.append(row)
            print(
                f"{mode:<10} c={concurrency:<3} direct {direct.rps:7.0f} r/s p50 {fmt(direct.p50_ms)} ms | "
                f"gateway {proxied.rps:7.0f} r/s p50 {fmt(proxied.p50_ms)} ms p99 {fmt(proxied.p99_ms)} ms "
                f"CPU {cpu:5.1f}% RSS {rss:.0f} MB errors {proxied.errors}/{direct.errors}",
                flush=True,
            )

    exit_code = children.stop(gw)  # graceful: the usage buffer flushes on shutdown
    ledger_rows = count_ledger(children, env)
    return {
        "meta": {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "seconds": seconds,
            "quick": args.quick,
            "backend": {
                "redis": args.redis or None,
                "database_url": args.database_url or "sqlite (embedded)",
            },
            "gateway_command": gw_cmd,
            "gateway_core": GATEWAY_CORE,
            "client_core": CLIENT_CORE,
            "upstream_latency_ms": args.upstream_latency_ms,
            "stream_words": args.stream_words,
            "body": body,
            "gateway_exit_code": exit_code,
            "gateway_2xx_measured": gateway_2xx,
            "ledger_rows_after_stop": ledger_rows,
        },
        "results": rows,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every gateway request succeeded, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=5, help="length of each hey run (default 5)")
    parser.add_argument("--quick", action="store_true", help="2-second runs, c=1 and c=16 only")
    parser.add_argument("--redis", default="", help="REDIS_URL for the gateway (Redis backends)")
    parser.add_argument(
        "--database-url", default="", help="DATABASE_URL (default: SQLite in the temp DATA_DIR)"
    )
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers (default 1: one core)")
    parser.add_argument(
        "--upstream-latency-ms", type=float, default=0.0, help="the fake's delay before the first byte"
    )
    parser.add_argument(
        "--stream-words", type=int, default=0, help="words (chunks) per reply; 0 = the fake's echo"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="seconds of unrecorded load per mode first (0 = none)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "gateway.json")
    args = parser.parse_args(argv)
    for tool in ("hey", "taskset"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed")

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
        print()
        print_table(document["results"])
        errors = sum(row["gateway"]["errors"] for row in document["results"])
        direct_errors = sum(row["direct"]["errors"] for row in document["results"])
        meta = document["meta"]
        print(
            f"\ngateway 2xx responses measured: {meta['gateway_2xx_measured']}; usage ledger rows after stop: "
            f"{meta['ledger_rows_after_stop']} (includes warm-up and smoke requests)"
        )
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(document, indent=2) + "\n")
        print(f"written to {args.output}")
        if errors or direct_errors:
            print(f"\nERRORS: {errors} through the gateway, {direct_errors} direct", file=sys.stderr)
            for row in document["results"]:
                for target in ("gateway", "direct"):
                    res = row[target]
                    if res["errors"]:
                        print(f"  {row['mode']} c={row['concurrency']} {target}: statuses {res['statuses']}, "
                              f"transport errors {res['transport_errors']} {res['error_samples']}", file=sys.stderr)  # fmt: skip
            print(tail(tmp / "gateway.log"), file=sys.stderr)
            keep = True
            return 1
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; child processes stopped", file=sys.stderr)
        return 130
    except Exception as exc:
        keep = True
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        for log in (tmp / "gateway.log", tmp / "upstream.log"):
            if log.exists():
                print(tail(log), file=sys.stderr)
        return 1
    finally:
        if keep:
            print(f"temporary directory kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
