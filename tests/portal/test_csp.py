"""The Content-Security-Policy header and htmx's safe configuration on every page."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from portal.csp import policy_for

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "path", ["/", "/chat/", "/playground/", "/usage/", "/transcription/", "/admin/", "/accounts/login/"]
)
def test_every_page_carries_the_policy(client: Client, alice: User, path: str) -> None:
    alice.is_staff = alice.is_superuser = True
    alice.save()
    client.force_login(alice)
    response = client.get(path)
    assert response.status_code == 200, path
    policy = response["Content-Security-Policy"]
    assert policy == policy_for("")  # no Entra ID configured
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
    assert directives["object-src"] == "'none'" and directives["base-uri"] == "'self'"
    assert directives["form-action"] == "'self'"
    assert "unsafe" not in policy


def test_the_entra_id_authority_may_receive_the_sign_in_form(client: Client, settings: Any) -> None:
    """The "Sign in with Microsoft" POST redirects to the authority: form-action must allow it."""
    settings.AZURE_AD_CLIENT_ID = "11111111-2222-3333-4444-555555555555"
    settings.AZURE_AD_AUTHORITY = "https://login.microsoftonline.com/"
    policy = client.get("/accounts/login/")["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["form-action"] == "'self' https://login.microsoftonline.com"
    settings.AZURE_AD_AUTHORITY = "javascript:alert(1)"  # never a source from a bad setting
    policy = client.get("/accounts/login/")["Content-Security-Policy"]
    assert "form-action 'self';" in policy + ";" and "javascript" not in policy
    settings.AZURE_AD_AUTHORITY = "https://evil.test;script-src *"
    assert "script-src *" not in client.get("/accounts/login/")["Content-Security-Policy"]


def test_htmx_runs_in_safe_mode(client: Client, alice: User) -> None:
    client.force_login(alice)
    html = client.get("/chat/").content.decode()
    meta = re.search(r"<meta name=\"htmx-config\" content='([^']+)'>", html)
    assert meta is not None
    config = json.loads(meta[1])
    assert config["allowEval"] is False and config["allowScriptTags"] is False
    assert config["selfRequestsOnly"] is True and config["includeIndicatorStyles"] is False
    assert "/static/django_htmx/htmx-2.min.js" in html  # vendored, not a CDN
    assert 'hx-headers=\'{"X-CSRFToken"' in html


def test_no_template_has_inline_script_or_style() -> None:
    templates = [*ROOT.glob("templates/**/*.html"), *ROOT.glob("*/templates/**/*.html")]
    assert templates
    for path in templates:
        text = path.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), path
        assert not re.search(r"<style\b|\sstyle=|\son[a-z]+=", text), path
        assert "//cdn" not in text and "https://unpkg" not in text, path
