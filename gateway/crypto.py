"""Encryption at rest of provider credentials (Fernet, with key rotation through MultiFernet).

The keys come from CREDENTIALS_KEYS (comma-separated Fernet keys, newest first). Unset, one key is
derived from SECRET_KEY, so a development install needs no extra setting. Rotating: put the new key
first (keeping the old ones after it), run `manage.py credentials_rotate`, then drop the old key.
"""

from __future__ import annotations

import base64
import hashlib
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


@cache
def _fernet() -> MultiFernet:
    keys = list(settings.CREDENTIALS_KEYS)
    if not keys:
        derived = hashlib.sha256(b"llm-control-credentials:" + settings.SECRET_KEY.encode()).digest()
        keys = [base64.urlsafe_b64encode(derived).decode()]
    return MultiFernet([Fernet(key) for key in keys])


def encrypt(plaintext: str) -> str:
    """Encrypt ``plaintext`` for storage."""
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    """Decrypt a stored credential. Raises ValueError when no configured key opens it."""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ValueError("credential cannot be decrypted with the configured CREDENTIALS_KEYS") from exc


def rotate(token: str) -> str:
    """Re-encrypt ``token`` under the newest key. Raises ValueError when no configured key opens it."""
    try:
        return _fernet().rotate(token.encode()).decode()
    except InvalidToken as exc:
        raise ValueError("credential cannot be decrypted with the configured CREDENTIALS_KEYS") from exc


def reset_cache() -> None:
    """Forget the derived keys (tests that change CREDENTIALS_KEYS or SECRET_KEY)."""
    _fernet.cache_clear()
