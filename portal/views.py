"""Portal pages."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db.models import Count, F, Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from portal.charts import Series, stacked_bars
from quotas.models import UsageEvent
from quotas.reports import active_alerts, daily_usage, usage_for_user


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The portal's start page."""
    return render(request, "portal/home.html", {"alerts": active_alerts(request.user)})  # type: ignore[arg-type]


@login_required
def my_usage(request: HttpRequest) -> HttpResponse:
    """My usage and limits: what is left of each rule, and usage per day and model."""
    user = request.user
    data = daily_usage(UsageEvent.objects.for_user(user), days=30)
    series = [
        Series(model, [data["tokens"].get((day, model), 0) for day in data["days"]])
        for model in data["models"]
    ]
    chart = stacked_bars(data["days"], series, title="Tokens per day and model, last 30 days", unit="tokens")
    month = UsageEvent.objects.for_user(user).this_month().filter(counted=True)
    totals = month.aggregate(
        requests=Count("id"), tokens=Sum(F("prompt_tokens") + F("completion_tokens")), cost=Sum("cost_usd")
    )
    context = {
        "rules": usage_for_user(user),  # type: ignore[arg-type]
        "alerts": active_alerts(user),  # type: ignore[arg-type]
        "chart": chart,
        "totals": totals,
        "by_model": month.values("model")
        .annotate(requests=Count("id"), cost=Sum("cost_usd"))
        .order_by("-cost"),
    }
    return render(request, "portal/my_usage.html", context)
