"""The app catalogue (/apps/): built-in and registered apps, visibility per group, filters, icons,
the admin console's pages for apps."""

from __future__ import annotations

import base64
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from gateway.services import key_issue
from portal.models import App
from quotas.models import UsageEvent

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYPj/HwADAgH/eL9GtQAAAABJRU5ErkJggg=="
)


@pytest.fixture(autouse=True)
def _media(settings: Any, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def people(db: None) -> dict[str, Any]:
    sales, hr, it = (Group.objects.create(name=n) for n in ("sales", "hr", "it"))
    users = {}
    for name, groups in (("sue", [sales]), ("hal", [hr]), ("olga", [])):
        users[name] = User.objects.create_user(name, f"{name}@example.com", None)
        users[name].groups.add(*groups)
    apps = {
        "open": App.objects.create(name="Contract checker", slug="contracts", owner_group=it, category="Legal",
                                   status=App.Status.PRODUCTION, description="Checks contracts.", icon_text="📜"),
        "sales": App.objects.create(name="Lead scorer", slug="leads", owner_group=sales, category="Sales",
                                    status=App.Status.PROTOTYPE, url="https://leads.example.com",
                                    docs_url="https://docs.example.com/leads"),
        "hr": App.objects.create(name="CV screener", slug="cvs", owner_group=hr, category="HR",
                                 status=App.Status.STARTER_KIT, description="<script>alert(1)</script>"),
    }  # fmt: skip
    apps["sales"].visible_to_groups.add(sales)
    apps["hr"].visible_to_groups.add(hr)
    return {"groups": {"sales": sales, "hr": hr, "it": it}, "users": users, "apps": apps}


def as_user(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize(
    ("username", "visible"),
    [("sue", {"contracts", "leads"}), ("hal", {"contracts", "cvs"}), ("olga", {"contracts"})],
)
def test_users_see_only_the_apps_their_groups_may_see(
    people: dict[str, Any], username: str, visible: set[str]
) -> None:
    client = as_user(people["users"][username])
    page = client.get("/apps/").content.decode()
    for slug in ("contracts", "leads", "cvs"):
        assert (f'data-app="{slug}"' in page) is (slug in visible)
        assert client.get(f"/apps/{slug}/").status_code == (200 if slug in visible else 404)
    for builtin in ("/chat/", "/playground/", "/transcription/", "/prompts/"):
        assert f'href="{builtin}"' in page


def test_my_departments_apps_come_first(people: dict[str, Any]) -> None:
    page = as_user(people["users"]["sue"]).get("/apps/").content.decode()
    assert page.index('id="apps-mine"') < page.index('data-app="leads"') < page.index('id="apps-builtin"')
    assert page.index('id="apps-others"') < page.index('data-app="contracts"')


@pytest.mark.parametrize(
    ("query", "shown", "hidden"),
    [
        ("?category=Legal", {"contracts"}, {"leads", "chat"}),
        ("?status=prototype", {"leads"}, {"contracts", "chat"}),
        ("?status=production", {"contracts", "chat", "prompts"}, {"leads"}),
        ("?q=lead", {"leads"}, {"contracts", "chat"}),
        ("?q=transcri", {"transcription"}, {"contracts", "leads", "chat"}),
        ("?status=bogus", {"contracts", "leads", "chat"}, set()),
    ],
)
def test_filters(people: dict[str, Any], query: str, shown: set[str], hidden: set[str]) -> None:
    page = as_user(people["users"]["sue"]).get(f"/apps/{query}").content.decode()
    for slug in shown:
        assert f'data-app="{slug}"' in page, slug
    for slug in hidden:
        assert f'data-app="{slug}"' not in page, slug


def test_the_detail_page_links_out_safely_and_escapes_the_description(people: dict[str, Any]) -> None:
    page = as_user(people["users"]["sue"]).get("/apps/leads/").content.decode()
    assert 'href="https://leads.example.com" rel="noopener noreferrer"' in page
    assert 'href="https://docs.example.com/leads"' in page
    cv = as_user(people["users"]["hal"]).get("/apps/cvs/").content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in cv and "<script>alert(1)" not in cv
    assert Client().get("/apps/").status_code == 302  # sign in first


def test_an_uploaded_icon_is_served_only_to_those_who_see_the_app(people: dict[str, Any]) -> None:
    app = people["apps"]["hr"]
    app.icon_image = SimpleUploadedFile("evil name.png", PNG, content_type="text/html")
    app.full_clean()
    app.save()
    assert "evil" not in app.icon_image.name and app.icon_image.name.startswith("app-icons/")
    icon = as_user(people["users"]["hal"]).get("/apps/cvs/icon")
    assert (
        icon.status_code == 200
        and icon["Content-Type"] == "image/png"
        and icon["X-Content-Type-Options"] == "nosniff"
    )
    assert icon.content == PNG
    assert as_user(people["users"]["sue"]).get("/apps/cvs/icon").status_code == 404
    assert '<img src="/apps/cvs/icon"' in as_user(people["users"]["hal"]).get("/apps/").content.decode()
    assert as_user(people["users"]["hal"]).get("/apps/contracts/icon").status_code == 404  # a text icon


@pytest.mark.parametrize(
    ("name", "content"),
    [("x.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'),
     ("x.png", b"<html><script>alert(1)</script></html>"), ("big.png", PNG + b"\0" * 300_000)],
)  # fmt: skip
def test_icons_other_than_small_raster_images_are_refused(
    people: dict[str, Any], name: str, content: bytes
) -> None:
    app = people["apps"]["open"]
    app.icon_image = SimpleUploadedFile(name, content)
    with pytest.raises(ValidationError):
        app.full_clean()


def _admin_form(people: dict[str, Any], **changes: Any) -> dict[str, Any]:
    form = {"name": "Meeting minutes", "slug": "minutes", "description": "Minutes from recordings.",
            "category": "Productivity", "status": "starter_kit", "owner_group": people["groups"]["it"].pk,
            "url": "https://minutes.example.com", "docs_url": "", "icon_text": "📝", "entra_app_id": "",
            "visible_to_groups": [people["groups"]["sales"].pk],
            "api_keys-TOTAL_FORMS": "0", "api_keys-INITIAL_FORMS": "0", "api_keys-MIN_NUM_FORMS": "0",
            "api_keys-MAX_NUM_FORMS": "1000"}  # fmt: skip
    form.update(changes)
    return form


def test_admins_create_change_and_delete_apps(people: dict[str, Any], admin_user: User) -> None:
    admin = as_user(admin_user)
    assert admin.get("/admin/portal/app/").status_code == 200
    assert admin.get("/admin/portal/app/?status__exact=prototype").status_code == 200
    created = admin.post(
        "/admin/portal/app/add/", _admin_form(people, icon_image=SimpleUploadedFile("i.png", PNG))
    )
    assert created.status_code == 302, created.content.decode()[:2000]
    app = App.objects.get(slug="minutes")
    assert list(app.visible_to_groups.all()) == [people["groups"]["sales"]] and app.icon_image
    assert as_user(people["users"]["sue"]).get("/apps/minutes/").status_code == 200
    assert as_user(people["users"]["hal"]).get("/apps/minutes/").status_code == 404
    changed = admin.post(f"/admin/portal/app/{app.pk}/change/", _admin_form(people, visible_to_groups=[]))
    assert changed.status_code == 302
    assert as_user(people["users"]["hal"]).get("/apps/minutes/").status_code == 200  # now open to everyone
    refused = admin.post("/admin/portal/app/add/", _admin_form(people, slug="other", name="Other",
                                                                icon_image=SimpleUploadedFile("i.svg", b"<svg/>")))  # fmt: skip
    assert refused.status_code == 200 and not App.objects.filter(slug="other").exists()
    assert admin.post(f"/admin/portal/app/{app.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not App.objects.filter(slug="minutes").exists()


def test_the_admin_shows_an_apps_keys_and_its_usage_this_month(
    people: dict[str, Any], admin_user: User
) -> None:
    app = people["apps"]["sales"]
    key, _ = key_issue(name="lead scorer prod", app=app)
    for i, cost in enumerate(("0.5", "0.25")):
        UsageEvent.objects.create(request_id=f"req_cat_{i}", created_at=timezone.now(), app=app, key=key,
                                  endpoint="chat/completions", model="gpt-4o-mini", prompt_tokens=10,
                                  completion_tokens=5, cost_usd=Decimal(cost), status=200)  # fmt: skip
    page = as_user(admin_user).get(f"/admin/portal/app/{app.pk}/change/").content.decode()
    assert "lead scorer prod" in page
    assert "2 requests, 30 tokens, $0.7500" in page


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_screenshot_of_the_catalogue(browser: Any, people: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    from tests.support.browser import ARTIFACTS, signed_in_page
    from tests.support.live import LiveServer

    people["apps"]["hr"].visible_to_groups.clear()
    people["apps"]["hr"].icon_image = SimpleUploadedFile("i.png", PNG)
    people["apps"]["hr"].save()
    violations: list[str] = []
    with LiveServer() as server:
        page = signed_in_page(browser, server.url, people["users"]["sue"])
        page.on(
            "console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None
        )
        page.goto(f"{server.url}/apps/")
        expect(page.locator("#apps-mine [data-app=leads]")).to_be_visible()
        expect(page.locator("[data-app=cvs] img")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "catalogue.png"), full_page=True)
        page.locator("[data-app=leads] h3 a").click()
        expect(page.locator("h1")).to_have_text("Lead scorer")
    assert violations == []
