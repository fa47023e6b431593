"""manage.py prompts_export [FILE]: the prompt library (every prompt, every version) as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand

from prompts.services import prompts_export


class Command(BaseCommand):
    help = "Export the prompt library as JSON (to FILE, or standard output)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("file", nargs="?", help="Where to write; standard output when omitted")

    def handle(self, *args: Any, **options: Any) -> None:
        text = json.dumps(prompts_export(), indent=2, ensure_ascii=False) + "\n"
        if options["file"]:
            Path(options["file"]).write_text(text, encoding="utf-8")
            self.stderr.write(f"Wrote {options['file']}")
        else:
            self.stdout.write(text, ending="")
