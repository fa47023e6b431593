from __future__ import annotations

from django.apps import AppConfig


class PromptsConfig(AppConfig):
    name = "prompts"
    verbose_name = "Prompt library"

    def ready(self) -> None:
        from prompts import signals

        signals.connect()
