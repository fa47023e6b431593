"""Serve the whole platform in the foreground: ASGI web server plus a Celery worker.

Ctrl-C (SIGINT) or SIGTERM stops all of it. This is what `make run` calls; production runs the web
server and the workers as separate services instead (see the README).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand


def server_command(server: str, host: str, port: int, workers: int) -> list[str]:
    """The command line of the ASGI server `server` (uvicorn or daphne)."""
    if server == "uvicorn":
        return [
            sys.executable, "-m", "uvicorn", "config.asgi:application",
            "--host", host, "--port", str(port), "--workers", str(workers),
            "--loop", "uvloop", "--http", "config.http:HttpToolsProtocol", "--lifespan", "on",
            "--no-access-log", "--timeout-graceful-shutdown", "10",
        ]  # fmt: skip
    if server == "daphne":
        return [sys.executable, "-m", "daphne", "-b", host, "-p", str(port), "config.asgi:application"]
    raise ValueError(f"unknown ASGI server {server!r} (uvicorn or daphne)")


def prometheus_dir() -> str:
    """The metrics directory shared by the web workers and the Celery worker, emptied of old samples.

    prometheus_client's multiprocess mode: each process writes its own files there, /metrics adds
    them up. Emptied at every start, or a dead process's counters and gauges would live on.
    """
    path = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or settings.DATA_DIR / "prometheus")
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.db"):  # only prometheus_client's files, whatever the directory is
        old.unlink(missing_ok=True)
    return str(path)


class Command(BaseCommand):
    help = "Migrate, ensure a superuser, and serve web + Celery worker in the foreground."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default=settings.HOST)
        parser.add_argument("--port", type=int, default=settings.PORT)
        parser.add_argument("--server", default=settings.ASGI_SERVER, choices=["uvicorn", "daphne"])
        parser.add_argument("--workers", type=int, default=settings.WEB_CONCURRENCY)
        parser.add_argument("--no-worker", action="store_true", help="do not start a Celery worker")
        parser.add_argument("--no-migrate", action="store_true")

    def handle(self, *args: Any, **opts: Any) -> None:
        settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
        if not opts["no_migrate"]:
            call_command("migrate", interactive=False, verbosity=1)
            call_command("ensure_superuser")
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
        env["PROMETHEUS_MULTIPROC_DIR"] = prometheus_dir()
        children: list[subprocess.Popen[bytes]] = []
        if settings.SERVE_WITH_WORKER and not opts["no_worker"]:
            worker = [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel", "INFO",
                      "--concurrency", "1", "-Q", "celery,transcription,maintenance",
                      # The maintenance beat, embedded: fine for one host (see the production guide).
                      "--beat", "--schedule", settings.CELERY_BEAT_SCHEDULE_FILENAME]  # fmt: skip
            children.append(subprocess.Popen(worker, env=env))
        if settings.REDIS_URL and not settings.USAGE_WEB_DRAIN:
            # The web processes only append usage events: this process writes them to the ledger.
            children.append(subprocess.Popen([sys.executable, "manage.py", "usage_writer"], env=env,
                                             cwd=settings.BASE_DIR))  # fmt: skip
        cmd = server_command(opts["server"], opts["host"], opts["port"], opts["workers"])
        children.append(subprocess.Popen(cmd, env=env))
        self.stdout.write(
            f"Serving on http://{opts['host']}:{opts['port']}/ with {opts['server']}. Ctrl-C stops."
        )

        stopping = False

        def stop(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            while not stopping and all(child.poll() is None for child in children):
                time.sleep(0.2)
        finally:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 15
            for child in children:
                try:
                    child.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.kill()
        failed = [child.args for child in children if child.returncode not in (0, -signal.SIGTERM, None)]
        if failed and not stopping:
            raise SystemExit(1)
