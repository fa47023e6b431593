"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the right status."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

# The `type` OpenAI uses for each status (see the API reference's error codes page).
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout",
}


@dataclass
class GatewayError(Exception):
    """An error the client sees. Raise it anywhere on the proxy path; the handler renders it."""

    status: int
    message: str
    code: str | None = None
    param: str | None = None
    type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body_override: bytes | None = None  # a route that answers in another API's error format

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def body(self) -> bytes:
        """The JSON body, in OpenAI's format."""
        if self.body_override is not None:
            return self.body_override
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.type or _TYPE_BY_STATUS.get(self.status, "invalid_request_error"),
                    "param": self.param,
                    "code": self.code,
                }
            }
        )
