"""Portal state: the app catalogue, the Entra ID group mapping and the audit log (chat and
conversations come with the portal issue)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group
from django.db import models
from django.utils import timezone


def _icon_path(instance: App, filename: str) -> str:
    # A generated name: the uploader's file name never reaches the file system or a URL.
    import uuid
    from pathlib import PurePath

    return f"app-icons/{uuid.uuid4().hex}{PurePath(filename).suffix.lower()[:5]}"


ICON_MAX_BYTES = 256 * 1024
# Raster formats only, recognised by their first bytes: an SVG (which can carry script) or an HTML
# file renamed .png is refused whatever its name says.
ICON_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF87a": "image/gif",
                   b"GIF89a": "image/gif"}  # fmt: skip


def icon_content_type(head: bytes) -> str | None:
    """The image type of a file starting with ``head`` (PNG, JPEG, GIF, WebP), or None."""
    for signature, content_type in ICON_SIGNATURES.items():
        if head.startswith(signature):
            return content_type
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def validate_icon(value: Any) -> None:
    """An uploaded icon must be a small PNG, JPEG, GIF or WebP image."""
    from django.core.exceptions import ValidationError

    if value.size > ICON_MAX_BYTES:
        raise ValidationError(f"The icon is larger than {ICON_MAX_BYTES // 1024} KB.")
    position = value.tell() if hasattr(value, "tell") else 0
    value.seek(0)
    head = value.read(16)
    value.seek(position)
    if icon_content_type(head) is None:
        raise ValidationError("The icon must be a PNG, JPEG, GIF or WebP image.")


class AppQuerySet(models.QuerySet["App"]):
    def visible_to(self, user: Any) -> AppQuerySet:
        """The apps ``user`` may see in the catalogue: open to everyone, or to one of their groups."""
        if not user.is_authenticated or not user.is_active:
            return self.none()
        if user.is_superuser:
            return self.all()
        groups = list(user.groups.values_list("id", flat=True))
        return self.filter(
            models.Q(visible_to_groups__isnull=True) | models.Q(visible_to_groups__in=groups)
        ).distinct()


class App(models.Model):
    """A registered LLM app of the catalogue. It can own service keys, so its usage is per app."""

    class Status(models.TextChoices):
        PRODUCTION = "production", "Production"
        PROTOTYPE = "prototype", "Prototype"
        STARTER_KIT = "starter_kit", "Starter kit"

    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    owner_group = models.ForeignKey(Group, on_delete=models.PROTECT, related_name="owned_apps")
    url = models.URLField(blank=True)
    entra_app_id = models.CharField(
        "Entra ID application (client) id", max_length=64, blank=True, db_index=True,
        help_text="App-only Entra ID tokens whose azp/appid is this id call the API as this app",
    )  # fmt: skip
    category = models.CharField(max_length=60, blank=True, db_index=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PROTOTYPE)
    docs_url = models.URLField("documentation", blank=True)
    icon_image = models.FileField(
        "icon", upload_to=_icon_path, blank=True, validators=[validate_icon],
        help_text="PNG, JPEG, GIF or WebP, at most 256 KB (served by the portal, never from elsewhere)",
    )  # fmt: skip
    icon_text = models.CharField(
        "icon text", max_length=8, blank=True, help_text="An emoji or up to 8 characters"
    )
    visible_to_groups = models.ManyToManyField(
        Group,
        blank=True,
        related_name="visible_apps",
        help_text="Who sees it in the catalogue; empty = everyone",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = AppQuerySet.as_manager()

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


# --- Chat ------------------------------------------------------------------------------------------


class ConversationQuerySet(models.QuerySet["Conversation"]):
    def owned_by(self, user_id: int | None) -> ConversationQuerySet:
        """Only ``user_id``'s conversations: every lookup goes through this, so others get a 404."""
        return self.filter(owner_id=user_id)

    def matching(self, query: str) -> ConversationQuerySet:
        """Conversations whose title or any message contains ``query`` (case-insensitive)."""
        query = query.strip()
        if not query:
            return self
        in_messages = Message.objects.filter(conversation=models.OuterRef("pk"), content__icontains=query)
        return self.filter(models.Q(title__icontains=query) | models.Exists(in_messages))


class Conversation(models.Model):
    """One chat of one user: its model, system prompt and what it has cost so far.

    The totals are what was spent, so they keep the cost of answers later regenerated or cut off
    by an edit.
    """

    owner = models.ForeignKey("auth.User", on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, default="New chat")
    model = models.CharField(max_length=128, blank=True)
    system_prompt = models.TextField(blank=True)
    pinned = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8, default=0)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        ordering = ["-pinned", "-updated_at", "-id"]
        indexes = [models.Index(fields=["owner", "-pinned", "-updated_at"], name="conversation_sidebar")]

    def __str__(self) -> str:
        return self.title

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Message(models.Model):
    """One turn. An assistant answer is stored with its sanitised HTML once it completes, so opening
    a conversation never renders markdown again."""

    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        PENDING = "pending"  # created, its answer not asked for yet
        STREAMING = "streaming"
        COMPLETE = "complete"
        STOPPED = "stopped"  # the user stopped it (or left): the partial answer is kept
        ERROR = "error"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    rendered_html = models.TextField(blank=True)
    model = models.CharField(max_length=128, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    error = models.TextField(blank=True)
    request_id = models.CharField(max_length=64, blank=True, help_text="The gateway's request id (ledger)")
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8, default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["conversation", "id"], name="message_in_conversation")]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:60]}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def in_progress(self) -> bool:
        return self.status in (self.Status.PENDING, self.Status.STREAMING)
