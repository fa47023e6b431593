"""Chat and playground in a real browser (Debian's Chromium via Playwright) against the live server
and the fake upstream: streaming that visibly grows, Stop, Regenerate, model switch, export, the
playground's side-by-side comparison and "view code", and no CSP violation on any page (admin
included). Screenshots go to tests/artifacts/ (chat.png, chat-dark.png, chat-phone.png, playground.png).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from portal.models import Conversation, Message
from quotas.models import UsageEvent
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.browser import ARTIFACTS, signed_in_page
from tests.support.live import LiveServer

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


def watched(page: Any) -> list[str]:
    """Collect CSP violations and script errors of ``page`` (both must stay empty)."""
    problems: list[str] = []
    page.add_init_script(WATCH_CSP)

    def console(message: Any) -> None:
        # The admin's pages have no icon link, so Chromium asks for /favicon.ico (a 404 not ours).
        if message.type == "error" and not str(message.location.get("url", "")).endswith("/favicon.ico"):
            problems.append(message.text)

    page.on("console", console)
    page.on("pageerror", lambda e: problems.append(str(e)))
    return problems


def csp_violations(page: Any) -> list[str]:
    return list(page.evaluate("window.__csp || []"))


def observe_growth(locator: Any, samples: int = 4, interval: float = 0.25) -> list[int]:
    lengths = []
    for _ in range(samples):
        lengths.append(len(locator.inner_text()))
        time.sleep(interval)
    return lengths


def test_chat_streams_stops_regenerates_switches_model_and_exports(
    browser: Any, portal: LiveServer, alice: User, fake: FakeOpenAI
) -> None:
    from playwright.sync_api import expect

    fake.behaviour(
        chunk_delay_ms=150, stream_words=40, reply_text="Some *streamed* words for the browser test"
    )
    page = signed_in_page(browser, portal.url, alice, accept_downloads=True)
    problems = watched(page)
    page.goto(f"{portal.url}/chat/")
    page.get_by_label("Model", exact=True).select_option("gpt-4o-mini")
    page.get_by_label("Your message", exact=True).fill("Hello browser")
    page.get_by_label("Your message", exact=True).press("Enter")  # Enter sends
    page.wait_for_url("**/chat/c/*/")

    # Tokens arrive incrementally: the growing answer is longer at each observation.
    live = page.locator("article.msg-assistant [data-live]")
    expect(live).not_to_have_text("", timeout=10_000)
    lengths = observe_growth(live)
    assert all(b > a for a, b in zip(lengths, lengths[1:], strict=False)), lengths
    answer = page.locator("article.msg-assistant").last
    expect(answer).to_have_attribute("data-status", "complete", timeout=20_000)
    expect(answer.locator(".md em").first).to_have_text("streamed")  # rendered once at the end
    conversation = Conversation.objects.get(owner=alice)
    expect(page.locator("#conv-totals")).to_contain_text("40 out tokens")

    # Shift+Enter is a new line, not a send.
    box = page.get_by_label("Your message", exact=True)
    box.fill("Second")
    box.press("Shift+Enter")
    box.type("line")
    assert box.input_value() == "Second\nline"
    box.press("Enter")
    second = page.locator("article.msg-assistant").nth(1)
    expect(second.locator("[data-live]")).not_to_have_text("", timeout=10_000)
    time.sleep(0.6)
    page.get_by_role("button", name="Stop generating").click()
    expect(second).to_have_attribute("data-status", "stopped", timeout=10_000)
    expect(second.locator(".msg-meta")).to_contain_text("stopped")
    stopped = Message.objects.filter(conversation=conversation, role="assistant").order_by("id")[1]
    assert stopped.status == "stopped" and 0 < len(stopped.content.split()) < 40
    assert stopped.content in "Some *streamed* words for the browser test " * 10

    # Regenerate the stopped answer, faster this time.
    fake.behaviour(
        chunk_delay_ms=5, stream_words=None, reply_text="A regenerated answer:\n\n```python\nprint(1)\n```"
    )
    second.get_by_role("button", name="Regenerate").click()
    regenerated = page.locator("article.msg-assistant").nth(1)
    expect(regenerated).to_contain_text("A regenerated answer", timeout=10_000)
    expect(regenerated).to_have_attribute("data-status", "complete")
    # Highlighted code with a copy button (added by chat.js to each code block).
    expect(regenerated.locator(".codeblock .highlight .nb")).to_have_text("print")
    expect(regenerated.get_by_role("button", name="Copy code")).to_have_count(1)

    # Switch the model: the next answer comes from gpt-4o.
    page.get_by_label("Model", exact=True).select_option("gpt-4o")
    expect(page.locator("#chat-notice")).to_have_text("Saved.")
    fake.reply_text = "From the other model"
    box.fill("Third")
    box.press("Enter")
    third = page.locator("article.msg-assistant").nth(2)
    expect(third).to_have_attribute("data-status", "complete", timeout=10_000)
    expect(third.locator(".msg-meta")).to_contain_text("gpt-4o ·")
    assert fake.last_request.body["model"] == "gpt-4o"
    assert UsageEvent.objects.filter(user=alice).exists()

    with page.expect_download() as download:
        page.get_by_role("link", name="Export .md").click()
    exported = Path(download.value.path()).read_text()
    assert "## You\n\nHello browser" in exported and "From the other model" in exported

    page.screenshot(path=str(ARTIFACTS / "chat.png"), full_page=True)
    assert csp_violations(page) == [] and problems == [], (csp_violations(page), problems)

    for name, options in (
        ("chat-dark.png", {"color_scheme": "dark"}),
        ("chat-phone.png", {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}),
    ):
        other = signed_in_page(browser, portal.url, alice, **options)
        other.goto(f"{portal.url}/chat/c/{conversation.pk}/")
        expect(other.locator("article")).to_have_count(6)
        if name == "chat-phone.png":  # no horizontal scrolling at phone width
            assert other.evaluate("document.documentElement.scrollWidth") <= 390
        other.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_playground_compares_two_models_and_shows_code(
    browser: Any, portal: LiveServer, alice: User, fake: FakeOpenAI
) -> None:
    from playwright.sync_api import expect

    fake.behaviour(chunk_delay_ms=40, stream_words=12)
    page = signed_in_page(browser, portal.url, alice)
    problems = watched(page)
    page.goto(f"{portal.url}/playground/")
    page.get_by_label("System prompt").fill("You are terse.")
    page.get_by_label("Content of message 1").fill("Compare us")
    page.get_by_role("button", name="Add message").click()
    expect(page.get_by_label("Role of message 2")).to_have_value("assistant")
    page.get_by_label("Content of message 2").fill("Sure.")
    page.get_by_role("button", name="Add message").click()
    page.get_by_label("Content of message 3").fill("Go")
    page.get_by_role("button", name="Compare (add a panel)").click()
    page.locator("#panel-0").get_by_label("Model").select_option("gpt-4o-mini")
    second = page.locator("#panel-1")
    second.get_by_label("Model").select_option("gpt-4o")
    second.get_by_label("Temperature").fill("0.2")
    page.get_by_role("button", name="Run").click()
    expect(page.locator("#metrics-0")).to_contain_text("latency", timeout=15_000)
    expect(page.locator("#metrics-1")).to_contain_text("latency", timeout=15_000)
    expect(page.locator("#metrics-0")).to_contain_text("gpt-4o-mini")
    expect(page.locator("#metrics-1")).to_contain_text("gpt-4o ·")
    assert len(page.locator("#out-0").inner_text().split()) == 12
    assert len(page.locator("#out-1").inner_text().split()) == 12
    bodies = [r.body for r in fake.requests]
    assert sorted(b["model"] for b in bodies) == ["gpt-4o", "gpt-4o-mini"]
    assert [m["content"] for m in bodies[0]["messages"]] == ["You are terse.", "Compare us", "Sure.", "Go"]

    page.get_by_role("button", name="View code", exact=True).click()
    code = page.locator("#pg-code")
    expect(code).to_contain_text("$LLM_API_KEY")
    expect(code).to_contain_text(f"{portal.url}/v1")
    expect(code.locator(".codeblock")).to_have_count(3)
    page.get_by_role("button", name="View code of panel 2").click()
    expect(code).to_contain_text('"temperature": 0.2')
    expect(code).to_contain_text('"model": "gpt-4o"')
    page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
    assert csp_violations(page) == [] and problems == [], (csp_violations(page), problems)

    # "Save to prompt library" is a plain form POST (with the CSRF token) to the prompts app.
    page.get_by_label("Title in the prompt library").fill("Comparison")
    with page.expect_request("**/prompts/from-playground/") as saved:
        page.get_by_role("button", name="Save to prompt library").click()
    posted = saved.value
    assert posted.method == "POST"
    form = posted.post_data or ""
    for field in (
        "csrfmiddlewaretoken=",
        "title=Comparison",
        "p0-model=gpt-4o-mini",
        "msg-content=Compare+us",
    ):
        assert field in form, (field, form)


def test_pages_load_without_csp_violations(browser: Any, portal: LiveServer, django_user_model: Any) -> None:
    admin = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    page = signed_in_page(browser, portal.url, admin)
    problems = watched(page)
    paths = [
        "/", "/usage/", "/transcription/", "/chat/", "/playground/", "/admin/", "/admin/auth/user/",
        f"/admin/auth/user/{admin.pk}/change/", "/admin/quotas/quotarule/add/", "/admin/dashboard/",
        "/admin/portal/conversation/",
    ]  # fmt: skip
    for path in paths:
        response = page.goto(f"{portal.url}{path}")
        assert response is not None and response.status == 200, path
        assert "script-src 'self'" in response.headers["content-security-policy"], path
        page.wait_for_load_state("networkidle")
        assert csp_violations(page) == [], (path, csp_violations(page))
    # The admin's autocomplete widget (select2) builds its markup with scripts: open one.
    page.goto(f"{portal.url}/admin/quotas/quotarule/add/")
    page.locator(".select2-selection").first.click()
    page.wait_for_timeout(300)
    assert csp_violations(page) == [] and problems == [], (csp_violations(page), problems)
    # And the watch does see a violation: markup with an inline style and an inline handler.
    page.evaluate("""document.body.insertAdjacentHTML("beforeend", '<p style="color:red">x</p>');
                     const s = document.createElement("script"); s.textContent = "window.pwned = 1"; document.body.append(s);""")
    page.wait_for_timeout(200)
    assert {v.split()[0] for v in csp_violations(page)} >= {"style-src-attr", "script-src-elem"}, (
        csp_violations(page)
    )
    assert page.evaluate("window.pwned") is None
