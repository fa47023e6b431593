"""Portal state: the app catalogue (chat and conversations come with the portal issue)."""

from __future__ import annotations

from django.contrib.auth.models import Group
from django.db import models


class App(models.Model):
    """A registered LLM app of the catalogue. It can own service keys, so its usage is per app."""

    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    owner_group = models.ForeignKey(Group, on_delete=models.PROTECT, related_name="owned_apps")
    url = models.URLField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
