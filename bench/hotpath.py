"""CPU per call of two parts of the gateway's hot path, each the old way and the current way.

    .venv/bin/python bench/hotpath.py [--calls 8000]

* ``redis``: one quota admission script call (three counters), through redis-py's registered
  script (``script``, one EVALSHA per call, as before), through ``quotas.scripts`` (``batched``:
  concurrent calls share a pipeline) and the same with commands packed by hiredis (``hiredis``, as
  the gateway's client does), against a throw-away redis-server on core 1.
* ``upstream``: one POST of a chat completion to the fake OpenAI upstream (core 1) with the body
  read, through httpx's API on aiohttp (``httpx-aiohttp``, as before) and through
  ``gateway.upstream`` (``aiohttp``, the session used directly).

Each (part, way, concurrency) runs in a fresh process pinned to core 0: warm-up calls, then
``--calls`` calls from 1, 16 or 64 concurrent tasks on uvloop; it prints the process's CPU time per
call and the calls per second. Results go to ``bench/results/hotpath.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello benchmark"}]}'
HEADERS = {"authorization": "Bearer sk-hotpath", "content-type": "application/json", "accept": "*/*",
           "accept-encoding": "identity", "user-agent": "llm-control-gateway"}  # fmt: skip
WAYS = {"redis": ("script", "batched", "hiredis"), "upstream": ("httpx-aiohttp", "aiohttp")}


async def _redis_calls(way: str, url: str, concurrency: int, calls: int) -> tuple[float, float]:
    import redis.asyncio as aioredis

    from quotas.engine import ADMIT_LUA, READY_KEY
    from quotas.scripts import batcher_for, use_hiredis_packing

    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=128, timeout=2, socket_timeout=2,
                                                    health_check_interval=30)  # fmt: skip
    if way == "hiredis":
        use_hiredis_packing(pool)
    client = aioredis.Redis(connection_pool=pool)
    await client.set(READY_KEY, 1)
    script = client.register_script(ADMIT_LUA)
    keys = ["q:{u1}:1:0", "q:{u1}:2:0", "q:{g1}:3:0", READY_KEY]
    args: list[Any] = ["1e9", "1", 86400, "1e12", "30", 86400, "1e6", "0.001", 86400]

    async def one() -> Any:
        if way == "script":
            return await script(keys=keys, args=args)
        return await batcher_for(client).call(ADMIT_LUA, keys, args)

    try:
        return await _timed(one, concurrency, calls)
    finally:
        await client.aclose()


async def _upstream_calls(way: str, url: str, concurrency: int, calls: int) -> tuple[float, float]:
    import httpx

    if way == "httpx-aiohttp":
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(limits=httpx.Limits(max_connections=256, max_keepalive_connections=256),
                                     trust_env=False)  # fmt: skip
        parsed, timeout = httpx.URL(url), httpx.Timeout(30, connect=5).as_dict()

        async def one() -> Any:
            request = httpx.Request(
                "POST", parsed, headers=HEADERS, content=BODY, extensions={"timeout": timeout}
            )
            response = await transport.handle_async_request(request)
            body = b"".join([chunk async for chunk in response.aiter_raw()])
            await response.aclose()
            return body

        close = transport.aclose
    else:
        from gateway.upstream import AiohttpUpstream

        upstream = AiohttpUpstream(max_connections=256)

        async def one() -> Any:
            response = await upstream.send("POST", url, HEADERS, BODY, read_timeout=30, connect_timeout=5)
            body = b"".join([chunk async for chunk in response.aiter_raw()])
            await response.aclose()
            return body

        close = upstream.aclose
    try:
        return await _timed(one, concurrency, calls)
    finally:
        await close()


async def _timed(one: Any, concurrency: int, calls: int) -> tuple[float, float]:
    await asyncio.gather(*(one() for _ in range(200)))  # warm: connections, scripts, caches

    async def worker() -> None:
        for _ in range(calls // concurrency):
            await one()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    done = calls // concurrency * concurrency
    return (time.process_time() - cpu) / done, done / (time.perf_counter() - wall)


def child(part: str, way: str, url: str, concurrency: int, calls: int) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django
    import uvloop

    django.setup()
    run = _redis_calls if part == "redis" else _upstream_calls
    cpu, rate = uvloop.run(run(way, url, concurrency, calls))
    print(json.dumps({"part": part, "way": way, "concurrency": concurrency, "cpu_us_per_call": round(cpu * 1e6, 1),
                      "calls_per_s": round(rate)}))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=8000)
    parser.add_argument(
        "--child", nargs=4, metavar=("PART", "WAY", "URL", "CONCURRENCY"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        part, way, url, concurrency = args.child
        child(part, way, url, int(concurrency), args.calls)
        return 0
    for tool in ("taskset", "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    from tests.support.processes import free_port

    tmp = Path(tempfile.mkdtemp(prefix="bench-hotpath-"))
    redis_port, upstream_port = free_port(), free_port()
    env = {**os.environ, "DATA_DIR": str(tmp), "DJANGO_SETTINGS_MODULE": "config.settings"}
    for name in ("REDIS_URL", "DATABASE_URL"):
        env.pop(name, None)
    servers = [
        subprocess.Popen(
            [
                "taskset",
                "-c",
                "1",
                "redis-server",
                "--port",
                str(redis_port),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        ),  # fmt: skip
        subprocess.Popen(
            [
                "taskset",
                "-c",
                "1",
                sys.executable,
                "-m",
                "tests.fakes.openai_upstream",
                "--port",
                str(upstream_port),
                "--api-key",
                "sk-hotpath",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),  # fmt: skip
    ]
    urls = {"redis": f"redis://127.0.0.1:{redis_port}/0",
            "upstream": f"http://127.0.0.1:{upstream_port}/v1/chat/completions"}  # fmt: skip
    results = []
    try:
        time.sleep(1.5)
        for part, ways in WAYS.items():
            for concurrency in (1, 16, 64):
                for way in ways:
                    out = subprocess.run(
                        ["taskset", "-c", "0", sys.executable, __file__, "--calls", str(args.calls), "--child",
                         part, way, urls[part], str(concurrency)],
                        env=env, cwd=ROOT, capture_output=True, text=True, check=True,
                    ).stdout  # fmt: skip
                    row = json.loads(out.strip().splitlines()[-1])
                    results.append(row)
                    print(f"{part:9} {way:14} c={concurrency:<3} {row['cpu_us_per_call']:7.1f} µs CPU per call "
                          f"{row['calls_per_s']:7d} calls/s", flush=True)  # fmt: skip
    finally:
        for server in servers:
            server.terminate()
            server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "hotpath.json").write_text(json.dumps({"calls": args.calls, "results": results}, indent=2))
    print("written to", out_dir / "hotpath.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
