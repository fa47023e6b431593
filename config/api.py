"""The django-ninja management API: one Router per app, mounted here."""

from __future__ import annotations

from ninja import NinjaAPI

from prompts.api import router as prompts_router
from quotas.api import router as quotas_router

api = NinjaAPI(title="LLM control management API", version="1", urls_namespace="api")
api.add_router("/quotas", quotas_router)
api.add_router("/prompts", prompts_router)


@api.get("/version", tags=["meta"])
def version(request: object) -> dict[str, str]:
    """The platform's version."""
    return {"version": "0.1.0"}
