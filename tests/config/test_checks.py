from __future__ import annotations

import os
import subprocess
import sys

from tests.support.processes import ROOT


def _check_deploy(**env: str) -> subprocess.CompletedProcess[str]:
    child = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG"}}
    child.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "ERROR"],
        cwd=ROOT, env=child, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_check_deploy_refuses_the_development_secret_key() -> None:
    result = _check_deploy()
    assert result.returncode != 0
    assert "config.E001" in result.stderr


def test_check_deploy_accepts_a_real_secret_key() -> None:
    result = _check_deploy(SECRET_KEY="x" * 20 + "a-long-random-production-secret-value-0123456789")
    assert result.returncode == 0, result.stderr
