"""Production settings: `manage.py check --deploy` is clean and responses carry the security headers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What the README's production section sets (beyond the database and Redis).
PRODUCTION = {
    "SECRET_KEY": "x8Qe2m9Zt4Lr7Vw1Nc6Yb3Hs5Kd0Pj2Uf8Ga4Ri7Oy1Tn9Xl3Ez6Wq5Mv0Bc2Dh",
    "DEBUG": "false",
    "SITE_URL": "https://llm.example.com",
    "ALLOWED_HOSTS": "llm.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://llm.example.com",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_PRELOAD": "true",
    "SECURE_SSL_REDIRECT": "true",
    "BEHIND_TLS_PROXY": "true",
}

PROBE = """
import json, django
django.setup()
from django.conf import settings
from django.test import Client
r = Client().get("/accounts/login/", secure=True, HTTP_HOST="llm.example.com")
plain = Client().get("/accounts/login/", HTTP_HOST="llm.example.com")
csrf = r.cookies.get("csrftoken")
print(json.dumps({
    "status": r.status_code, "headers": dict(r.headers), "plain": plain.status_code,
    "location": plain.get("Location", ""), "csrf_secure": bool(csrf and csrf["secure"]),
    "session_secure": settings.SESSION_COOKIE_SECURE, "csrf_setting": settings.CSRF_COOKIE_SECURE,
}))
"""


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(PRODUCTION, DJANGO_SETTINGS_MODULE="config.settings", DATA_DIR=str(tmp_path))
    return env


def test_check_deploy_passes_without_any_warning(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNINGS" not in output and "?:" not in output, output
    assert "no issues" in output


def test_check_deploy_fails_on_the_development_defaults(tmp_path: Path) -> None:
    env = _env(tmp_path)
    for name in ("SECRET_KEY", "SECURE_HSTS_SECONDS", "SITE_URL"):
        env.pop(name)
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "config.E001" in result.stderr + result.stdout


def test_production_responses_carry_the_security_headers(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    headers = {k.lower(): v for k, v in probe["headers"].items()}
    assert probe["status"] == 200
    assert headers["strict-transport-security"] == "max-age=31536000; includeSubDomains; preload"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"
    assert headers["x-frame-options"] == "DENY"
    assert probe["csrf_secure"] and probe["session_secure"] and probe["csrf_setting"]
    # Plain http is redirected to https.
    assert probe["plain"] == 301 and probe["location"].startswith("https://llm.example.com/")
