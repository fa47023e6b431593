"""Celery tasks of the portal: thin wrappers around services."""

from __future__ import annotations

from config.celery import app


@app.task(name="portal.audit_expired_keys")
def audit_expired_keys() -> int:
    """Record ``key.expired`` for keys that expired since the last run (run it from the maintenance beat)."""
    from portal.audit import keys_audit_expired

    return keys_audit_expired()
