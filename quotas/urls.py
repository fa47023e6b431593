"""The usage dashboard and chargeback report, mounted at /admin/dashboard/ (staff only)."""

from __future__ import annotations

from django.urls import path

from quotas import dashboard

app_name = "usage"

urlpatterns = [
    path("", dashboard.dashboard_view, name="dashboard"),
    path("chargeback/", dashboard.chargeback_view, name="chargeback"),
]
