"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Every failure the front door reports goes through here, so clients (the
``openai`` package included) parse them the same way whatever went wrong:
validation (400), authentication (401), unknown model or route (404), wrong
method (405), overload (429/503), engine trouble (502). An unexpected bug is
a 500 in the same shape, with the details in our log rather than the reply.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ecoserve.coordinator import RequestError

log = logging.getLogger("ecoserve.server")

_TYPES = {
    400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError", 404: "NotFoundError",
    405: "MethodNotAllowedError", 413: "BadRequestError", 422: "BadRequestError", 429: "RateLimitError",
    500: "InternalServerError", 502: "EngineError", 503: "ServiceUnavailableError",
}  # fmt: skip


def error_response(status: int, message: str, type: str | None = None, param: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type or _TYPES.get(status, "Error"), "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


def _describe(errors: list[dict]) -> tuple[str, str | None]:
    parts, param = [], None
    for e in errors[:5]:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        where = ".".join(loc)
        param = param or (loc[0] if loc else None)
        parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    return "; ".join(parts) or "invalid request", param


def install(app: FastAPI, count: Callable[[str], None] = lambda outcome: None) -> None:
    """``count(outcome)`` is called for requests refused here, before the
    coordinator sees them (it counts the others itself)."""

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        if exc.status == 401:
            count("unauthorized")
        return error_response(exc.status, exc.message, exc.type, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI says 422; OpenAI (and vLLM) say 400 for a malformed request.
        count("client_error")
        message, param = _describe(list(exc.errors()))
        return error_response(400, message, "BadRequestError", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        resp = error_response(exc.status_code, str(exc.detail))
        for k, v in (exc.headers or {}).items():
            resp.headers[k] = v
        return resp

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); see the server log")
