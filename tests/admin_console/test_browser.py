"""The issue's "done when", in a real browser: a user signs in through Entra ID (the fake tenant),
lands in the portal with their departments, calls the API, and an admin sees it on the dashboard.

Chromium is Debian's (/usr/bin/chromium), driven by the playwright package; screenshots of the
portal landing and the dashboard go to tests/artifacts/.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest
from django.contrib.auth.models import Group

from portal.models import GroupMapping
from tests.fakes.azure_ad import FakeAzureAD
from tests.support.browser import ARTIFACTS
from tests.support.identity import person

pytestmark = pytest.mark.slow

SALES = "5a1e5000-0000-4000-8000-000000000001"


def sign_in_with_microsoft(browser: Any, base: str, upn: str, next_path: str = "/") -> Any:
    """A fresh browser session: our login page → Microsoft (the fake's account picker) → back."""
    page = browser.new_context().new_page()
    page.goto(f"{base}{next_path}")
    assert "/accounts/login/" in page.url or "/admin/login/" in page.url
    page.get_by_role("button", name="Sign in with Microsoft").click()
    page.wait_for_url("**/oauth2/v2.0/authorize**")
    page.locator(f'button[data-upn="{upn}"]').click()
    page.wait_for_url(f"{base}{next_path}")
    return page


def test_sign_in_call_the_api_and_see_it_on_the_dashboard(
    gateway: Any, idp: FakeAzureAD, ledger: Any, browser: Any
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    sales = Group.objects.create(name="sales")
    GroupMapping.objects.create(source="group", value=SALES, group=sales)
    GroupMapping.objects.create(source="role", value="Console.Owner", grants_superuser=True)
    alice = idp.add_user(person("alice@contoso.test", groups=[SALES]))
    idp.add_user(person("olga@contoso.test", roles=["Console.Owner"]))

    portal = sign_in_with_microsoft(browser, gateway.url, "alice@contoso.test")
    assert "Your departments: sales" in portal.locator("#departments").inner_text()
    portal.screenshot(path=str(ARTIFACTS / "portal-landing.png"), full_page=True)

    # Alice's tool gets an Entra ID token for the API and calls it with the OpenAI SDK.
    sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=idp.access_token(alice), max_retries=0)
    reply = sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}])
    assert reply.choices[0].message.content == "Echo: Hello"
    [event] = ledger(1)
    assert event.user.username == "alice@contoso.test" and event.group_ids == [sales.pk]

    # An admin (app role Console.Owner → superuser) signs in the same way and opens the dashboard.
    console = sign_in_with_microsoft(browser, gateway.url, "olga@contoso.test", "/admin/dashboard/")
    assert console.locator("#total-requests").inner_text() == "1"
    assert "alice@contoso.test" in console.locator("section[aria-labelledby=t-users]").inner_text()
    assert "sales" in console.locator("section[aria-labelledby=t-groups]").inner_text()
    console.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
