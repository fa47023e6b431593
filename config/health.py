"""`/healthz`: the state of the database, Redis and the Celery broker."""

from __future__ import annotations

import time

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _check_redis() -> None:
    import redis

    client = redis.Redis.from_url(
        settings.REDIS_URL,
        socket_connect_timeout=settings.HEALTHZ_TIMEOUT,
        socket_timeout=settings.HEALTHZ_TIMEOUT,
    )
    try:
        client.ping()
    finally:
        client.close()


def _check_broker() -> None:
    from config.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=max(1, round(settings.HEALTHZ_TIMEOUT)))


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Return 200 when every dependency answers, 503 naming the ones that do not."""
    checks = {"database": _check_database, "celery_broker": _check_broker}
    if settings.REDIS_URL:
        checks["redis"] = _check_redis
    results: dict[str, dict[str, object]] = {}
    for name, check in checks.items():
        started = time.perf_counter()
        try:
            check()
        except Exception as exc:  # any failure means "not reachable"; the kind is reported, not the trace
            results[name] = {"ok": False, "error": type(exc).__name__}
        else:
            results[name] = {"ok": True}
        results[name]["ms"] = round((time.perf_counter() - started) * 1000, 1)
    failing = sorted(name for name, result in results.items() if not result["ok"])
    body = {"status": "ok" if not failing else "unavailable", "failing": failing, "checks": results}
    return JsonResponse(body, status=200 if not failing else 503)


async def livez(request: HttpRequest) -> HttpResponse:
    """Liveness: the process answers. No dependency is touched (load balancers poll this often)."""
    return HttpResponse(b"ok", content_type="text/plain")
