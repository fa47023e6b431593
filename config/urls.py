"""URL map: portal at /, admin at /admin/, the management API at /api/, health at /healthz."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from config.api import api
from config.health import healthz, livez

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("livez", livez, name="livez"),
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("portal.urls")),
]
