"""Template helpers of the sign-in pages."""

from __future__ import annotations

from django import template
from django.conf import settings

from portal.identity import entra_configured

register = template.Library()


@register.simple_tag
def entra_enabled() -> bool:
    """Whether the "Sign in with Microsoft" button is offered."""
    return entra_configured()


@register.simple_tag
def local_login_enabled() -> bool:
    """Whether the password form is offered (LOCAL_LOGIN is not off)."""
    return bool(settings.LOCAL_LOGIN != "off")
