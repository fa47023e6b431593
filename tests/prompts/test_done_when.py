"""Done when (issue #8): a department editor publishes a prompt that only that department sees in
its `/` menu, and a developer calls the same prompt by id through the API with the openai SDK."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from gateway.services import key_issue
from prompts.models import Prompt
from tests.fakes.openai_upstream import FakeOpenAI
from tests.prompts.conftest import Library
from tests.support.browser import ARTIFACTS, signed_in_page
from tests.support.live import LiveServer

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _watch_csp(page: Any, violations: list[str]) -> None:
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.on("pageerror", lambda e: violations.append(str(e)))


def test_a_department_prompt_reaches_its_department_menu_and_the_sdk(
    browser: Any, gateway: LiveServer, live_library: Library, fake: FakeOpenAI, ledger: Any
) -> None:
    from playwright.sync_api import expect

    lib, url = live_library, gateway.url
    violations: list[str] = []
    # Sam, a prompt editor of sales, writes the prompt for sales and publishes it.
    sam = signed_in_page(browser, url, lib.users["sam"])
    _watch_csp(sam, violations)
    sam.goto(f"{url}/prompts/new/")
    sam.fill("#id_title", "Quarterly update")
    sam.select_option("#id_scope", "groups")
    sam.check(f"input[name=groups][value='{lib.sales.pk}']")
    sam.fill("#id_system", "You are a {{tone | choices:formal,casual | default:formal}} writer.")
    sam.fill("#id_user_template", "Write the Q{{quarter | choices:1,2,3,4}} update for {{team}}.")
    sam.click("#prompt-form button[type=submit]")
    sam.click("#publish-latest")
    expect(sam.locator(".pl-meta")).to_contain_text("published v1")
    sam.screenshot(path=str(ARTIFACTS / "prompts-detail.png"), full_page=True)
    prompt = Prompt.objects.get(title="Quarterly update")
    assert prompt.scope == "groups" and list(prompt.groups.all()) == [lib.sales]

    # Sue, in sales, types / in the library's box, filters, chooses it, fills it in: it is inserted.
    sue = signed_in_page(browser, url, lib.users["sue"])
    _watch_csp(sue, violations)
    sue.goto(f"{url}/prompts/")
    box = sue.locator("#try-message")
    box.click()
    box.press_sequentially("/quart", delay=30)
    expect(sue.locator(".pl-menu [role=option]")).to_have_count(1)
    expect(sue.locator(".pl-menu [role=option]")).to_contain_text("Quarterly update")
    sue.screenshot(path=str(ARTIFACTS / "prompts-picker.png"), full_page=True)
    box.press("Enter")
    sue.select_option("select[name=var_quarter]", "3")
    sue.fill("input[name=var_team]", "sales")
    sue.select_option("select[name=var_tone]", "casual")
    sue.screenshot(path=str(ARTIFACTS / "prompts-variables.png"), full_page=True)
    sue.click(".pl-use button[type=submit]")
    expect(box).to_have_value("Write the Q3 update for sales.")
    expect(sue.locator("#try-system")).to_have_value("You are a casual writer.")
    expect(sue.locator(".pl-popup")).to_have_count(0)
    prompt.refresh_from_db()
    assert prompt.use_count == 1
    # The same in the chat: "/" in the composer, and the system text goes to the chat's system prompt.
    sue.goto(f"{url}/chat/")
    composer = sue.locator("#composer-input")
    composer.click()
    composer.press_sequentially("/quart", delay=30)
    expect(sue.locator(".pl-menu [role=option]")).to_contain_text("Quarterly update")
    composer.press("Enter")  # chooses the prompt; the menu keeps Enter from sending the message
    sue.select_option("select[name=var_quarter]", "2")
    sue.fill("input[name=var_team]", "sales")
    sue.click(".pl-use button[type=submit]")
    expect(composer).to_have_value("Write the Q2 update for sales.")
    expect(sue.locator("#new-system")).to_have_value("You are a formal writer.")
    sue.screenshot(path=str(ARTIFACTS / "chat-prompt-picker.png"), full_page=True)

    # Hal, in hr, gets a menu without it (the company-wide prompt proves the menu loaded).
    hal = signed_in_page(browser, url, lib.users["hal"])
    _watch_csp(hal, violations)
    hal.goto(f"{url}/prompts/")
    hal.locator("#try-message").click()
    hal.locator("#try-message").press_sequentially("/", delay=30)
    expect(hal.locator(".pl-menu [role=option]").first).to_contain_text("Summarise")
    expect(hal.locator(".pl-menu")).not_to_contain_text("Quarterly update")
    hal.locator("#try-message").press("Escape")
    expect(hal.locator(".pl-popup")).to_have_count(0)
    # A click chooses too; a prompt without a system message leaves the system box alone.
    hal.locator("#try-message").fill("")
    hal.locator("#try-message").press_sequentially("/sum", delay=30)
    hal.locator(".pl-menu [role=option]", has_text="Summarise").click()
    hal.fill("input[name=var_text]", "the minutes")
    hal.click(".pl-use button[type=submit]")
    expect(hal.locator("#try-message")).to_have_value("Summarise: the minutes")
    expect(hal.locator("#try-system")).to_have_value("")
    assert violations == []

    # A developer of sales calls the same prompt by id with the official SDK.
    _, key = key_issue(name="sales dev", user=lib.users["sue"])
    with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as sdk:
        answer = sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[],
            extra_body={"prompt": {"id": str(prompt.uuid), "variables": {"quarter": "3", "team": "sales"}}},
        )  # fmt: skip
    assert answer.choices[0].message.content
    assert fake.requests[-1].json["messages"] == [
        {"role": "system", "content": "You are a formal writer."},
        {"role": "user", "content": "Write the Q3 update for sales."},
    ]
    (row,) = ledger(1, prompt_id=str(prompt.uuid))
    assert row.prompt_version == 1 and row.user == lib.users["sue"]
    # …and a developer of hr cannot.
    _, hr_key = key_issue(name="hr dev", user=lib.users["hal"])
    with (
        openai.OpenAI(base_url=f"{url}/v1", api_key=hr_key, max_retries=0) as sdk,
        pytest.raises(openai.NotFoundError),
    ):
        sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[], extra_body={"prompt": {"id": str(prompt.uuid)}}
        )
