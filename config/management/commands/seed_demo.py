"""Leave a usable demo: a demo department and a demo user. Safe to run any number of times."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction

DEMO_GROUP = "demo"
DEMO_USER = "demo"
DEMO_PASSWORD = "demo-password"


class Command(BaseCommand):
    help = "Create (or refresh) the demo department and demo user."

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        group, _ = Group.objects.get_or_create(name=DEMO_GROUP)
        user_model = get_user_model()
        user, created = user_model.objects.get_or_create(
            username=DEMO_USER, defaults={"first_name": "Demo", "last_name": "User"}
        )
        if created:
            user.set_password(DEMO_PASSWORD)
            user.save()
        user.groups.add(group)
        verb = "Created" if created else "Kept"
        self.stdout.write(
            f"{verb} demo user '{DEMO_USER}' (password '{DEMO_PASSWORD}') in group '{DEMO_GROUP}'."
        )
