"""The Content-Security-Policy of every page Django serves.

LLM output is shown in the portal, so the browser must refuse to run anything a sanitiser might
miss: scripts and styles only from our own static files (no inline code, no eval), no plugins, no
framing, requests only to this origin. Every template (admin included) uses external files only;
tests/portal/test_browser.py opens the portal, transcription, usage and admin pages and fails on any
CSP violation.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase

DIRECTIVES = [
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",  # the admin's and the charts' icons include data: URIs
    "font-src 'self'",
    "connect-src 'self'",
    "frame-ancestors 'none'",
    "object-src 'none'",
    "base-uri 'self'",
]


# host[:port] only: a setting must never smuggle another directive into the header.
_HOST = re.compile(r"[A-Za-z0-9.-]+(?::\d{1,5})?|\[[0-9A-Fa-f:]+\](?::\d{1,5})?")


@functools.lru_cache(maxsize=8)
def policy_for(authority: str) -> str:
    """The policy; ``form-action`` also allows the Entra ID authority's origin, because the
    "Sign in with Microsoft" form redirects there and browsers apply form-action to redirects."""
    parts = urlsplit(authority)
    ok = parts.scheme in ("http", "https") and _HOST.fullmatch(parts.netloc or "")
    origin = f"{parts.scheme}://{parts.netloc}" if ok else ""
    return "; ".join([*DIRECTIVES, f"form-action 'self' {origin}".rstrip()])


def policy() -> str:
    """The policy for the current settings (tests point the authority at a local fake)."""
    return policy_for(settings.AZURE_AD_AUTHORITY if settings.AZURE_AD_CLIENT_ID else "")


HEADER = "Content-Security-Policy"


class ContentSecurityPolicyMiddleware:
    """Adds :func:`policy` to responses that have no policy of their own (sync and async)."""

    sync_capable = True
    async_capable = True

    def __init__(
        self, get_response: Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]]
    ) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.is_async:
            return self.__acall__(request)
        response = self.get_response(request)
        assert isinstance(response, HttpResponseBase)
        return self._apply(response)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        assert not isinstance(response, HttpResponseBase)
        return self._apply(await response)

    @staticmethod
    def _apply(response: HttpResponseBase) -> HttpResponseBase:
        if HEADER not in response:
            response[HEADER] = policy()
        return response
