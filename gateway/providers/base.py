"""The provider interface and the error kinds every adapter maps its vendor's failures to."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.catalog import DeploymentInfo
from gateway.errors import GatewayError


class ErrorKind(enum.StrEnum):
    """How the router treats a failure: retryable kinds move on to the next deployment."""

    TIMEOUT = "timeout"
    CONNECTION = "connection_error"
    RATE_LIMITED = "upstream_rate_limited"
    SERVER = "upstream_server_error"
    CLIENT = "upstream_client_error"  # the request itself is wrong: never retried
    AUTH = "upstream_auth_error"  # our credential is wrong: an operator problem, not the caller's
    UNSUPPORTED = "unsupported_operation"

    @property
    def retryable(self) -> bool:
        return self in {ErrorKind.TIMEOUT, ErrorKind.CONNECTION, ErrorKind.RATE_LIMITED, ErrorKind.SERVER}


def kind_for_status(status: int) -> ErrorKind:
    """The error kind of an upstream HTTP status."""
    if status == 429:
        return ErrorKind.RATE_LIMITED
    if status in (401, 403):
        return ErrorKind.AUTH
    if status >= 500:
        return ErrorKind.SERVER
    return ErrorKind.CLIENT


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None


class UnsupportedOperation(Exception):
    """The deployment's provider cannot serve this endpoint."""


_URL = re.compile(r"https?://[^\s\"'<>]+")
# Key-shaped strings (sk-…, llmc-…) and long opaque tokens: whatever they are, a client need not see them.
_SECRETISH = re.compile(r"\b(?:sk|pk|rk|llmc|key)-[A-Za-z0-9_\-]{8,}|\b[A-Za-z0-9_\-]{32,}")


class Adapter:
    """Builds upstream requests for one provider kind and reads its answers.

    Pass-through adapters (OpenAI-style providers) only build the request: the answer is relayed
    byte for byte. Translating adapters also turn the vendor's answer, stream and errors into
    OpenAI's shapes.
    """

    # Endpoints (our path after /v1/) the provider serves.
    endpoints: frozenset[str] = frozenset()
    passthrough = True

    def build(
        self, endpoint: str, deployment: DeploymentInfo, body: dict[str, Any], call: Any = None
    ) -> UpstreamRequest:
        """The upstream request for ``endpoint``; ``body`` is the OpenAI body with the provider's model."""
        raise NotImplementedError

    def decode(self, endpoint: str, deployment: DeploymentInfo, raw: bytes, call: Any) -> tuple[bytes, Any]:
        """(bytes for the client, the parsed OpenAI-shaped body or None)."""
        try:
            return raw, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw, None

    def stream_decoder(self, endpoint: str, deployment: DeploymentInfo, call: Any, strip_usage: bool) -> Any:
        """An object with feed(bytes) -> bytes, finish() -> bytes, .usage and completion_text()."""
        raise NotImplementedError

    def parse_error(self, body: bytes) -> tuple[str, Any, Any, Any]:
        """(message, code, param, type) of a vendor error body."""
        try:
            err = orjson.loads(body).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            return body[:500].decode("utf-8", "replace"), None, None, None
        if isinstance(err, dict):
            return str(err.get("message") or ""), err.get("code"), err.get("param"), err.get("type")
        return (err if isinstance(err, str) else ""), None, None, None

    def kind_for(self, status: int, headers: Any) -> ErrorKind:
        return kind_for_status(status)

    def error_for(
        self, status: int, body: bytes, headers: Any, deployment: DeploymentInfo
    ) -> tuple[GatewayError, ErrorKind]:
        """The client-facing error for a failed upstream answer, scrubbed of anything internal."""
        kind = self.kind_for(status, headers)
        message, code, param, etype = self.parse_error(body)
        message = self.scrub(message or f"The provider answered {status}.", deployment)
        code = self.scrub(str(code), deployment) if code is not None else None
        if kind is ErrorKind.AUTH:
            return GatewayError(502, "The provider refused the gateway's credential; an administrator must fix it.",
                                code="upstream_auth_error", type="upstream_error"), kind  # fmt: skip
        if kind in (ErrorKind.SERVER, ErrorKind.TIMEOUT):
            return GatewayError(502 if kind is ErrorKind.SERVER else 504, f"The provider failed: {message}",
                                code="upstream_error", type="upstream_error"), kind  # fmt: skip
        extra = {}
        retry_after = headers.get("retry-after") if headers is not None else None
        if kind is ErrorKind.RATE_LIMITED:
            extra["retry-after"] = retry_after or "1"
            return GatewayError(429, message, code=code or "rate_limit_exceeded", param=param,
                                type=etype or "requests", headers=extra), kind  # fmt: skip
        return GatewayError(
            status if 400 <= status < 500 else 400, message, code=code, param=param, type=etype
        ), kind

    def scrub(self, text: str, deployment: DeploymentInfo) -> str:
        """Remove what must never reach a client: credentials, URLs and the provider's host."""
        provider = deployment.provider
        if provider.credential:
            text = text.replace(provider.credential, "[redacted]")
        text = _URL.sub("[redacted-url]", text)
        host = provider.base_url.split("://", 1)[-1].split("/", 1)[0]
        if host:
            text = text.replace(host, "[redacted-host]")
        return _SECRETISH.sub("[redacted]", text)
