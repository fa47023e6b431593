"""Schemathesis over the management API's OpenAPI schema: no operation answers a 5xx to any input.

Every django-ninja router mounted in config/api.py is in `/api/openapi.json`; each operation gets a
bounded, deterministic number of generated requests, sent in process to Django (WSGI) with a staff
key, so they pass authentication and reach the operations themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from gateway.services import key_issue
from quotas.models import QuotaRule


@pytest.fixture
def api_schema(db: None) -> Iterator[Any]:
    # As Django's test client does: requests must not close the test's database connection.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi("/api/openapi.json", get_wsgi_application())
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.fixture
def staff_key(db: None, django_user_model: Any) -> str:
    staff = django_user_model.objects.create_user("ops", is_staff=True)
    django_user_model.objects.create_user("alice")
    QuotaRule.objects.create(subject_type="user", user=staff, metric="requests", window="day", limit=10)
    return key_issue(name="ops", user=staff)[1]


def test_no_operation_answers_a_server_error(api_schema: Any, staff_key: str) -> None:
    """Each operation in turn (schemathesis' pytest plugin predates this pytest), 30 examples each."""
    failures = []
    statuses: set[int] = set()
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 6
    for operation in operations:

        @settings(
            max_examples=30, deadline=None, derandomize=True, database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                   HealthCheck.filter_too_much],
        )  # fmt: skip
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            response = case.call(headers={"Authorization": f"Bearer {staff_key}"})
            statuses.add(response.status_code)
            case.validate_response(response, checks=[not_a_server_error])

        try:
            check()
        except Exception as exc:  # one report naming every operation that failed
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n".join(failures)
    assert {200, 201, 204} & statuses and {400, 422} & statuses, statuses  # got past auth, to validation
    assert 401 not in statuses, statuses


def test_the_schema_covers_every_router(api_schema: Any) -> None:
    """The parametrized test above runs on every router config/api.py mounts."""
    paths = {operation.path for operation in (result.ok() for result in api_schema.get_all_operations())}
    assert any(p.startswith("/api/quotas/") for p in paths) and any(
        p.startswith("/api/prompts/") for p in paths
    ), paths


def test_nul_bytes_in_query_strings_are_no_server_error(api_schema: Any, staff_key: str) -> None:
    """Found by the run above on PostgreSQL (text cannot hold NUL): every string filter, with a NUL."""
    from django.test import Client

    client = Client(raise_request_exception=False)
    for url in ("/api/quotas/usage?user=a%00b", "/api/quotas/usage?group=%00", "/api/quotas/usage?model=%00",
                "/api/prompts/?q=%00", "/api/prompts/?tag=%00", "/api/prompts/%00"):  # fmt: skip
        response = client.get(url, HTTP_AUTHORIZATION=f"Bearer {staff_key}")
        assert response.status_code < 500, (url, response.status_code)
