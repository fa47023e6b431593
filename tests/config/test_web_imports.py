"""A web process holds only what it serves: heavy libraries of other roles stay out of its memory.

numpy (audio decoding, ~15 MB) belongs to the transcription workers, botocore (~10 MB) to the first
Bedrock call, Celery and kombu (~6 MB) to the first task sent, markdown-it and latex2mathml (with
Pygments' lexers, ~8 MB) to the first page rendered. A fresh interpreter loads the ASGI application
and the whole URL configuration, as a web process does before its first request, and must not have
imported any of them.
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


def test_a_web_process_imports_no_library_of_another_role() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=child_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert {"django", "gateway", "transcription", "ninja"} <= loaded  # the probe did load the platform
    assert not loaded & {"numpy", "botocore", "torch", "faster_whisper", "ctranslate2", "av"}
    assert not loaded & {"celery", "kombu", "markdown_it", "mdit_py_plugins", "latex2mathml"}


TASKS = """
import json
from django.conf import settings
import transcription.tasks, quotas.tasks, portal.tasks, config.tasks
import config, config.celery
tasks = [transcription.tasks.run_job, quotas.tasks.quota_alert_notify, portal.tasks.audit_expired_keys,
         config.tasks.ping]
print(json.dumps({
    "ours": [task.app is config.celery.app for task in tasks],
    "lazy": config.celery_app is config.celery.app,
    "broker": [task.app.conf.broker_url == settings.CELERY_BROKER_URL for task in tasks],
}))
"""


def test_a_task_imported_first_is_sent_through_the_configured_app() -> None:
    # Nothing imports Celery at start-up any more: a task module must bring the configured app (its
    # broker) itself, or `.delay()` would go to Celery's default app and its default broker.
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()\n" + TASKS],
        env=child_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {"ours": [True] * 4, "lazy": True, "broker": [True] * 4}
