"""Logging: the request id on every line, JSON lines on demand, secrets scrubbed, content opt-in.

- `request_id` (a context variable) is set by the gateway's ASGI handler and, for everything
  Django serves, by `RequestIdMiddleware`; `RequestIdFilter` copies it onto every record.
- `JsonFormatter` writes one object per line: ts, level, logger, message, request_id, and any
  extras (``logger.info("…", extra={...})``), with the traceback as `exc`.
- `RedactSecrets` replaces issued keys, bearer tokens, JWTs and provider keys in every record, so
  a key never reaches a log, not even inside content that content logging lets through.
- Request and response bodies are logged (at DEBUG, logger ``gateway.content``) only for members of
  the groups named by LOG_CONTENT_GROUPS (`content_sink`).
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

logger = logging.getLogger(__name__)
content_logger = logging.getLogger("gateway.content")

CONTENT_MAX_BYTES = 64 * 1024
# Every attribute a bare LogRecord has: anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "request_id",
}


def logging_config(*, fmt: str, level: str, key_prefix: str, content: bool) -> dict[str, Any]:
    """The LOGGING dict of the settings: ``fmt`` is "text" (the development default) or "json"."""
    if fmt not in ("text", "json"):
        raise ValueError(f"LOG_FORMAT={fmt!r}: expected text or json")
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request_id": {"()": "config.logs.RequestIdFilter"},
            "redact": {"()": "config.logs.RedactSecrets", "key_prefix": key_prefix},
        },
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
            "json": {"()": "config.logs.JsonFormatter"},
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "json" if fmt == "json" else "plain",
                "filters": ["request_id", "redact"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django.db.backends": {"level": "INFO"},
            # httpx logs every upstream request at INFO: a line of I/O per call on the hot path, and
            # the provider's URL in the log.
            "httpx": {"level": "WARNING"},
        },
    }
    if content:
        config["loggers"]["gateway.content"] = {"level": "DEBUG"}
    if fmt == "json":
        # uvicorn configures its own text handlers before Django starts: route them through ours.
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            config["loggers"][name] = {"handlers": ["console"], "level": "INFO", "propagate": False}
    return config


class RequestIdFilter(logging.Filter):
    """Puts the current request id on the record (empty outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = request_id.get()
        return True


class RedactSecrets(logging.Filter):
    """Replaces secrets in the message, the traceback and string extras by ``<redacted>``."""

    def __init__(self, key_prefix: str = "llmc") -> None:
        super().__init__()
        self.pattern = secret_pattern(key_prefix)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: the handler reports it, it must not raise at the caller
            return True
        clean = self.pattern.sub(_redacted, message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.pattern.sub(_redacted, record.exc_text)
        for name, value in list(record.__dict__.items()):
            if name not in _STANDARD and isinstance(value, str):
                setattr(record, name, self.pattern.sub(_redacted, value))
        return True


def secret_pattern(key_prefix: str) -> re.Pattern[str]:
    """Issued keys, `Bearer …`, JWTs (Entra ID tokens) and the usual provider key shapes."""
    return re.compile(
        "|".join([
            rf"{re.escape(key_prefix)}-[0-9A-Za-z]{{20,}}",
            r"(?<=[Bb]earer )[^\s\"',;]+",
            r"eyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]+",
            r"\bsk-[\w-]{16,}",
            r"\bAKIA[0-9A-Z]{16}\b",
            r"\bAIza[\w-]{30,}",
        ])
    )  # fmt: skip


def _redacted(match: re.Match[str]) -> str:
    return "<redacted>"


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "") or request_id.get(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name not in payload:
                payload[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            payload["exc"] = record.exc_text
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(payload, default=str).decode()


# --- Django: the request id of everything that is not the gateway's lean handler -------------------


class RequestIdMiddleware:
    """Gives each Django request an id (in every log line, and as the `X-Request-ID` header)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.is_async = _is_coroutine(get_response)
        if self.is_async:
            from asgiref.sync import markcoroutinefunction

            markcoroutinefunction(self)

    # The id is not reset on the way out: Django logs a 4xx/5xx response ("Not Found: …") after the
    # middleware chain has returned, and that line must carry it too. Under ASGI every request runs
    # in a task of its own, so the value ends with the request; the next request sets a new one.
    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self.__acall__(request)
        request_id.set(new_request_id())
        response = self.get_response(request)
        response.headers.setdefault("X-Request-ID", request_id.get())
        return response

    async def __acall__(self, request: Any) -> Any:
        request_id.set(new_request_id())
        response = await self.get_response(request)
        response.headers.setdefault("X-Request-ID", request_id.get())
        return response


def _is_coroutine(func: Callable[..., Any]) -> bool:
    from asgiref.sync import iscoroutinefunction

    return iscoroutinefunction(func)


def new_request_id() -> str:
    """A request id in the gateway's format."""
    return f"req_{uuid.uuid4().hex}"


# --- content logging -------------------------------------------------------------------------------

_content_groups: tuple[tuple[str, ...], frozenset[int], float] = ((), frozenset(), 0.0)


async def _content_group_ids(names: tuple[str, ...]) -> frozenset[int]:
    """The ids of LOG_CONTENT_GROUPS, cached like the catalogue (one query per GATEWAY_CACHE_TTL)."""
    global _content_groups
    from django.conf import settings

    cached_names, ids, loaded = _content_groups
    if cached_names == names and time.monotonic() - loaded < settings.GATEWAY_CACHE_TTL:
        return ids
    from django.contrib.auth.models import Group

    ids = frozenset([pk async for pk in Group.objects.filter(name__in=names).values_list("pk", flat=True)])
    _content_groups = (names, ids, time.monotonic())
    return ids


async def content_sink(call: Any, sink: Any) -> Any:
    """``sink``, or a wrapper that logs the call's bodies when its caller's groups allow it.

    Free when LOG_CONTENT_GROUPS is empty or ``gateway.content`` is not enabled for DEBUG.
    """
    from django.conf import settings

    names = settings.LOG_CONTENT_GROUPS
    if not names or not content_logger.isEnabledFor(logging.DEBUG):
        return sink
    try:
        allowed = await _content_group_ids(tuple(names))
    except Exception:
        logger.exception("could not read LOG_CONTENT_GROUPS; content is not logged")
        return sink
    if not call.principal.group_ids & allowed:
        return sink
    content_logger.debug(
        "request body", extra={"endpoint": call.endpoint, "content": orjson.dumps(call.body).decode()}
    )
    return ContentLoggingSink(sink, call.endpoint)


class ContentLoggingSink:
    """Passes everything through to ``inner`` and logs the response body (bounded) when it ends."""

    def __init__(self, inner: Any, endpoint: str) -> None:
        self.inner, self.endpoint = inner, endpoint
        self.kept: list[bytes] = []
        self.size = 0

    @property
    def started(self) -> bool:
        return bool(self.inner.started)

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        await self.inner.start(status, headers)

    async def send(self, chunk: bytes, *, more: bool) -> None:
        if self.size < CONTENT_MAX_BYTES:
            self.kept.append(chunk[: CONTENT_MAX_BYTES - self.size])
            self.size += len(self.kept[-1])
        await self.inner.send(chunk, more=more)
        if not more:
            content_logger.debug(
                "response body",
                extra={"endpoint": self.endpoint, "content": b"".join(self.kept).decode("utf-8", "replace"),
                       "truncated": self.size >= CONTENT_MAX_BYTES},
            )  # fmt: skip

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
