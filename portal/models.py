"""Portal state: the app catalogue, the Entra ID group mapping and the audit log (chat and
conversations come with the portal issue)."""

from __future__ import annotations

from django.contrib.auth.models import Group
from django.db import models
from django.utils import timezone


class App(models.Model):
    """A registered LLM app of the catalogue. It can own service keys, so its usage is per app."""

    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    owner_group = models.ForeignKey(Group, on_delete=models.PROTECT, related_name="owned_apps")
    url = models.URLField(blank=True)
    entra_app_id = models.CharField(
        "Entra ID application (client) id", max_length=64, blank=True, db_index=True,
        help_text="App-only Entra ID tokens whose azp/appid is this id call the API as this app",
    )  # fmt: skip
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class GroupMapping(models.Model):
    """Maps an Entra ID group (object id) or app role (value) to a department and/or admin flags.

    Applied at every Entra ID sign-in (portal.identity.sync_groups): the user joins the groups their
    token maps to and leaves the mapped groups it no longer maps to; groups no mapping names are
    never touched, and token groups no mapping names are ignored.
    """

    class Source(models.TextChoices):
        GROUP = "group", "Entra ID group (object id, from the groups claim)"
        ROLE = "role", "app role (value, from the roles claim)"

    source = models.CharField(max_length=8, choices=Source.choices, default=Source.GROUP)
    value = models.CharField(max_length=200, help_text="The group's object id, or the app role's value")
    group = models.ForeignKey(
        Group, null=True, blank=True, on_delete=models.CASCADE, related_name="entra_mappings",
        help_text="The department members join; empty = only the flags below",
    )  # fmt: skip
    grants_staff = models.BooleanField(default=False, help_text="Members may sign in to the admin console")
    grants_superuser = models.BooleanField(default=False, help_text="Members get every permission")
    note = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["source", "value"]
        verbose_name = "Entra ID mapping"
        constraints = [
            models.UniqueConstraint(fields=["source", "value", "group"], name="groupmapping_unique"),
            models.CheckConstraint(
                condition=models.Q(group__isnull=False)
                | models.Q(grants_staff=True)
                | models.Q(grants_superuser=True),
                name="groupmapping_does_something",
            ),
        ]

    def __str__(self) -> str:
        target = self.group.name if self.group else "flags"
        return f"{self.get_source_display().split(' (')[0]} {self.value} → {target}"


class AuditEvent(models.Model):
    """One audited action: an admin change or a key event. Written once, never changed.

    ``before`` and ``after`` are snapshots of the object with every secret replaced by a marker
    (portal.audit.snapshot): no key plaintext or digest, no password hash, no provider credential.
    """

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # Plain ids, not foreign keys: deleting a user or an object must not rewrite its history.
    actor_id = models.PositiveBigIntegerField(null=True, blank=True, db_index=True)
    actor = models.CharField(max_length=150, blank=True, help_text="Username at the time, or gateway/system")
    action = models.CharField(max_length=48, db_index=True)
    object_type = models.CharField(max_length=100, blank=True, db_index=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor or '-'} {self.action} {self.object_repr}"
