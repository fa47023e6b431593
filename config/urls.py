"""URL map: portal at /, admin at /admin/, the management API at /api/, sign-in at /accounts/ and /auth/,
health at /healthz."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from config.api import api
from config.health import healthz, livez
from config.metrics import metrics_view
from portal.identity import LoginView

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("livez", livez, name="livez"),
    path("metrics", metrics_view, name="metrics"),
    # The usage dashboard and chargeback report live under the admin console (staff only).
    path("admin/dashboard/", include("quotas.urls")),
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/", include("django.contrib.auth.urls")),
    # Entra ID sign-in: /auth/login/entra-id/ starts it, /auth/complete/entra-id/ is the redirect URI.
    path("auth/", include("social_django.urls", namespace="social")),
    path("", include("transcription.urls")),
    path("prompts/", include("prompts.urls")),
    path("", include("portal.urls")),
]
