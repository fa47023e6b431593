"""Issued API keys: `<prefix>-<40 base62 random><6 base62 checksum>`.

The checksum (CRC32 of the random part, base62) lets secret scanners recognise a leaked key and
lets the gateway reject a mistyped key without a database lookup. Only a SHA-256 digest is stored,
with a short display hint (fewer than 12 characters of the key, so no 12-character piece of a
secret is ever kept).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib

from django.conf import settings

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_LENGTH = 40
CHECKSUM_LENGTH = 6
HINT_HEAD = 9  # "llmc-" and four random characters
HINT_TAIL = 4


def _base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, rem = divmod(number, 62)
        digits.append(ALPHABET[rem])
    return "".join(reversed(digits)).rjust(width, "0")


def checksum(random_part: str) -> str:
    """The 6-character checksum of a key's random part."""
    return _base62(zlib.crc32(random_part.encode()), CHECKSUM_LENGTH)


def generate() -> str:
    """A new key's plaintext."""
    random_part = "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH))
    return f"{settings.API_KEY_PREFIX}-{random_part}{checksum(random_part)}"


def well_formed(plaintext: str) -> bool:
    """True when ``plaintext`` has our shape and a valid checksum (no database needed)."""
    prefix = settings.API_KEY_PREFIX + "-"
    if len(plaintext) != len(prefix) + RANDOM_LENGTH + CHECKSUM_LENGTH or not plaintext.startswith(prefix):
        return False
    body = plaintext[len(prefix) :]
    if not all(ch in ALPHABET for ch in body):
        return False
    random_part, check = body[:RANDOM_LENGTH], body[RANDOM_LENGTH:]
    return hmac.compare_digest(checksum(random_part), check)


def digest(plaintext: str) -> str:
    """The stored form of a key: hex SHA-256 (the secret has 238 bits of entropy, so no salt)."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


def hint(plaintext: str) -> str:
    """What admins see of a key: its first and last characters."""
    return f"{plaintext[:HINT_HEAD]}…{plaintext[-HINT_TAIL:]}"
