"""manage.py prompts_import FILE: make the library hold FILE's prompts (by uuid), idempotently."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from prompts.services import prompts_import


class Command(BaseCommand):
    help = (
        "Import a prompt library exported by prompts_export (idempotent by prompt uuid and version number)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("file")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            data = json.loads(Path(options["file"]).read_text(encoding="utf-8"))
            counts = prompts_import(data=data)
        except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
            raise CommandError(f"not imported: {exc}") from None
        self.stdout.write("{created} created, {updated} updated, {versions} versions added".format(**counts))
