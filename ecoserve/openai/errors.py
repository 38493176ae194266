"""OpenAI's error shape, ``{"error": {"message", "type", "param", "code"}}``,
and the one map from an HTTP status to its error type.

Whoever refuses a request (the front door, the coordinator, an engine's reply
passed on) raises ``RequestError``; the server renders it, the Python API
raises it to the caller.
"""

from __future__ import annotations

from typing import Any

ERROR_TYPES = {
    400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError", 404: "NotFoundError",
    405: "MethodNotAllowedError", 409: "ConflictError", 413: "BadRequestError", 415: "BadRequestError",
    422: "BadRequestError", 429: "RateLimitError",
    500: "InternalServerError", 502: "EngineError", 503: "ServiceUnavailableError",
}  # fmt: skip


def error_type(status: int) -> str:
    """OpenAI's type for a status; other 5xx are the engine's, other 4xx the client's."""
    return ERROR_TYPES.get(status) or ("EngineError" if status >= 500 else "BadRequestError")


def error_body(status: int, message: str, type: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type or error_type(status), "param": param, "code": status}}


class RequestError(Exception):
    """A request that cannot be served, as an HTTP status and an OpenAI error
    (``type`` defaults to the status's)."""

    def __init__(self, status: int, message: str, type: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or error_type(status)
        self.param = param

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.type, self.param)

    @property
    def outcome(self) -> str:
        """How the request ends, for metrics: overloaded, client_error or engine_error."""
        if self.status in (429, 503):
            return "overloaded"
        return "client_error" if self.status < 500 else "engine_error"
