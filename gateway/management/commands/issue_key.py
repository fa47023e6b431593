"""`manage.py issue_key --user alice [--create-user] [--name N] [--models a,b] [--expires-in-days N]`.

The key's plaintext is the last line of the output; it is not stored and cannot be shown again.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from gateway.services import key_issue
from portal.models import App


class Command(BaseCommand):
    help = "Issue an API key for a user (or an app) and print its plaintext once, as the last line."

    def add_arguments(self, parser: Any) -> None:
        owner = parser.add_mutually_exclusive_group(required=True)
        owner.add_argument("--user")
        owner.add_argument("--app", help="slug of a catalogue app: a service key owned by its group")
        parser.add_argument("--create-user", action="store_true")
        parser.add_argument("--name", default="")
        parser.add_argument(
            "--models", default="", help="comma-separated model names; empty = owner's defaults"
        )
        parser.add_argument("--expires-in-days", type=int, default=None)

    def handle(self, *args: Any, **opts: Any) -> None:
        user = app = None
        if opts["user"]:
            user_model = get_user_model()
            user = user_model.objects.filter(username=opts["user"]).first()
            if user is None:
                if not opts["create_user"]:
                    raise CommandError(f"no user {opts['user']!r} (use --create-user)")
                user = user_model.objects.create_user(username=opts["user"])
                self.stdout.write(f"created user {user.get_username()}")
        else:
            app = App.objects.filter(slug=opts["app"]).first()
            if app is None:
                raise CommandError(f"no app {opts['app']!r}")
        days = opts["expires_in_days"]
        if days is not None and days <= 0:
            raise CommandError("--expires-in-days must be positive")
        models = [m.strip() for m in opts["models"].split(",") if m.strip()]
        key, plaintext = key_issue(
            name=opts["name"] or f"cli {timezone.now():%Y-%m-%d}",
            user=user,
            app=app,
            models=models,
            expires_at=timezone.now() + timedelta(days=days) if days else None,
        )
        self.stdout.write(f"issued key {key.hint} ({key.name}); the plaintext below is shown once:")
        self.stdout.write(plaintext)
