"""Measure how the gateway's throughput grows with web processes on one database and one Redis.

For each process count (``--processes 1,2,4``) the bench starts that many gateway processes (the
production uvicorn command line of ``manage.py serve``, one worker each, each pinned to a core),
then runs one ``hey`` per process at once, the total concurrency split between them (a client-side
round-robin), non-streaming chat completions against the fake OpenAI upstream. It reports the
summed requests/s, the scaling factor over the smallest count, p50/p99, each process's CPU%, and
errors. By default the bench user has a requests rule and a tokens rule (limits far out of reach),
so every request is admitted and settled on the shared counters, as in production.

The deployment, the fake upstream, ``hey`` and the process handling are those of
``bench/gateway.py``, imported from it. Usage::

    .venv/bin/python bench/scaleout.py [--processes 1,2,4] [--seconds 5] [--concurrency 32]
        [--redis URL] [--database-url URL] [--no-rules]

Results go to ``bench/results/scaleout-<time>.json``. Other load on the machine shows in the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gateway import (  # noqa: E402
    CLIENT_CORE,
    MODEL,
    UPSTREAM_KEY,
    Children,
    HeyResult,
    ProcessMeter,
    _signals_as_exit,
    bodies,
    config_yaml,
    count_ledger,
    free_port,
    gateway_env,
    hey_command,
    manage,
    parse_hey,
    run_checked,
    smoke,
    tail,
    wait_http,
)
from config.management.commands.serve import server_command  # noqa: E402

BENCH_USER = "bench"
RULES = f"""\
quotas:
  - {{subject: "user:{BENCH_USER}", metric: requests, window: day, limit: 1000000000}}
  - {{subject: "user:{BENCH_USER}", metric: tokens, window: day, limit: 100000000000}}
"""


def gateway_cores(count: int, cores: list[int]) -> list[int]:
    """The core of each gateway process: round-robin over ``cores``, the client's core last.

    With more than two cores the client's core is left to hey and the fake; on two, the second
    gateway has to share it (reported as such).
    """
    client = int(CLIENT_CORE)
    others = [c for c in cores if c != client]
    order = others if len(cores) > 2 and count <= len(others) else [*others, client]
    return [order[i % len(order)] for i in range(count)]


def run_hey_parallel(children: Children, cmds: list[list[str]], seconds: int) -> list[HeyResult]:
    """Run several hey commands at once (managed children) and parse each one's output."""
    procs = [children.start(cmd, dict(os.environ)) for cmd in cmds]
    results = []
    try:
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=seconds + 60)
            except subprocess.TimeoutExpired:
                raise RuntimeError("hey did not finish in time") from None
            if proc.returncode != 0:
                raise RuntimeError(f"hey exited with {proc.returncode}: {err.decode()[-2000:]}")
            results.append(parse_hey(out.decode()))
    finally:
        for proc in procs:
            children.stop(proc, timeout=2.0)
    return results


