"""The provider interface and the error kinds every adapter maps its vendor's failures to."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from gateway.catalog import DeploymentInfo


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
    """Builds upstream requests for one provider kind. Pass-through adapters need nothing else."""

    # Endpoints (our path after /v1/) the provider serves.
    endpoints: frozenset[str] = frozenset()

    def build(self, endpoint: str, deployment: DeploymentInfo, body: bytes) -> UpstreamRequest:
        """The upstream request for ``endpoint`` with the (already re-serialised) JSON ``body``."""
        raise NotImplementedError

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
