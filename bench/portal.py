"""Portal latency in real Chromium: first token on screen after the upstream's, and a 500-message page.

    .venv/bin/python bench/portal.py [--turns 20] [--opens 10]

A throw-away deployment (SQLite, in-process backends, a temporary DATA_DIR) serves the platform
with the production command line (`manage.py serve`'s uvicorn, pinned to core 0). The fake OpenAI
upstream runs in this process and notes the wall-clock time at which it writes the first SSE event
that carries text. Chromium (Debian's, through Playwright) signs in, sends a message per turn and
notes, with a MutationObserver, when the answer's first text is in the page and when the next frame
is drawn; the difference with the upstream's time is what the portal adds (one machine, one clock).
It also opens a conversation of 500 stored messages several times and reads the Navigation Timing
of each load: time to the last byte of the HTML and to the `load` event.

Prints the figures and writes them to bench/results/portal.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gateway import GATEWAY_CORE, UPSTREAM_KEY, Children, config_yaml, free_port, wait_http  # noqa: E402
from config.management.commands.serve import server_command  # noqa: E402

OBSERVER = """
(() => {
  window.__firstText = [];
  const seen = new WeakSet();
  const now = () => performance.timeOrigin + performance.now();
  new MutationObserver(() => {
    for (const live of document.querySelectorAll("article.msg-assistant [data-live]")) {
      if (seen.has(live) || !live.textContent) continue;
      seen.add(live);
      const entry = { dom: now(), frame: null };
      window.__firstText.push(entry);
      requestAnimationFrame(() => { entry.frame = now(); });
    }
  }).observe(document, { subtree: true, childList: true, characterData: true });
})();
"""


class FirstTextRecorder:
    """ASGI wrapper of the fake upstream: the wall-clock time of each stream's first text event."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.times: list[float] = []
        self.lock = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/chat/completions"):
            await self.app(scope, receive, send)
            return
        noted = False

        async def timed_send(message: dict[str, Any]) -> None:
            nonlocal noted
            body = message.get("body", b"")
            has_text = b'"content":"' in body and b'"content":""' not in body
            if message["type"] == "http.response.body" and not noted and has_text:
                noted = True
                await send(message)
                with self.lock:
                    self.times.append(time.time() * 1000)
                return
            await send(message)

        await self.app(scope, receive, timed_send)


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 2),
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
        "max": round(ordered[-1], 2),
    }


def open_timed(page: Any, url: str, articles: int, verbose: bool) -> dict[str, float]:
    """Load ``url`` and return its Navigation Timing: last byte of the HTML, DOM interactive, load."""
    page.goto(url, wait_until="load")
    if page.locator("article").count() != articles:
        raise RuntimeError(f"{url}: expected {articles} messages")
    timing: dict[str, float] = page.evaluate(
        "(() => { const t = performance.getEntriesByType('navigation')[0];"
        " const paint = performance.getEntriesByName('first-contentful-paint')[0];"
        " return {html_last_byte: t.responseEnd - t.startTime, dom_interactive: t.domInteractive - t.startTime,"
        " first_contentful_paint: paint ? paint.startTime : -1, load_event: t.loadEventEnd - t.startTime}; })()"
    )
    if verbose:
        print(url, {k: round(v, 1) for k, v in timing.items()})
    return timing


def setup_django(data_dir: Path) -> dict[str, str]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "DATA_DIR": str(data_dir)}
    for name in ("REDIS_URL", "DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DEBUG"):
        env.pop(name, None)
    env["LOG_LEVEL"] = "WARNING"
    env["GATEWAY_UPSTREAM_ALLOWED_NETWORKS"] = "127.0.0.0/8,::1/128"
    os.environ.clear()
    os.environ.update(env)
    import django

    django.setup()
    return env


