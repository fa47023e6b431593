"""Measure the ASGI servers on a trivial async Django view (`/livez`): uvicorn vs daphne.

The server runs pinned to core 0, `hey` on core 1. Usage: `python bench/asgi_servers.py [--seconds 5]`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from config.management.commands.serve import server_command  # noqa: E402
from tests.support.processes import free_port, stop, wait_http  # noqa: E402


def hey(url: str, concurrency: int, seconds: int) -> dict[str, float]:
    """Run hey pinned to core 1 and parse requests/s and latency percentiles."""
    out = subprocess.run(
        ["taskset", "-c", "1", "hey", "-z", f"{seconds}s", "-c", str(concurrency), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = float(re.search(r"50%+ in ([\d.]+) secs", out).group(1)) * 1000  # type: ignore[union-attr]
    p99 = float(re.search(r"99%+ in ([\d.]+) secs", out).group(1)) * 1000  # type: ignore[union-attr]
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "LOG_LEVEL": "WARNING"}
    results = []
    for server in ("uvicorn", "daphne"):
        port = free_port()
        cmd = ["taskset", "-c", "0", *server_command(server, "127.0.0.1", port, 1)]
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}/livez"
            wait_http(url, proc=proc)
            httpx.get(url)
            time.sleep(0.5)
            for concurrency in (1, 16, 64):
                row = {"server": server, "concurrency": concurrency, **hey(url, concurrency, args.seconds)}
                results.append(row)
                print(
                    f"{server:8} c={concurrency:<3} {row['rps']:8.0f} req/s  p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms"
                )
        finally:
            stop(proc)
    out = ROOT / "bench" / "results" / "asgi_servers.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
