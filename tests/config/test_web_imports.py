"""A web process holds only what it serves: heavy libraries of other roles stay out of its memory.

numpy (audio decoding, ~15 MB) belongs to the transcription workers, botocore (~10 MB) to the first
Bedrock call. A fresh interpreter loads the ASGI application and the whole URL configuration, as a
web process does before its first request, and must not have imported either.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.processes import child_env

PROBE = """
import json, sys
import config.asgi
import django.urls
django.urls.get_resolver().url_patterns  # every app's URLs and API routers
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_a_web_process_does_not_import_numpy_or_botocore() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=child_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert {"django", "gateway", "transcription", "ninja"} <= loaded  # the probe did load the platform
    assert not loaded & {"numpy", "botocore", "torch", "faster_whisper", "ctranslate2", "av"}
