"""Forms of the prompt library pages."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib.auth.models import Group

from prompts import render
from prompts.models import Prompt, PromptEditor, is_curator


def groups_for(user: Any) -> Any:
    """The departments ``user`` may give a prompt to: their own and those they edit (all for curators)."""
    if user.is_superuser or is_curator(user):
        return Group.objects.order_by("name")
    edited = PromptEditor.objects.filter(user=user).values("group_id")
    return Group.objects.filter(pk__in=edited).union(user.groups.all()).order_by("name")


class PromptForm(forms.Form):
    title = forms.CharField(max_length=200)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)
    category = forms.CharField(max_length=60, required=False)
    tags = forms.CharField(max_length=400, required=False, help_text="Comma-separated")
    scope = forms.ChoiceField(choices=Prompt.Scope.choices, initial=Prompt.Scope.PERSONAL)
    groups = forms.ModelMultipleChoiceField(queryset=Group.objects.none(), required=False,
                                            widget=forms.CheckboxSelectMultiple, label="Departments")  # fmt: skip
    system = forms.CharField(label="System message", widget=forms.Textarea(attrs={"rows": 6}), required=False)
    user_template = forms.CharField(label="User message", widget=forms.Textarea(attrs={"rows": 6}), required=False,
                                    help_text="Variables: {{name}}, {{tone | choices:formal,casual | default:formal}}; "
                                    "\\{{ is a literal {{")  # fmt: skip
    model = forms.CharField(label="Recommended model", max_length=128, required=False)
    params = forms.CharField(label="Recommended parameters (JSON)", required=False,
                             widget=forms.Textarea(attrs={"rows": 2}), initial="{}")  # fmt: skip
    message = forms.CharField(label="What changed", max_length=300, required=False)

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # union() querysets cannot be filtered, which ModelMultipleChoiceField needs: use the ids.
        ids = [g.pk for g in groups_for(user)]
        self.fields["groups"].queryset = Group.objects.filter(pk__in=ids).order_by("name")  # type: ignore[attr-defined]

    def clean_params(self) -> dict[str, Any]:
        raw = (self.cleaned_data.get("params") or "").strip() or "{}"
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise forms.ValidationError("Not valid JSON.") from None
        if not isinstance(value, dict):
            raise forms.ValidationError('A JSON object, e.g. {"temperature": 0.2}.')
        return value

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        system, user_template = data.get("system", ""), data.get("user_template", "")
        if not (system.strip() or user_template.strip()):
            raise forms.ValidationError("Write a system message or a user message.")
        try:
            render.variables_of(system, user_template)
        except render.TemplateError as exc:
            raise forms.ValidationError(str(exc)) from None
        if data.get("scope") == Prompt.Scope.GROUPS and not data.get("groups"):
            self.add_error("groups", "Choose at least one department.")
        return data


def variables_form(variables: list[render.Variable], data: Any = None) -> forms.Form:
    """A form with one field per variable; field names are prefixed so no variable shadows another field."""
    form = forms.Form(data)
    for v in variables:
        label = v.name.replace("_", " ").capitalize()
        initial = v.default
        field: forms.Field
        if v.choices:
            field = forms.ChoiceField(choices=[(c, c) for c in v.choices], required=v.required, label=label)
        elif v.type == "boolean":
            field = forms.BooleanField(required=False, label=label)
            initial = (v.default or "").lower() in render.TRUE  # type: ignore[assignment]
        elif v.type == "number":
            field = forms.CharField(required=v.required, label=label,
                                    widget=forms.NumberInput(attrs={"step": "any"}))  # fmt: skip
        elif v.type == "textarea":
            field = forms.CharField(required=v.required, label=label, strip=False,
                                    widget=forms.Textarea(attrs={"rows": 3}), max_length=render.MAX_VALUE_CHARS)  # fmt: skip
        else:
            field = forms.CharField(
                required=v.required, label=label, strip=False, max_length=render.MAX_VALUE_CHARS
            )
        field.initial = initial
        form.fields[f"var_{v.name}"] = field
    return form
