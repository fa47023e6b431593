"""The prompt library: prompts, their versions, the departments' prompt editors, favourites.

Who may do what is decided here (``Prompt.objects.visible_to``, ``Prompt.editable_by``,
``Prompt.publishable_by``) so that views, the API and the gateway agree.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, Group
from django.db import models
from django.db.models import Q

from prompts import render

CURATE_PERMISSION = "prompts.curate_prompt"
UserLike = AbstractBaseUser | AnonymousUser


def _group_ids(user: Any) -> set[int]:
    cached = getattr(user, "_prompt_group_ids", None)
    if cached is None:
        cached = set(user.groups.values_list("id", flat=True)) if user.is_authenticated else set()
        user._prompt_group_ids = cached
    return cached


def _editor_group_ids(user: Any) -> set[int]:
    cached = getattr(user, "_prompt_editor_group_ids", None)
    if cached is None:
        cached = (
            set(PromptEditor.objects.filter(user=user).values_list("group_id", flat=True))
            if user.is_authenticated
            else set()
        )
        user._prompt_editor_group_ids = cached
    return cached


def is_curator(user: Any) -> bool:
    """Whether ``user`` curates the company-wide library."""
    return bool(user.is_authenticated and user.is_active and user.has_perm(CURATE_PERMISSION))


class PromptQuerySet(models.QuerySet["Prompt"]):
    def published_for(self, *, user_id: int | None, group_ids: set[int] | frozenset[int]) -> PromptQuerySet:
        """Published prompts whose scope includes this caller (what an API key may see and call)."""
        scope = Q(scope=Prompt.Scope.COMPANY) | Q(scope=Prompt.Scope.GROUPS, groups__in=list(group_ids))
        if user_id is not None:
            scope |= Q(scope=Prompt.Scope.PERSONAL, owner_id=user_id)
        return self.filter(scope, published_version__isnull=False, archived=False).distinct()

    def visible_to(self, user: Any) -> PromptQuerySet:
        """What ``user`` may read: published prompts of their scopes, and whatever they may edit."""
        if not user.is_authenticated or not user.is_active:
            return self.none()
        if user.is_superuser:  # everything but other people's personal prompts (the admin console has those)
            return self.exclude(Q(scope=Prompt.Scope.PERSONAL) & ~Q(owner_id=user.pk))
        published = self.published_for(user_id=user.pk, group_ids=_group_ids(user)).values("pk")
        editable = Q(owner_id=user.pk) | Q(
            scope=Prompt.Scope.GROUPS, groups__in=list(_editor_group_ids(user))
        )
        if is_curator(user):
            editable |= Q(scope__in=[Prompt.Scope.COMPANY, Prompt.Scope.GROUPS])
        return self.filter(Q(pk__in=published) | editable).distinct()

    def search(self, text: str) -> PromptQuerySet:
        """Prompts matching ``text``; words starting with # are tags, the others match title,
        description, tags and category."""
        qs: PromptQuerySet = self
        for word in text.split()[:8]:
            if word.startswith("#") and len(word) > 1:
                qs = qs.with_tag(word[1:])
            else:
                qs = qs.filter(
                    Q(title__icontains=word) | Q(description__icontains=word) | Q(tags__icontains=word)
                    | Q(category__icontains=word)
                )  # fmt: skip
        return qs

    def with_tag(self, tag: str) -> PromptQuerySet:
        # Tags are stored as ",a,b," so a tag matches whole, never as a substring of another.
        return self.filter(tags__icontains=f",{normalise_tag(tag)},")


def normalise_tag(tag: str) -> str:
    return "-".join(tag.strip().lower().replace(",", " ").split())[:40]


class Prompt(models.Model):
    """A prompt of the library. Its body lives in versions; one of them may be published."""

    class Scope(models.TextChoices):
        COMPANY = "company", "Company-wide"
        GROUPS = "groups", "Departments"
        PERSONAL = "personal", "Personal"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    category = models.CharField(max_length=60, blank=True, db_index=True)
    tags = models.CharField(max_length=500, blank=True, help_text="Stored as ,tag1,tag2, (use tag_list)")
    scope = models.CharField(max_length=10, choices=Scope.choices, default=Scope.PERSONAL)
    groups = models.ManyToManyField(Group, blank=True, related_name="prompts",
                                    help_text="The departments that see it (scope Departments)")  # fmt: skip
    # SET_NULL: the prompt outlives its author; an editor of its scope can hand it to someone.
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="owned_prompts")  # fmt: skip
    published_version = models.ForeignKey("PromptVersion", null=True, blank=True, on_delete=models.SET_NULL,
                                          related_name="+")  # fmt: skip
    review_requested_at = models.DateTimeField(null=True, blank=True)
    review_requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                            on_delete=models.SET_NULL, related_name="+")  # fmt: skip
    archived = models.BooleanField(default=False)
    use_count = models.PositiveIntegerField(default=0, help_text="Times it was used from the portal's / menu")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = PromptQuerySet.as_manager()

    class Meta:
        ordering = ["title"]
        permissions = [("curate_prompt", "Can curate and publish company-wide prompts")]

    def __str__(self) -> str:
        return self.title

    @property
    def tag_list(self) -> list[str]:
        return [t for t in self.tags.split(",") if t]

    def set_tags(self, tags: list[str] | str) -> None:
        items = tags.split(",") if isinstance(tags, str) else tags
        clean = list(dict.fromkeys(t for t in (normalise_tag(i) for i in items) if t))
        self.tags = f",{','.join(clean)}," if clean else ""

    def latest_version(self) -> PromptVersion | None:
        return self.versions.order_by("-number").first()

    def group_ids(self) -> set[int]:
        return {g.pk for g in self.groups.all()}

    def editable_by(self, user: Any) -> bool:
        """The owner; for shared prompts also the editors of one of its departments, curators and
        superusers (a personal prompt stays its owner's alone)."""
        if not user.is_authenticated or not user.is_active:
            return False
        if self.owner_id is not None and self.owner_id == user.pk:
            return True
        if self.scope == self.Scope.PERSONAL:
            return False
        if user.is_superuser:
            return True
        if self.scope == self.Scope.GROUPS:
            return bool(self.group_ids() & _editor_group_ids(user)) or is_curator(user)
        return self.scope == self.Scope.COMPANY and is_curator(user)

    def publishable_by(
        self, user: Any, *, scope: str | None = None, group_ids: set[int] | None = None
    ) -> bool:
        """Whether ``user`` may publish in ``scope`` (default: the prompt's own): a personal prompt
        by its owner, a departments prompt by an editor of every one of them or a curator, a
        company-wide prompt by a curator."""
        if not user.is_authenticated or not user.is_active:
            return False
        scope = scope or self.scope
        if scope == self.Scope.PERSONAL:  # only its owner sees it: nobody else has anything to publish
            return self.owner_id is not None and self.owner_id == user.pk
        if user.is_superuser or is_curator(user):
            return True
        if scope == self.Scope.GROUPS:
            wanted = self.group_ids() if group_ids is None else group_ids
            return bool(wanted) and wanted <= _editor_group_ids(user)
        return False

    def readable_by(self, user: Any) -> bool:
        return Prompt.objects.visible_to(user).filter(pk=self.pk).exists()


class PromptVersion(models.Model):
    """One saved state of a prompt's body. Never changed once written."""

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    system = models.TextField(blank=True, help_text="The system message template")
    user_template = models.TextField("user message", blank=True, help_text="The user message template")
    model = models.CharField("recommended model", max_length=128, blank=True)
    params = models.JSONField(
        default=dict, blank=True, help_text='Recommended parameters, e.g. {"temperature": 0.2}'
    )
    message = models.CharField(max_length=300, blank=True, help_text="What changed")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="+")  # fmt: skip
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["prompt", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["prompt", "number"], name="promptversion_unique_number")
        ]

    def __str__(self) -> str:
        return f"{self.prompt} v{self.number}"

    def variables(self) -> list[render.Variable]:
        return render.variables_of(self.system, self.user_template)

    def render(self, given: dict[str, Any], *, strict: bool = True) -> tuple[str, str]:
        """The (system, user) texts with ``given`` filled in; VariableError on a bad or missing value."""
        values = render.resolve(self.variables(), given, strict=strict)
        return render.render(self.system, values), render.render(self.user_template, values)

    def content(self) -> dict[str, Any]:
        return {"system": self.system, "user": self.user_template, "model": self.model, "params": self.params}


class PromptEditor(models.Model):
    """A prompt editor of a department: edits and publishes that department's prompts."""

    group = models.ForeignKey(Group, on_delete=models.CASCADE, related_name="prompt_editors")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="prompt_editor_of"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["group__name"]
        constraints = [models.UniqueConstraint(fields=["group", "user"], name="prompteditor_unique")]

    def __str__(self) -> str:
        return f"{self.user} edits {self.group} prompts"


class PromptFavorite(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="prompt_favorites"
    )
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="favorites")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "prompt"], name="promptfavorite_unique")]

    def __str__(self) -> str:
        return f"{self.user} ★ {self.prompt}"