def run(args: argparse.Namespace, children: Children, tmp: Path) -> dict[str, Any]:
    data_dir = tmp / "data"
    data_dir.mkdir()
    env = setup_django(data_dir)
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client
    from playwright.sync_api import expect, sync_playwright

    from tests.fakes.openai_upstream import FakeOpenAI
    from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
    from tests.support.conversations import conversation_of

    print(f"setting up in {data_dir} ...", flush=True)
    call_command("migrate", verbosity=0)
    fake = FakeOpenAI(api_key=UPSTREAM_KEY, chunk_delay_ms=args.chunk_delay_ms, stream_words=8)
    recorder = FirstTextRecorder(fake.app)
    fake.app = recorder  # type: ignore[assignment]
    fake.start()
    config = tmp / "gateway.yaml"
    config.write_text(config_yaml(f"{fake.url}/v1"))
    call_command("gateway_sync", str(config), verbosity=0)
    user = User.objects.create_user("bench", "bench@example.com", "bench-password-0123")
    long_chat, short_chat = conversation_of(user, 250), conversation_of(user, 2, title="Short chat")
    client = Client()
    client.force_login(user)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp / "portal.log"
    server = children.start(
        ["taskset", "-c", GATEWAY_CORE, *server_command("uvicorn", "127.0.0.1", port, 1)], env, log
    )
    wait_http(f"{url}/livez", server, log)

    results: dict[str, Any] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context()
        context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": url}])
        page = context.new_page()

        # A 500-message conversation and a 4-message one (the baseline), each opened --opens times.
        for name, chat, size in (
            ("open_500_messages_ms", long_chat, 500),
            ("open_4_messages_ms", short_chat, 4),
        ):
            loads = [
                open_timed(page, f"{url}/chat/c/{chat.pk}/", size, args.verbose)
                for _ in range(args.opens + 1)
            ]
            results[name] = {
                metric: percentiles([t[metric] for t in loads[1:]])  # the first load warms up
                for metric in ("html_last_byte", "dom_interactive", "first_contentful_paint", "load_event")
            }

        # First token: one new conversation, --turns messages one after the other.
        page.add_init_script(OBSERVER)
        page.goto(f"{url}/chat/")
        page.get_by_label("Model", exact=True).select_option("gpt-4o-mini")
        box = page.get_by_label("Your message", exact=True)
        for turn in range(args.turns + 1):
            box.fill(f"Turn {turn}: hello")
            box.press("Enter")
            if turn == 0:
                page.wait_for_url("**/chat/c/*/")
                box = page.get_by_label("Your message", exact=True)
            answer = page.locator("article.msg-assistant").nth(turn)
            expect(answer).to_have_attribute("data-status", "complete", timeout=30_000)
        seen = page.evaluate("window.__firstText")
        browser.close()
    upstream = recorder.times
    if len(seen) != len(upstream):
        raise RuntimeError(f"{len(upstream)} upstream streams but {len(seen)} answers seen in the page")
    dom = [s["dom"] - u for s, u in zip(seen, upstream, strict=True)][1:]  # the first turn warms up
    frame = [s["frame"] - u for s, u in zip(seen, upstream, strict=True) if s["frame"]][1:]
    results["first_token_after_upstream_ms"] = {"in_dom": percentiles(dom), "next_frame": percentiles(frame)}
    fake.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--turns", type=int, default=20, help="chat turns measured (default 20)")
    parser.add_argument("--opens", type=int, default=10, help="loads of the 500-message page (default 10)")
    parser.add_argument(
        "--chunk-delay-ms", type=float, default=50.0, help="upstream delay between SSE events"
    )
    parser.add_argument("--verbose", action="store_true", help="print each load's timing entries")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "portal.json")
    args = parser.parse_args(argv)
    children = Children()
    with tempfile.TemporaryDirectory(prefix="bench-portal-") as tmp:
        try:
            results = run(args, children, Path(tmp))
        finally:
            children.close()
    targets = {
        "first_token_after_upstream_ms.next_frame.p50": 50,
        "open_500_messages_ms.load_event.p50": 1000,
    }
    doc = {"results": results, "targets": targets, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2))
    first = results["first_token_after_upstream_ms"]
    print(
        f"first token on screen after the upstream's (ms): in DOM {first['in_dom']}, drawn {first['next_frame']}"
    )
    for name in ("open_500_messages_ms", "open_4_messages_ms"):
        print(f"{name}: " + ", ".join(f"{metric} {values}" for metric, values in results[name].items()))
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
