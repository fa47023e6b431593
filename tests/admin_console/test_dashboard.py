"""The staff usage dashboard and the monthly chargeback report (rollups only), with CSV exports."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from gateway.services import key_issue
from portal.models import App
from quotas.dashboard import today
from quotas.ledger import events_write

pytestmark = pytest.mark.django_db


@pytest.fixture
def usage(alice: User, bob: User) -> dict[str, Any]:
    """Alice (sales) and Bob (sales and legal) used two models over the last days; a bot app too."""
    sales, legal = Group.objects.create(name="sales"), Group.objects.create(name="legal")
    alice.groups.add(sales)
    bob.groups.add(sales, legal)
    key, _ = key_issue(name="alice-cli", user=alice)
    app = App.objects.create(name="Bot", slug="bot", owner_group=legal)
    noon = datetime.combine(today(), datetime.min.time(), tzinfo=UTC) + timedelta(hours=12)
    events = []
    for i in range(6):  # alice: 6 requests on gpt-4o-mini, one a day, through her key; one failed
        events.append(_event(f"a{i}", noon - timedelta(days=i), user=alice.pk, groups=[sales.pk], key=key.pk,
                             model="gpt-4o-mini", cost="0.010", status=502 if i == 0 else 200))  # fmt: skip
    for i in range(3):  # bob: 3 requests on gpt-4o today
        events.append(
            _event(f"b{i}", noon, user=bob.pk, groups=[sales.pk, legal.pk], model="gpt-4o", cost="0.100")
        )
    events.append(_event("bot", noon, app=app.pk, groups=[legal.pk], model="gpt-4o", cost="1.000"))
    events.append(
        _event("old", noon - timedelta(days=90), user=alice.pk, groups=[sales.pk], model="gpt-4o", cost="9")
    )
    events_write(events=events)
    return {"sales": sales, "legal": legal, "key": key, "app": app}


def _event(rid: str, at: datetime, *, user: int | None = None, groups: list[int], model: str, cost: str,
           key: int | None = None, app: int | None = None, status: int = 200) -> dict[str, Any]:  # fmt: skip
    return {"request_id": rid, "ts": at.timestamp(), "key_id": key, "user_id": user, "group_ids": groups,
            "app_id": app, "endpoint": "chat/completions", "provider": "p", "deployment": "p/x", "model": model,
            "prompt_tokens": 100, "completion_tokens": 20, "cached_tokens": 0, "images": 0, "audio_seconds": "0",
            "cost_usd": cost, "latency_ms": 300, "ttft_ms": None, "status": status, "error_kind": "",
            "streamed": False, "tokens_estimated": False, "counted": True}  # fmt: skip


@pytest.fixture
def root(django_user_model: type[User]) -> Client:
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "pw"))
    return client


def page(client: Client, **params: Any) -> Any:
    response = client.get(reverse("usage:dashboard"), params)
    assert response.status_code == 200
    return response


def test_the_dashboard_shows_charts_totals_and_top_tables_from_the_rollups(root: Client, usage: Any) -> None:
    with CaptureQueriesContext(connection) as queries:
        response = page(root)
    assert not [q for q in queries if "quotas_usageevent" in q["sql"]]  # rollups only
    html = response.content.decode()
    assert html.count('class="chart"') == 5
    dash = response.context["dash"]
    assert dash.total.requests == 10 and dash.total.errors == 1  # the 90-day-old request is out of range
    assert dash.total.cost == Decimal("1.36")
    tables = {t["name"]: t["rows"] for t in response.context["tables"]}
    assert [r.label for r in tables["users"]][:3] == ["(app keys)", "bob", "alice"]
    assert {r.label: r.requests for r in tables["groups"]} == {"sales": 9, "legal": 4}
    assert tables["keys"][1].label.startswith("alice-cli (") and tables["keys"][1].requests == 6
    assert [r.label for r in tables["apps"]] == ["Bot", "(no app)"]
    assert [(m.label, m.requests) for m in dash.models] == [("gpt-4o", 4), ("gpt-4o-mini", 6)]


@pytest.mark.parametrize(
    ("params", "requests"),
    [({"model": "gpt-4o"}, 4), ({"user": "alice"}, 6), ({"user": "nobody"}, 0)],
    ids=["model", "user", "unknown-user"],
)
def test_filters(root: Client, usage: Any, params: dict[str, Any], requests: int) -> None:
    assert page(root, **params).context["dash"].total.requests == requests


def test_group_key_app_and_date_filters(root: Client, usage: Any) -> None:
    assert page(root, group=usage["legal"].pk).context["dash"].total.requests == 4
    assert page(root, group=usage["sales"].pk, model="gpt-4o").context["dash"].total.requests == 3
    assert page(root, key=usage["key"].pk).context["dash"].total.requests == 6
    assert page(root, app=usage["app"].pk).context["dash"].total.requests == 1
    yesterday = (today() - timedelta(days=1)).isoformat()
    assert page(root, start=yesterday, end=yesterday).context["dash"].total.requests == 1
    assert page(root, start=(today() - timedelta(days=100)).isoformat()).context["dash"].total.requests == 11


def test_every_table_exports_as_csv(root: Client, usage: Any) -> None:
    for name, first_column in (("users", "user"), ("groups", "group"), ("keys", "key"), ("apps", "app"),
                               ("models", "model"), ("daily", "day")):  # fmt: skip
        response = root.get(reverse("usage:dashboard"), {"export": name, "group": usage["sales"].pk})
        assert response.status_code == 200 and response["Content-Type"].startswith("text/csv"), name
        rows = list(csv.reader(io.StringIO(response.content.decode())))
        assert rows[0][0] == first_column and "cost USD" in rows[0], name
        assert len(rows) > 1, name
    daily = list(
        csv.reader(io.StringIO(root.get(reverse("usage:dashboard"), {"export": "daily"}).content.decode()))
    )
    assert len(daily) == 31  # header + 30 days


def test_the_monthly_chargeback_splits_shared_members_and_adds_up(root: Client, usage: Any) -> None:
    month = today().strftime("%Y-%m")
    response = root.get(reverse("usage:chargeback"), {"month": month})
    assert response.status_code == 200
    rows = {r["department"]: r for r in response.context["rows"]}
    summary = response.context["summary"]
    assert sum(r["share"] for r in rows.values()) + summary["unassigned"] == summary["cost"]
    # legal: half of bob's 0.3 and all of the bot's 1.0; sales: alice's and the other half of bob's.
    assert rows["legal"]["share"] == Decimal("1.15") and rows["legal"]["cost"] == Decimal("1.3")
    export = root.get(reverse("usage:chargeback"), {"month": month, "export": "csv"})
    lines = list(csv.reader(io.StringIO(export.content.decode())))
    assert lines[0][0] == "department" and lines[-1][0] == "total"
