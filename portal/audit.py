"""The audit log: who changed what, when, from where, with the object before and after.

Three sources feed ``AuditEvent`` rows:

- **Admin changes.** ``AuditMiddleware`` wraps every state-changing request to the admin console
  and the management API in one transaction and collects, through model signals, each object the
  request creates, changes or deletes. At the end it writes one row per object (before = the row
  as it was first seen, after = the row as it is now, many-to-many fields included), in the same
  transaction as the change: a change is never committed without its audit row. An explicit event
  recorded meanwhile for the same object (``record(action="key.revoked", ...)``) names that row's
  action instead of a generic ``update``, so one admin action leaves one row per object.
- **Key events** from the gateway services (issued, revoked, rotated): ``record`` (inside a
  request it joins the collector; elsewhere, e.g. a management command, it writes at once).
- **Hot-path key events** (first use, refused, expired) arrive through the usage buffer as
  ``{"type": "audit"}`` events and are written by ``audit_events_record`` with the ledger batch, so
  the request path makes no SQL query for them; first use is detected by the ledger writer.

No row ever holds a secret: ``snapshot`` replaces the value of every secret-looking field (and
secret-looking keys inside JSON fields) by a marker, ``<secret>``, or ``<secret changed>`` when the
value changed in this action (compared by a digest kept in memory only).
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from typing import Any

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.contrib.auth.models import Group
from django.db import models, transaction
from django.db.models.signals import m2m_changed, post_save, pre_delete, pre_save
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from portal.models import AuditEvent

logger = logging.getLogger(__name__)

SECRET = "<secret>"
SECRET_CHANGED = "<secret changed>"
# Name segments (split on `_` and `-`) that make a field or a JSON key secret.
SECRET_SEGMENTS = frozenset(
    {"password", "passwd", "secret", "token", "credential", "credentials", "digest", "authorization",
     "encrypted", "apikey", "cookie", "signature", "private"}
)  # fmt: skip
SECRET_NAMES = frozenset({"session_data", "session_key", "extra_data", "api_key", "api-key", "x-api-key"})
# Changes to these alone are bookkeeping, not an admin action (e.g. last_login at sign-in).
BOOKKEEPING_FIELDS = frozenset({"last_login", "updated_at", "last_used_at"})
# Models never audited through signals: logs, caches and the ledger itself.
UNAUDITED = frozenset(
    {"portal.auditevent", "admin.logentry", "sessions.session", "contenttypes.contenttype",
     "quotas.usageevent", "quotas.quotacounter", "quotas.usagerollup", "quotas.usagegrouprollup",
     "gateway.configgeneration", "social_django.nonce", "social_django.association",
     "social_django.code", "social_django.partial"}
)  # fmt: skip
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
AUDITED_PREFIXES = ("/admin/", "/api/")
REFUSED_EVERY = timedelta(seconds=60)


def is_secret(name: str) -> bool:
    """Whether a field or JSON key called ``name`` holds a secret (its value is never recorded)."""
    lowered = name.lower()
    if lowered in SECRET_NAMES:
        return True
    if lowered.endswith("_env"):  # the *name* of an environment variable, e.g. api_key_env
        return False
    segments = re.split(r"[_\-\s.]+", lowered)
    if "api" in segments and "key" in segments:
        return True
    return any(segment in SECRET_SEGMENTS for segment in segments)


def _jsonable(value: Any) -> Any:
    """``value`` as JSON, with secret keys of nested objects masked."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date | dtime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {
            str(k): (SECRET if v else "") if is_secret(str(k)) else _jsonable(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return "<binary>"
    return str(value)


def _fingerprint(value: Any) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()


# Extra, computed parts of some snapshots: a department's members are changed from its side.
EXTRAS: dict[type[models.Model], Callable[[Any], dict[str, Any]]] = {
    Group: lambda group: {"members": sorted(group.user_set.values_list("pk", flat=True))},
}


def snapshot(instance: models.Model) -> tuple[dict[str, Any], dict[str, str]]:
    """(the JSON snapshot of ``instance`` with secrets masked, digests of those secrets)."""
    data: dict[str, Any] = {}
    secrets: dict[str, str] = {}
    for f in instance._meta.concrete_fields:
        value = getattr(instance, f.attname)
        if is_secret(f.name) or is_secret(f.attname):
            data[f.name] = SECRET if value else ""
            secrets[f.name] = _fingerprint(value)
        else:
            data[f.name] = _jsonable(value)
    if instance.pk is not None:
        for m2m in instance._meta.many_to_many:
            data[m2m.name] = sorted(getattr(instance, m2m.name).values_list("pk", flat=True))
        for model, extra in EXTRAS.items():
            if isinstance(instance, model):
                data.update(extra(instance))
    return data, secrets


def _label(instance_or_model: Any) -> str:
    return str(instance_or_model._meta.label_lower)


def _repr(instance: models.Model) -> str:
    try:
        return str(instance)[:200]
    except Exception:  # a __str__ that needs a deleted relation must not break the audit
        return f"{_label(instance)} #{instance.pk}"


@dataclass
class _Entry:
    model: type[models.Model]
    pk: Any
    repr: str
    before: dict[str, Any] | None
    before_secrets: dict[str, str]
    deleted: bool = False
    action: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    suppressed: bool = False


class Collector:
    """The objects one request changed, written as audit rows when it ends."""

    def __init__(self, request: HttpRequest | None = None, actor: Any = None) -> None:
        self.request = request
        self._actor = actor
        self.entries: dict[tuple[str, str], _Entry] = {}
        self.ip = _client_ip(request) if request is not None else None

    def actor(self) -> Any:
        if self._actor is not None:
            return self._actor
        if self.request is None:
            return None
        user = getattr(self.request, "user", None)
        if user is not None and user.is_authenticated:
            return user
        auth = getattr(self.request, "auth", None)  # django-ninja's bearer authentication
        return auth if getattr(auth, "is_authenticated", False) else None

    def entry(self, instance: models.Model, *, before: bool = True) -> _Entry:
        key = (_label(instance), str(instance.pk))
        found = self.entries.get(key)
        if found is None:
            data: dict[str, Any] | None = None
            secrets: dict[str, str] = {}
            stored = instance.__class__._base_manager.filter(pk=instance.pk).first() if before else None
            if stored is not None:
                data, secrets = snapshot(stored)
            found = self.entries[key] = _Entry(type(instance), instance.pk, _repr(instance), data, secrets)
        return found

    def seen(self, instance: models.Model) -> bool:
        return (_label(instance), str(instance.pk)) in self.entries

    def flush(self) -> list[AuditEvent]:
        rows = []
        actor = self.actor()
        for entry in self.entries.values():
            if entry.suppressed:
                continue
            current = None if entry.deleted else entry.model._base_manager.filter(pk=entry.pk).first()
            if current is None and entry.before is None:
                continue  # created and deleted within the request
            after, after_secrets = snapshot(current) if current is not None else (None, {})
            if after is not None and entry.before is not None:
                for name, digest in after_secrets.items():
                    if entry.before_secrets.get(name) != digest and after.get(name):
                        after[name] = SECRET_CHANGED
            action = entry.action or (
                "create" if entry.before is None else "delete" if after is None else "update"
            )
            if action == "update" and _same(entry.before, after):
                continue
            if entry.extra and after is not None:
                after = {**after, **entry.extra}
            rows.append(_event(action=action, actor=actor, instance_label=_label(entry.model), pk=entry.pk,
                               repr_=_repr(current) if current is not None else entry.repr, before=entry.before,
                               after=after, ip=self.ip))  # fmt: skip
        AuditEvent.objects.bulk_create(rows)
        self.entries.clear()
        return rows


def _same(before: dict[str, Any] | None, after: dict[str, Any] | None) -> bool:
    if before is None or after is None:
        return before is after
    keys = (set(before) | set(after)) - BOOKKEEPING_FIELDS
    return all(before.get(k) == after.get(k) for k in keys)


def _event(*, action: str, actor: Any, instance_label: str, pk: Any, repr_: str, before: Any, after: Any,
           ip: str | None, at: datetime | None = None) -> AuditEvent:  # fmt: skip
    actor_id, actor_name = _actor_fields(actor)
    return AuditEvent(
        created_at=at or timezone.now(), actor_id=actor_id, actor=actor_name, action=action,
        object_type=instance_label, object_id=str(pk if pk is not None else "")[:64], object_repr=repr_[:200],
        before=before, after=after, ip=ip,
    )  # fmt: skip


def _actor_fields(actor: Any) -> tuple[int | None, str]:
    if actor is None:
        return None, "system"
    if isinstance(actor, str):
        return None, actor[:150]
    return actor.pk, actor.get_username()[:150]


def _client_ip(request: HttpRequest) -> str | None:
    # REMOTE_ADDR only: X-Forwarded-For is client-controlled unless a proxy we trust rewrites it.
    return request.META.get("REMOTE_ADDR") or None


_current: contextvars.ContextVar[Collector | None] = contextvars.ContextVar("audit_collector", default=None)


def current() -> Collector | None:
    """The collector of the request being handled, if it is audited."""
    return _current.get()


class AuditMiddleware:
    """Runs each state-changing admin or management-API request in one transaction with its audit rows.

    Sync and async capable: other requests pass straight through, so async portal views stay async.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        if not _is_audited_request(request):
            return self.get_response(request)
        return self._audited_call(request, self.get_response)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        if not _is_audited_request(request):
            return await self.get_response(request)
        # The transaction must live in the thread that runs the (sync) admin view: asgiref runs the
        # nested sync code in this same thread.
        return await sync_to_async(self._audited_call)(request, async_to_sync(self.get_response))

    @staticmethod
    def _audited_call(
        request: HttpRequest, get_response: Callable[[HttpRequest], HttpResponse]
    ) -> HttpResponse:
        collector = Collector(request)
        with transaction.atomic():
            token = _current.set(collector)
            try:
                response = get_response(request)
            finally:
                _current.reset(token)
            if response.status_code >= 500:
                transaction.set_rollback(True)
            else:
                collector.flush()
        return response


def _is_audited_request(request: HttpRequest) -> bool:
    return request.method in MUTATING_METHODS and request.path.startswith(AUDITED_PREFIXES)


# --- explicit events ------------------------------------------------------------------------------
def record(
    *,
    action: str,
    instance: models.Model | None = None,
    actor: Any = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    object_type: str = "",
    object_id: Any = None,
    object_repr: str = "",
    ip: str | None = None,
    replaces_generic: bool = True,
) -> AuditEvent | None:
    """Record ``action`` on ``instance``.

    Inside an audited request, with ``replaces_generic``, the request's row for ``instance`` gets
    this action (and ``extra`` merged into its after-snapshot), and is written when the request
    ends. Otherwise a row is written now, with snapshots of ``instance`` unless given.
    """
    collector = current()
    if collector is not None and instance is not None and instance.pk is not None and replaces_generic:
        entry = collector.entry(instance, before=False)  # the signals saw it before the change, if saved
        if entry.before is None and before is not None:
            entry.before = before
        entry.action = action
        entry.extra.update(extra or {})
        return None
    if instance is not None:
        data = after if after is not None else snapshot(instance)[0]
        if extra:
            data = {**data, **extra}
        row = _event(action=action, actor=actor if actor is not None else (collector.actor() if collector else None),
                     instance_label=_label(instance), pk=instance.pk, repr_=_repr(instance), before=before,
                     after=data, ip=ip or (collector.ip if collector else None))  # fmt: skip
    else:
        row = _event(action=action, actor=actor if actor is not None else (collector.actor() if collector else None),
                     instance_label=object_type, pk=object_id, repr_=object_repr, before=before,
                     after={**(after or {}), **(extra or {})} or None, ip=ip or (collector.ip if collector else None))  # fmt: skip
    row.save()
    return row


def suppress(instance: models.Model) -> None:
    """Inside an audited request: write no row for ``instance`` (another row tells its story)."""
    collector = current()
    if collector is not None and instance.pk is not None:
        collector.entry(instance, before=False).suppressed = True


# --- signal handlers --------------------------------------------------------------------------------
def _pre_save(sender: type[models.Model], instance: models.Model, raw: bool = False, **kwargs: Any) -> None:
    collector = current()
    if collector is not None and not raw and instance.pk is not None and not collector.seen(instance):
        collector.entry(instance)


def _post_save(sender: type[models.Model], instance: models.Model, created: bool = False, raw: bool = False,
               **kwargs: Any) -> None:  # fmt: skip
    collector = current()
    if collector is not None and not raw and not collector.seen(instance):
        collector.entry(instance, before=not created)


def _pre_delete(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    collector = current()
    if collector is not None and instance.pk is not None:
        collector.entry(instance).deleted = True


def _m2m_changed(sender: Any, instance: models.Model, action: str, **kwargs: Any) -> None:
    collector = current()
    if collector is None or not action.startswith("pre_") or instance.pk is None:
        return
    if _label(instance) in UNAUDITED or instance.__class__ not in _audited_models:
        return
    collector.entry(instance)


_audited_models: set[type[models.Model]] = set()


def connect(models_: Iterable[type[models.Model]]) -> None:
    """Audit changes of ``models_`` (called once from PortalConfig.ready with the admin's models)."""
    for model in models_:
        if _label(model) in UNAUDITED or model._meta.abstract or model in _audited_models:
            continue
        _audited_models.add(model)
        uid = f"audit-{_label(model)}"
        pre_save.connect(_pre_save, sender=model, dispatch_uid=f"{uid}-pre-save")
        post_save.connect(_post_save, sender=model, dispatch_uid=f"{uid}-post-save")
        pre_delete.connect(_pre_delete, sender=model, dispatch_uid=f"{uid}-pre-delete")
    # Global: m2m_changed listeners do not disable Django's fast deletes (pre/post_delete would).
    m2m_changed.connect(_m2m_changed, dispatch_uid="audit-m2m")


def admin_models() -> set[type[models.Model]]:
    """Every model the admin console can change: registered ones and those of their inlines."""
    from django.contrib import admin

    found: set[type[models.Model]] = set()
    for model, model_admin in admin.site._registry.items():
        found.add(model)
        for inline in getattr(model_admin, "inlines", ()):
            found.add(inline.model)
    return found


# --- hot-path key events (through the usage buffer) -------------------------------------------------
def key_refused_event(*, key_id: int, reason: str, ip: str | None) -> dict[str, Any]:
    """The buffer event for a refused key (the gateway de-duplicates before putting it)."""
    return {"type": "audit", "action": "key.refused", "key_id": key_id, "reason": reason, "ip": ip,
            "ts": timezone.now().timestamp()}  # fmt: skip


def audit_events_record(*, events: list[dict[str, Any]]) -> int:
    """Write the hot path's key events: refused at most once per key per minute, expired once per key."""
    from gateway.models import ApiKey

    key_ids = {int(e["key_id"]) for e in events if e.get("key_id")}
    keys = {k.pk: k for k in ApiKey.objects.filter(pk__in=key_ids)}
    rows: list[AuditEvent] = []
    latest_refusal: dict[int, datetime] = {}
    for ev in AuditEvent.objects.filter(
        action="key.refused", object_type="gateway.apikey", object_id__in=[str(k) for k in key_ids],
        created_at__gte=timezone.now() - REFUSED_EVERY - timedelta(minutes=5),
    ).values("object_id", "created_at"):  # fmt: skip
        k = int(ev["object_id"])
        latest_refusal[k] = max(latest_refusal.get(k, ev["created_at"]), ev["created_at"])
    expired_known = set(
        AuditEvent.objects.filter(action="key.expired", object_type="gateway.apikey",
                                  object_id__in=[str(k) for k in key_ids]).values_list("object_id", flat=True)
    )  # fmt: skip
    for event in sorted(events, key=lambda e: e.get("ts", 0)):
        key = keys.get(int(event.get("key_id") or 0))
        if key is None or event.get("action") != "key.refused":
            continue
        at = datetime.fromtimestamp(event.get("ts") or timezone.now().timestamp(), tz=UTC)
        last = latest_refusal.get(key.pk)
        if last is None or at - last >= REFUSED_EVERY:
            latest_refusal[key.pk] = at
            rows.append(_event(action="key.refused", actor="gateway", instance_label="gateway.apikey", pk=key.pk,
                               repr_=_repr(key), before=None, after={"reason": str(event.get("reason", ""))[:48]},
                               ip=event.get("ip"), at=at))  # fmt: skip
        if event.get("reason") == "expired" and str(key.pk) not in expired_known:
            expired_known.add(str(key.pk))
            rows.append(_expired_row(key))
    AuditEvent.objects.bulk_create(rows)
    return len(rows)


def _expired_row(key: Any) -> AuditEvent:
    return _event(action="key.expired", actor="system", instance_label="gateway.apikey", pk=key.pk,
                  repr_=_repr(key), before=None, after={"expires_at": _jsonable(key.expires_at)}, ip=None,
                  at=key.expires_at)  # fmt: skip


def keys_first_use(*, uses: dict[int, datetime]) -> None:
    """One ``key.first_use`` row per key whose first use the ledger writer just recorded."""
    from gateway.models import ApiKey

    keys = ApiKey.objects.filter(pk__in=list(uses))
    AuditEvent.objects.bulk_create(
        _event(
            action="key.first_use",
            actor="gateway",
            instance_label="gateway.apikey",
            pk=key.pk,
            repr_=_repr(key),
            before=None,
            after={"first_used_at": _jsonable(uses[key.pk])},
            ip=None,
            at=uses[key.pk],
        )  # fmt: skip
        for key in keys
    )


def keys_audit_expired() -> int:
    """Record ``key.expired`` for every key that expired without one yet (a periodic sweep)."""
    from gateway.models import ApiKey

    expired = list(ApiKey.objects.filter(revoked_at__isnull=True, expires_at__lte=timezone.now()))
    known = set(
        AuditEvent.objects.filter(action="key.expired", object_type="gateway.apikey",
                                  object_id__in=[str(k.pk) for k in expired]).values_list("object_id", flat=True)
    )  # fmt: skip
    rows = [_expired_row(key) for key in expired if str(key.pk) not in known]
    AuditEvent.objects.bulk_create(rows)
    return len(rows)
