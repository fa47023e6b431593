"""Prompt templates: variables written as ``{{name | modifier | …}}`` and their one-pass rendering.

Modifiers: ``type:text|textarea|number|boolean``, ``default:VALUE``, ``choices:a,b,c``, ``required``
and ``optional``. A variable without a default is required unless marked ``optional``; ``required``
makes a variable with a default required anyway (the default then only pre-fills the form).
``\\{{`` is a literal ``{{``. Rendering is a single regex pass over the template, so a value that
itself looks like ``{{other}}`` is inserted as text and never expanded again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

NAME = r"[A-Za-z_][A-Za-z0-9_]{0,63}"
# Either an escaped opener \{{ (a literal {{), or {{ name (| modifier)* }}; modifiers hold no braces.
TOKEN = re.compile(r"(\\\{\{)|\{\{\s*(" + NAME + r")\s*((?:\|[^{}|]*)*)\}\}")
TYPES = ("text", "textarea", "number", "boolean")
MAX_VALUE_CHARS = 20_000
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


class TemplateError(ValueError):
    """A template that cannot be parsed: two different definitions of a variable, an unknown modifier."""


class VariableError(ValueError):
    """A value that does not fit its variable; ``name`` is the variable (or the unknown name given)."""

    def __init__(self, name: str, message: str, code: str = "invalid_prompt_variable") -> None:
        super().__init__(message)
        self.name, self.message, self.code = name, message, code


@dataclass(frozen=True)
class Variable:
    name: str
    type: str = "text"
    default: str | None = None
    choices: tuple[str, ...] = ()
    required: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "default": self.default, "choices": list(self.choices),
                "required": self.required}  # fmt: skip


@dataclass
class _Spec:
    type: str = "text"
    default: str | None = None
    choices: tuple[str, ...] = ()
    required: bool | None = None
    mods: tuple[str, ...] = field(default_factory=tuple)


def _parse_modifiers(name: str, raw: str) -> _Spec:
    spec = _Spec()
    mods = tuple(m.strip() for m in raw.split("|")[1:] if m.strip())
    spec.mods = mods
    for mod in mods:
        key, sep, value = mod.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "type" and sep:
            if value not in TYPES:
                raise TemplateError(f"{{{{{name}}}}}: unknown type `{value}` (one of {', '.join(TYPES)})")
            spec.type = value
        elif key == "default" and sep:
            spec.default = value
        elif key == "choices" and sep:
            spec.choices = tuple(c.strip() for c in value.split(",") if c.strip())
            if not spec.choices:
                raise TemplateError(f"{{{{{name}}}}}: `choices:` needs at least one value")
        elif key == "required" and not sep:
            spec.required = True
        elif key == "optional" and not sep:
            spec.required = False
        else:
            raise TemplateError(f"{{{{{name}}}}}: unknown modifier `{mod}`")
    if spec.choices and spec.default is not None and spec.default not in spec.choices:
        raise TemplateError(f"{{{{{name}}}}}: the default `{spec.default}` is not one of its choices")
    return spec


def variables_of(*templates: str) -> list[Variable]:
    """The variables of ``templates`` in order of first appearance.

    A later bare ``{{name}}`` reuses the definition; two definitions with modifiers must agree.
    """
    found: dict[str, tuple[_Spec, Variable]] = {}
    for template in templates:
        for match in TOKEN.finditer(template or ""):
            if match.group(1):
                continue
            name, spec = match.group(2), _parse_modifiers(match.group(2), match.group(3))
            required = spec.required if spec.required is not None else spec.default is None
            variable = Variable(name=name, type=spec.type, default=spec.default, choices=spec.choices,
                                required=required)  # fmt: skip
            previous = found.get(name)
            if previous is None:
                found[name] = (spec, variable)
            elif spec.mods:
                if not previous[0].mods:
                    found[name] = (spec, variable)
                elif previous[1] != variable:
                    raise TemplateError(f"{{{{{name}}}}} is defined twice with different modifiers")
    return [variable for _, variable in found.values()]


def _coerce(variable: Variable, value: Any) -> str:
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, int | float):
        value = str(value)
    elif not isinstance(value, str):
        raise VariableError(
            variable.name, f"The variable `{variable.name}` must be a string, number or boolean."
        )
    if len(value) > MAX_VALUE_CHARS:
        raise VariableError(
            variable.name, f"The variable `{variable.name}` is longer than {MAX_VALUE_CHARS} characters."
        )
    if variable.choices and value not in variable.choices:
        raise VariableError(
            variable.name, f"The variable `{variable.name}` must be one of: {', '.join(variable.choices)}."
        )
    if variable.type == "number" and value != "":
        try:
            float(value)
        except ValueError:
            raise VariableError(variable.name, f"The variable `{variable.name}` must be a number.") from None
    if variable.type == "boolean":
        lowered = value.strip().lower()
        if lowered not in TRUE + FALSE:
            raise VariableError(variable.name, f"The variable `{variable.name}` must be true or false.")
        value = "true" if lowered in TRUE else "false"
    return value


def resolve(variables: list[Variable], given: dict[str, Any], *, strict: bool = True) -> dict[str, str]:
    """The value of every variable: given, else its default; VariableError names the first problem.

    An empty value counts as not given. ``strict`` refuses names the template does not define (a
    typo would otherwise pass silently).
    """
    if strict:
        known = {v.name for v in variables}
        for name in given:
            if name not in known:
                shown = str(name)[:64]
                raise VariableError(
                    shown, f"The prompt has no variable `{shown}`.", "unknown_prompt_variable"
                )
    values: dict[str, str] = {}
    for variable in variables:
        raw = given.get(variable.name)
        if raw is None or raw == "":
            if variable.required:
                raise VariableError(
                    variable.name, f"The variable `{variable.name}` is required.", "missing_prompt_variable"
                )
            values[variable.name] = variable.default or ""
            continue
        values[variable.name] = _coerce(variable, raw)
    return values


def render(template: str, values: dict[str, str]) -> str:
    """``template`` with each variable replaced by its value, in one pass (values are not re-scanned)."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(1):
            return "{{"
        return values.get(match.group(2), "")

    return TOKEN.sub(substitute, template or "")
