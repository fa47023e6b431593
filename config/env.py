"""Tiny typed helpers that read settings from the environment.

Every setting of the platform comes from here, so the README can document each one. A secret may
also be read from a file named by ``<NAME>_FILE`` (Docker and Kubernetes secrets, systemd
credentials), which wins over the plain variable.
"""

from __future__ import annotations

import os
from pathlib import Path


def env(name: str, default: str = "") -> str:
    """Return the variable ``name``, or the contents of the file named by ``name_FILE``."""
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        return Path(file_name).read_text().strip()
    return os.environ.get(name, default)


def envbool(name: str, default: bool = False) -> bool:
    """Read a boolean: 1/true/yes/on are true, 0/false/no/off are false."""
    value = env(name, "").strip().lower()
    if not value:
        return default
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name}={value!r} is not a boolean")


def envint(name: str, default: int) -> int:
    """Read an integer."""
    value = env(name, "").strip()
    return int(value) if value else default


def envfloat(name: str, default: float) -> float:
    """Read a float."""
    value = env(name, "").strip()
    return float(value) if value else default


def envlist(name: str, default: str = "") -> list[str]:
    """Read a comma-separated list, dropping blanks."""
    return [item.strip() for item in env(name, default).split(",") if item.strip()]
