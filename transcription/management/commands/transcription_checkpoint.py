"""Write the openai-whisper checkpoint of a CTranslate2 Whisper model (default: the bundled tiny.en)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Convert a CTranslate2 Whisper model to an openai-whisper .pt checkpoint (needs the whisper extra)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--source", help="a CTranslate2 model directory (default: the bundled tiny.en)")
        parser.add_argument("--output", help="the .pt file (default: TRANSCRIPTION_MODELS_DIR/tiny.en.pt)")

    def handle(self, *args: Any, **options: Any) -> None:
        from transcription.convert import openai_checkpoint_from_ct2
        from transcription.engines.models import BUNDLED, bundled_ct2_path

        source = Path(options["source"]) if options["source"] else bundled_ct2_path()
        output = Path(options["output"] or settings.TRANSCRIPTION_MODELS_DIR / f"{BUNDLED}.pt")
        self.stdout.write(str(openai_checkpoint_from_ct2(source, output)))
