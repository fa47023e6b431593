"""Key events seen on the hot path (a refused key), sent to the audit log through the usage buffer.

No SQL on the request path: the event joins the usage buffer and is written with the next ledger
batch (portal.audit.audit_events_record). Each process sends at most one refusal per key per
minute, so a client retrying a revoked key in a loop cannot flood the log.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.catalog import Principal

REFUSAL_EVERY = 60.0
MAX_TRACKED = 10_000
_last_refusal: dict[int, float] = {}


async def key_refused(state: Any, principal: Principal, reason: str, scope: dict[str, Any]) -> None:
    """Queue a ``key.refused`` audit event for ``principal``'s key, unless one went out recently."""
    from portal.audit import key_refused_event

    if principal.key_id is None:
        return
    now = time.monotonic()
    if now - _last_refusal.get(principal.key_id, -REFUSAL_EVERY) < REFUSAL_EVERY:
        return
    if len(_last_refusal) >= MAX_TRACKED:
        _last_refusal.clear()
    _last_refusal[principal.key_id] = now
    client = scope.get("client")
    ip = str(client[0]) if client else None
    await state.buffer.put(key_refused_event(key_id=principal.key_id, reason=reason, ip=ip))
