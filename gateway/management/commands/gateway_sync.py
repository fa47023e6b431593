"""`manage.py gateway_sync FILE.yaml [--prune]`: load the declarative configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from django.core.management.base import BaseCommand, CommandError

from gateway.sync import SyncError, config_sync


class Command(BaseCommand):
    help = (
        "Make providers, models, prices, deployments, groups, users, apps, quotas and prompts match a YAML file "
        "(an absent api_key keeps the stored credential)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--prune", action="store_true", help="delete what the file no longer names")

    def handle(self, *args: Any, file: Path, prune: bool, **options: Any) -> None:
        try:
            data = yaml.safe_load(file.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise CommandError(f"cannot read {file}: {exc}") from exc
        try:
            report = config_sync(data=data or {}, prune=prune)
        except SyncError as exc:
            raise CommandError(f"{file}: {exc}") from exc
        for line in report.lines():
            self.stdout.write(line)
