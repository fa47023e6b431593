"""The Content-Security-Policy of every page Django serves.

LLM output is shown in the portal, so the browser must refuse to run anything a sanitiser might
miss: scripts and styles only from our own static files (no inline code, no eval), no plugins, no
framing, requests only to this origin. Every template (admin included) uses external files only;
tests/portal/test_browser.py opens the portal, transcription, usage and admin pages and fails on any
CSP violation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",  # the admin's and the charts' icons include data: URIs
        "font-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
    ]
)
HEADER = "Content-Security-Policy"


class ContentSecurityPolicyMiddleware:
    """Adds :data:`POLICY` to responses that have no policy of their own (sync and async)."""

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
            response[HEADER] = POLICY
        return response
