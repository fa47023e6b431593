"""The staff usage dashboard and the monthly chargeback report. They read the rollups only.

Every view filters by date range, department (group), user, key, app and model. Each query reads
the smallest grain of ``DailyUsage`` that keeps the dimensions it filters and groups by
(``quotas.rollups.grain_for``): unfiltered "top users" reads one row per user and day, a model
filter the fine grain's rows of that model (a partial index). One ``GROUP BY day, model`` query
feeds the charts, the daily table, the model table and the totals; one more per "top" table (users,
keys, apps, departments) and a few primary-key lookups for names make a page.
``bench/dashboard.py`` times every view over 10M events.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from django.contrib import admin
from django.contrib.auth.models import Group, User
from django.core.exceptions import PermissionDenied
from django.db.models import Max, QuerySet, Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.http import urlencode

from gateway.models import ApiKey
from portal.charts import Series, stacked_bars
from portal.models import App
from quotas.export import csv_response
from quotas.models import LATENCY_BUCKETS_MS, DailyUsage, Grain
from quotas.rollups import LAT_COLUMNS, grain_for, zone

MAX_DAYS = 366
TOP = 10
CHART_MODELS = 8
PERMISSION = "quotas.view_usageevent"

AGGREGATES: dict[str, Any] = {
    "requests": Sum("requests"),
    "errors": Sum("errors"),
    "prompt_tokens": Sum("prompt_tokens"),
    "completion_tokens": Sum("completion_tokens"),
    "cost": Sum("cost_usd"),
    "latency_sum": Sum("latency_ms_sum"),
    "latency_max": Max("latency_ms_max"),
    **{name: Sum(name) for name in LAT_COLUMNS},
}
# The "top" tables skip the latency histogram: half the work over the many rows they read.
TOP_AGGREGATES = {name: aggregate for name, aggregate in AGGREGATES.items() if name not in LAT_COLUMNS}


def today() -> date:
    return timezone.now().astimezone(zone()).date()


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _date(value: str | None, default: date) -> date:
    try:
        return date.fromisoformat(value) if value else default
    except ValueError:
        return default


@dataclass
class Filters:
    """What the dashboard shows: a day range and optional dimension filters."""

    start: date
    end: date
    group_id: int | None = None
    user_id: int | None = None
    username: str = ""
    key_id: int | None = None
    app_id: int | None = None
    model: str = ""
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_request(cls, request: HttpRequest) -> Filters:
        q = request.GET
        end = _date(q.get("end"), today())
        start = _date(q.get("start"), end - timedelta(days=29))
        f = cls(start=start, end=end, group_id=_int(q.get("group")), key_id=_int(q.get("key")),
                app_id=_int(q.get("app")), model=q.get("model", "")[:128], username=q.get("user", "").strip()[:150])  # fmt: skip
        if f.start > f.end:
            f.start, f.end = f.end, f.start
        if (f.end - f.start).days >= MAX_DAYS:
            f.start = f.end - timedelta(days=MAX_DAYS - 1)
            f.errors.append(f"The range is limited to {MAX_DAYS} days.")
        if f.username:
            f.user_id = User.objects.filter(username=f.username).values_list("pk", flat=True).first()
            if f.user_id is None:
                f.errors.append(f"No user {f.username!r}.")
                f.user_id = -1  # matches nothing
        return f

    def query(self, **extra: str) -> str:
        params = {"start": self.start.isoformat(), "end": self.end.isoformat()}
        for name, value in (("group", self.group_id), ("user", self.username), ("key", self.key_id),
                            ("app", self.app_id), ("model", self.model)):  # fmt: skip
            if value not in (None, ""):
                params[name] = str(value)
        params.update(extra)
        return urlencode(params)

    def days(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range((self.end - self.start).days + 1)]

    def dimensions(self) -> set[str]:
        """The dimensions this filters on."""
        active = {"group": self.group_id, "user": self.user_id, "key": self.key_id, "app": self.app_id,
                  "model": self.model or None}  # fmt: skip
        return {name for name, value in active.items() if value is not None}


def rollup_rows(f: Filters, *, by: str) -> QuerySet[DailyUsage]:
    """The rows ``f`` selects, to be grouped by dimension ``by``, from the smallest grain that can."""
    qs = DailyUsage.objects.filter(grain=grain_for({by, *f.dimensions()}), day__gte=f.start, day__lte=f.end)
    if f.group_id is not None:
        qs = qs.filter(group_id=f.group_id)
    if f.user_id is not None:
        qs = qs.filter(user_id=f.user_id)
    if f.key_id is not None:
        qs = qs.filter(key_id=f.key_id)
    if f.app_id is not None:
        qs = qs.filter(app_id=f.app_id)
    if f.model:
        qs = qs.filter(model=f.model)
    return qs


@dataclass
class Row:
    """Aggregated measures of one table row."""

    label: str
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = Decimal(0)
    latency_sum: int = 0
    latency_max: int = 0
    hist: list[int] = field(default_factory=lambda: [0] * len(LAT_COLUMNS))
    ident: Any = None

    @classmethod
    def of(cls, label: str, values: Any, ident: Any = None) -> Row:
        return cls(label=label, requests=int(values["requests"] or 0), errors=int(values["errors"] or 0),
                   prompt_tokens=int(values["prompt_tokens"] or 0), completion_tokens=int(values["completion_tokens"] or 0),
                   cost=Decimal(values["cost"] or 0), latency_sum=int(values["latency_sum"] or 0),
                   latency_max=int(values["latency_max"] or 0), hist=[int(values.get(c) or 0) for c in LAT_COLUMNS],
                   ident=ident)  # fmt: skip

    def add(self, other: Row) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost += other.cost
        self.latency_sum += other.latency_sum
        self.latency_max = max(self.latency_max, other.latency_max)
        self.hist = [a + b for a, b in zip(self.hist, other.hist, strict=True)]

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests * 100 if self.requests else 0.0

    @property
    def latency_avg(self) -> float:
        return self.latency_sum / self.requests if self.requests else 0.0

    @property
    def latency_p95(self) -> str:
        return percentile_label(self.hist, 0.95)


def percentile_label(hist: Sequence[int], share: float) -> str:
    """The latency bucket that holds the ``share`` quantile, as "≤ 500 ms" (or "> 30 s")."""
    total = sum(hist)
    if not total:
        return "—"
    seen = 0
    for i, count in enumerate(hist):
        seen += count
        if seen >= share * total:
            if i < len(LATENCY_BUCKETS_MS):
                bound = LATENCY_BUCKETS_MS[i]
                return f"≤ {bound} ms" if bound < 1000 else f"≤ {bound // 1000} s"
            return f"> {LATENCY_BUCKETS_MS[-1] // 1000} s"
    return "—"


TABLE_COLUMNS = ["requests", "errors", "error rate %", "input tokens", "output tokens", "cost USD",
                 "avg latency ms", "p95 latency", "max latency ms"]  # fmt: skip
TOP_COLUMNS = [c for c in TABLE_COLUMNS if c != "p95 latency"]


def table_cells(row: Row, *, p95: bool = True) -> list[Any]:
    cells = [row.requests, row.errors, f"{row.error_rate:.2f}", row.prompt_tokens, row.completion_tokens,
             f"{row.cost:.6f}", f"{row.latency_avg:.0f}", row.latency_p95, row.latency_max]  # fmt: skip
    return cells if p95 else cells[:7] + cells[8:]


# --- queries ---------------------------------------------------------------------------------------
def by_day_and_model(f: Filters) -> list[tuple[date, str, Row]]:
    rows = rollup_rows(f, by="model").values("day", "model").annotate(**AGGREGATES).order_by()
    return [(r["day"], r["model"], Row.of(r["model"] or "—", r)) for r in rows]


def top(
    f: Filters, dimension: str, names: Callable[[list[Any]], dict[Any, str]], *, limit: int | None = TOP
) -> list[Row]:
    """The rows of ``dimension`` with the highest cost (then requests), named by ``names``."""
    qs = (
        rollup_rows(f, by=dimension.removesuffix("_id"))
        .values(dimension)
        .annotate(**TOP_AGGREGATES)
        .order_by("-cost", "-requests")
    )
    found = list(qs[:limit] if limit else qs)
    labels = names([r[dimension] for r in found])
    return [Row.of(labels.get(r[dimension], f"#{r[dimension]}"), r, ident=r[dimension]) for r in found]


def user_names(ids: list[Any]) -> dict[Any, str]:
    named = dict(User.objects.filter(pk__in=[i for i in ids if i]).values_list("pk", "username"))
    return {i: named.get(i, f"deleted user #{i}") if i else "(app keys)" for i in ids}


def key_names(ids: list[Any]) -> dict[Any, str]:
    out = {0: "(no key: portal or Entra ID token)"}
    for key in ApiKey.objects.filter(pk__in=[i for i in ids if i]).select_related("user", "app"):
        owner = key.user.get_username() if key.user else f"app {key.app}"
        out[key.pk] = f"{key.name} ({key.hint}, {owner})"
    return {i: out.get(i, f"deleted key #{i}") for i in ids}


def app_names(ids: list[Any]) -> dict[Any, str]:
    named = dict(App.objects.filter(pk__in=[i for i in ids if i]).values_list("pk", "name"))
    return {i: named.get(i, f"deleted app #{i}") if i else "(no app)" for i in ids}


def group_names(ids: list[Any]) -> dict[Any, str]:
    named = dict(Group.objects.filter(pk__in=ids).values_list("pk", "name"))
    return {i: named.get(i, f"deleted group #{i}") for i in ids}


def model_names(ids: list[Any]) -> dict[Any, str]:
    return {i: i or "—" for i in ids}


@dataclass
class Dashboard:
    filters: Filters
    total: Row
    daily: list[Row]
    models: list[Row]
    series: dict[str, list[tuple[date, str, Row]]]

    @classmethod
    def build(cls, f: Filters) -> Dashboard:
        cells = by_day_and_model(f)
        days = {d: Row(label=d.isoformat(), ident=d) for d in f.days()}
        models: dict[str, Row] = {}
        total = Row(label="total")
        for day, model, row in cells:
            if day in days:
                days[day].add(row)
            models.setdefault(model, Row(label=model or "—", ident=model)).add(row)
            total.add(row)
        ordered_models = sorted(models.values(), key=lambda r: (-r.cost, -r.requests))
        return cls(
            filters=f, total=total, daily=list(days.values()), models=ordered_models, series={"cells": cells}
        )

    def charts(self) -> list[Any]:
        f = self.filters
        days = f.days()
        charted = [m.ident for m in self.models[:CHART_MODELS]]
        index = {d: i for i, d in enumerate(days)}

        def per_model(measure: Callable[[Row], float]) -> list[Series]:
            values = {m: [0.0] * len(days) for m in [*charted, "other"]}
            for day, model, row in self.series["cells"]:
                if day in index:
                    values[model if model in charted else "other"][index[day]] += measure(row)
            return [Series(name or "—", v) for name, v in values.items() if any(v)]

        rate = [Series("error rate %", [r.error_rate for r in self.daily])]
        latency = [Series("average latency (ms)", [r.latency_avg for r in self.daily])]
        return [
            stacked_bars(
                days, per_model(lambda r: r.requests), title="Requests per day and model", unit="requests"
            ),
            stacked_bars(
                days, per_model(lambda r: r.tokens), title="Tokens per day and model", unit="tokens"
            ),
            stacked_bars(
                days, per_model(lambda r: float(r.cost)), title="Cost per day and model (USD)", unit="USD"
            ),
            stacked_bars(days, rate, title="Error rate per day (%)", unit="%"),
            stacked_bars(days, latency, title="Average latency per day (ms)", unit="ms"),
        ]


TABLES: dict[str, tuple[str, str, Callable[[list[Any]], dict[Any, str]]]] = {
    # name: (title, dimension, namer)
    "users": ("Top users", "user_id", user_names),
    "groups": ("Top departments (all requests of their members)", "group_id", group_names),
    "keys": ("Top keys", "key_id", key_names),
    "apps": ("Top apps", "app_id", app_names),
}


LABELS = {"users": "user", "groups": "department", "keys": "key", "apps": "app"}


def _allowed(request: HttpRequest) -> None:
    if not request.user.has_perm(PERMISSION):
        raise PermissionDenied


def _choices() -> dict[str, Any]:
    return {
        "groups": list(Group.objects.order_by("name").values_list("pk", "name")),
        "apps": list(App.objects.order_by("name").values_list("pk", "name")),
        # The models used in the last year (the small app × model grain answers it).
        "models": list(
            DailyUsage.objects.filter(grain=Grain.APP_MODEL, day__gte=today() - timedelta(days=MAX_DAYS))
            .order_by("model")
            .values_list("model", flat=True)
            .distinct()
        ),
    }


def _export(f: Filters, name: str, dash: Dashboard | None = None) -> HttpResponse:
    stamp = f"{f.start.isoformat()}_{f.end.isoformat()}"
    if name in TABLES:
        _title, dimension, namer = TABLES[name]
        rows = top(f, dimension, namer, limit=None)
        header = [dimension.removesuffix("_id"), "id", *TOP_COLUMNS]
        return csv_response(
            f"usage-{name}-{stamp}.csv",
            header,
            ([r.label, r.ident, *table_cells(r, p95=False)] for r in rows),
        )
    dash = dash or Dashboard.build(f)
    if name == "daily":
        data: Iterable[Row] = dash.daily
        header = ["day", *TABLE_COLUMNS]
    elif name == "models":
        data = dash.models
        header = ["model", *TABLE_COLUMNS]
    else:
        return HttpResponse("unknown table", status=404, content_type="text/plain")
    return csv_response(f"usage-{name}-{stamp}.csv", header, ([r.label, *table_cells(r)] for r in data))


def _dashboard(request: HttpRequest) -> HttpResponse:
    """Requests, tokens, cost, errors and latency over time, and the top users, keys, apps and models."""
    _allowed(request)
    f = Filters.from_request(request)
    export = request.GET.get("export")
    if export:
        return _export(f, export)
    dash = Dashboard.build(f)
    tables = [
        {
            "name": name,
            "title": title,
            "rows": top(f, dimension, namer),
            "label": LABELS[name],
        }
        for name, (title, dimension, namer) in TABLES.items()
    ]
    context = {
        **admin.site.each_context(request), "title": "Usage dashboard", "f": f, "dash": dash, "charts": dash.charts(),
        "tables": tables, "columns": TABLE_COLUMNS, "top_columns": TOP_COLUMNS, "choices": _choices(),
        "export": {name: f.query(export=name) for name in ["daily", "models", *TABLES]},
        "chargeback_query": urlencode({"month": f.end.strftime("%Y-%m")}),
    }  # fmt: skip
    return render(request, "quotas/dashboard.html", context)


# --- chargeback --------------------------------------------------------------------------------------
def month_bounds(month: str | None) -> tuple[date, date]:
    """The first and last day of ``YYYY-MM`` (default: this month)."""
    current = today()
    try:
        year, mon = (int(p) for p in (month or "").split("-", 1))
        first = date(year, mon, 1)
    except ValueError:
        first = current.replace(day=1)
    return first, first.replace(day=calendar.monthrange(first.year, first.month)[1])


def chargeback(first: date, last: date) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per department: requests, tokens and cost of its members' requests, and its share of the cost.

    A request by a member of several departments is split equally between them in ``share``, so
    the shares plus "(no department)" add up to the month's total.
    """
    rows = (
        DailyUsage.objects.filter(grain=Grain.GROUP_APP_MODEL, day__gte=first, day__lte=last)
        .values("group_id")
        .annotate(requests=Sum("requests"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"),
                  cost=Sum("cost_usd"), share=Sum("cost_share"))
        .order_by("-share")
    )  # fmt: skip
    rows_list = list(rows)
    names = group_names([r["group_id"] for r in rows_list])
    total = DailyUsage.objects.filter(grain=Grain.APP_MODEL, day__gte=first, day__lte=last).aggregate(
        requests=Sum("requests"),
        prompt=Sum("prompt_tokens"),
        completion=Sum("completion_tokens"),
        cost=Sum("cost_usd"),
    )
    out: list[dict[str, Any]] = [
        {"department": names[r["group_id"]], "id": r["group_id"], "requests": int(r["requests"] or 0),
         "tokens": int(r["prompt"] or 0) + int(r["completion"] or 0), "cost": Decimal(r["cost"] or 0),
         "share": Decimal(r["share"] or 0).quantize(Decimal("0.000001"))}
        for r in rows_list
    ]  # fmt: skip
    total_cost = Decimal(total["cost"] or 0)
    unassigned = total_cost - sum((r["share"] for r in out), Decimal(0))
    summary = {"requests": int(total["requests"] or 0), "tokens": int(total["prompt"] or 0) + int(total["completion"] or 0),
               "cost": total_cost, "unassigned": unassigned.quantize(Decimal("0.000001"))}  # fmt: skip
    return out, summary


def _chargeback(request: HttpRequest) -> HttpResponse:
    """The monthly chargeback report per department."""
    _allowed(request)
    first, last = month_bounds(request.GET.get("month"))
    rows, summary = chargeback(first, last)
    month = first.strftime("%Y-%m")
    if request.GET.get("export") == "csv":
        data = [
            [r["department"], r["id"], r["requests"], r["tokens"], f"{r['cost']:.6f}", f"{r['share']:.6f}"]
            for r in rows
        ]
        data.append(["(no department)", "", "", "", "", f"{summary['unassigned']:.6f}"])
        data.append(
            [
                "total",
                "",
                summary["requests"],
                summary["tokens"],
                f"{summary['cost']:.6f}",
                f"{summary['cost']:.6f}",
            ]
        )
        header = ["department", "id", "requests", "tokens", "cost of members' requests USD", "charged USD"]
        return csv_response(f"chargeback-{month}.csv", header, data)
    previous = (first - timedelta(days=1)).strftime("%Y-%m")
    following = (last + timedelta(days=1)).strftime("%Y-%m")
    context = {
        **admin.site.each_context(request), "title": f"Chargeback {month}", "rows": rows, "summary": summary,
        "month": month, "previous": previous, "following": following,
        "dashboard_query": urlencode({"start": first.isoformat(), "end": last.isoformat()}),
    }  # fmt: skip
    return render(request, "quotas/chargeback.html", context)


# Staff only (the admin's login and is_staff check), then the usage permission.
dashboard_view = admin.site.admin_view(_dashboard)
chargeback_view = admin.site.admin_view(_chargeback)