def measure(
    args: argparse.Namespace, children: Children, env: dict[str, str], tmp: Path, key: str, count: int
) -> dict[str, Any]:
    """Start ``count`` gateways, load them all at once, stop them; the row of the results."""
    cores = gateway_cores(count, args.cores)
    body = bodies()[args.mode]
    gateways = []
    for i, core in enumerate(cores):
        port, log = free_port(), tmp / f"gateway-{count}-{i}.log"
        cmd = ["taskset", "-c", str(core), *server_command("uvicorn", "127.0.0.1", port, 1)]
        gateways.append((children.start(cmd, env, log), f"http://127.0.0.1:{port}", log))
    try:
        for proc, url, log in gateways:
            wait_http(f"{url}/livez", proc, log)
            smoke(f"{url}/v1/chat/completions", key, body, f"gateway {url}", log)
        per_hey = max(1, args.concurrency // count)
        urls = [f"{url}/v1/chat/completions" for _, url, _ in gateways]
        if args.warmup > 0:
            run_hey_parallel(
                children, [hey_command(u, key, body, per_hey, args.warmup) for u in urls], args.warmup
            )
        time.sleep(0.5)
        meters = [ProcessMeter(proc.pid) for proc, _, _ in gateways]
        for meter in meters:
            meter.start()
        results = run_hey_parallel(children, [hey_command(u, key, body, per_hey, args.seconds) for u in urls], args.seconds)  # fmt: skip
        usage = [meter.stop() for meter in meters]
        for proc, _, log in gateways:
            if proc.poll() is not None:
                raise RuntimeError(f"a gateway exited with {proc.returncode}\n{tail(log)}")
    finally:
        exit_codes = [children.stop(proc) for proc, _, _ in gateways]  # graceful: buffers flush
    ok = sum(r.total - r.errors for r in results)
    p50s = [r.p50_ms for r in results if r.p50_ms is not None]
    p99s = [r.p99_ms for r in results if r.p99_ms is not None]
    return {
        "processes": count,
        "cores": cores,
        "concurrency_per_process": per_hey,
        "rps": sum(r.rps for r in results),
        "rps_per_process": [r.rps for r in results],
        "p50_ms_max": max(p50s) if p50s else None,
        "p99_ms_max": max(p99s) if p99s else None,
        "cpu_percent": [cpu for cpu, _ in usage],
        "peak_rss_mb": [rss for _, rss in usage],
        "ok": ok,
        "errors": sum(r.errors for r in results),
        "exit_codes": exit_codes,
        "hey": [asdict(r) for r in results],
    }


def benchmark(args: argparse.Namespace, children: Children, tmp: Path) -> dict[str, Any]:
    """Set up the deployment once, measure every process count, return the JSON document."""
    data_dir = tmp / "data"
    data_dir.mkdir()
    env = gateway_env(data_dir, args)
    upstream_port = free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    fake_log = tmp / "upstream.log"
    fake_cmd = ["taskset", "-c", CLIENT_CORE, sys.executable, "-m", "tests.fakes.openai_upstream",
                "--port", str(upstream_port), "--api-key", UPSTREAM_KEY]  # fmt: skip
    fake = children.start(fake_cmd, env, fake_log)

    print(f"setting up in {data_dir} ...", flush=True)
    run_checked(children, manage("migrate", "--noinput", "-v", "0"), env)
    out = run_checked(children, manage("issue_key", "--user", BENCH_USER, "--create-user", "--name", "scaleout"), env)  # fmt: skip
    key = out.strip().splitlines()[-1].strip()
    config = tmp / "gateway.yaml"
    config.write_text(config_yaml(f"{upstream}/v1") + ("" if args.no_rules else RULES))
    run_checked(children, manage("gateway_sync", str(config)), env)
    wait_http(f"{upstream}/v1/models", fake, fake_log)
    ledger_before = count_ledger(children, env)

    rows = []
    for count in args.processes:
        row = measure(args, children, env, tmp, key, count)
        rows.append(row)
        scaling = row["rps"] / rows[0]["rps"] if rows[0]["rps"] else 0.0
        print(
            f"{count} process(es) on cores {row['cores']}: {row['rps']:7.0f} r/s, x{scaling:.2f} "
            f"(per process {', '.join(f'{r:.0f}' for r in row['rps_per_process'])}; "
            f"CPU% {', '.join(f'{c:.0f}' for c in row['cpu_percent'])}) errors {row['errors']}",
            flush=True,
        )
    smallest = rows[0]["rps"]
    for row in rows:
        row["scaling"] = row["rps"] / smallest if smallest else None
    ledger_after = count_ledger(children, env)
    return {
        "meta": {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "seconds": args.seconds,
            "mode": args.mode,
            "concurrency_total": args.concurrency,
            "model": MODEL,
            "rules": not args.no_rules,
            "backend": {
                "redis": args.redis or None,
                "database_url": args.database_url or "sqlite (embedded)",
            },
            "client_core": CLIENT_CORE,
            "ledger_rows_added": None
            if ledger_before is None or ledger_after is None
            else ledger_after - ledger_before,
            "ok_measured": sum(row["ok"] for row in rows),
        },
        "results": rows,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    """processes, summed r/s, r/s per process, scaling over the first row, latency, CPU, errors."""
    header = f"{'procs':>5} {'r/s':>8} {'r/s/proc':>9} {'scaling':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU% each':>14} {'errors':>6}"  # fmt: skip
    print(header)
    print("-" * len(header))
    for row in rows:
        p50, p99 = row["p50_ms_max"], row["p99_ms_max"]
        print(
            f"{row['processes']:>5} {row['rps']:>8.0f} {row['rps'] / row['processes']:>9.0f} "
            f"{row['scaling'] or 0:>8.2f} {'-' if p50 is None else f'{p50:.1f}':>7} "
            f"{'-' if p99 is None else f'{p99:.1f}':>7} {'/'.join(f'{c:.0f}' for c in row['cpu_percent']):>14} "
            f"{row['errors']:>6}"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every request succeeded, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--processes", default="1,2", help="process counts, comma-separated (default 1,2)")
    parser.add_argument("--seconds", type=int, default=5, help="length of each measured run (default 5)")
    parser.add_argument("--concurrency", type=int, default=32, help="total hey connections (default 32)")
    parser.add_argument("--mode", choices=("non-stream", "stream"), default="non-stream")
    parser.add_argument("--redis", default="", help="REDIS_URL (shared counters; default: embedded)")
    parser.add_argument("--database-url", default="", help="DATABASE_URL (default: SQLite in a temp dir)")
    parser.add_argument("--no-rules", action="store_true", help="no quota rules: admission is skipped")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of unrecorded load first (0 = none)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--output", type=Path, default=None, help="default bench/results/scaleout-<time>.json"
    )
    args = parser.parse_args(argv)
    args.web_drain = True  # no usage_writer here: with Redis, the web processes write the ledger
    try:
        args.processes = [int(p) for p in args.processes.split(",") if p.strip()]
    except ValueError:
        parser.error("--processes takes integers, e.g. 1,2,4")
    if not args.processes or min(args.processes) < 1:
        parser.error("--processes needs at least one count of 1 or more")
    for tool in ("hey", "taskset"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed")
    output = args.output or ROOT / "bench" / "results" / f"scaleout-{time.strftime('%Y%m%d-%H%M%S')}.json"

    args.cores = sorted(os.sched_getaffinity(0))  # before this process pins itself
    os.sched_setaffinity(0, {int(CLIENT_CORE)})  # this process and its management commands
    tmp = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    children = Children()
    keep = args.keep
    try:
        with _signals_as_exit():
            try:
                document = benchmark(args, children, tmp)
            finally:
                children.close()
        print()
        print_table(document["results"])
        meta = document["meta"]
        print(
            f"\n2xx responses measured: {meta['ok_measured']}; ledger rows added: {meta['ledger_rows_added']} "
            "(includes smoke and warm-up requests)"
        )
        if any(len(set(row["cores"])) < row["processes"] or int(CLIENT_CORE) in row["cores"] for row in document["results"]):  # fmt: skip
            print(
                f"note: some gateway processes share a core with another gateway or with hey and the fake "
                f"upstream (core {CLIENT_CORE}): the scaling factor understates what separate cores would give, "
                "and other load on the machine shows in every figure."
            )
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(document, indent=2) + "\n")
        print(f"written to {output}")
        if any(row["errors"] for row in document["results"]):
            print("\nERRORS: see the hey results in the JSON file", file=sys.stderr)
            keep = True
            return 1
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; child processes stopped", file=sys.stderr)
        return 130
    except Exception as exc:
        keep = True
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if keep:
            print(f"temporary directory kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
