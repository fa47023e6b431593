"""The fake Entra ID tenant fixtures (tests/support/identity.py)."""

from __future__ import annotations

from tests.support.identity import fake_idp, idp  # noqa: F401
