"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Every failure the front door reports goes through here, so clients (the
``openai`` package included) parse them the same way whatever went wrong:
validation (400), authentication (401), unknown model or route (404), wrong
method (405), a body over the size limit (413), a body that is not JSON (415),
overload (429 with ``Retry-After``, 503), engine trouble (502). An unexpected bug is
a 500 in the same shape, with the details in our log rather than the reply.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ecoserve.openai.errors import RequestError, error_body
from ecoserve.openai.validation import describe

log = logging.getLogger("ecoserve.server")


def error_response(status: int, message: str, type: str | None = None, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, type, param), status_code=status)


def install(app: FastAPI, count: Callable[[str], None] = lambda outcome: None,
            retry_after: Callable[[], int] | None = None) -> None:  # fmt: skip
    """``count(outcome)`` is called for requests refused here, before the
    coordinator sees them (it counts the others itself). ``retry_after()``:
    the seconds a 429 tells the client to wait (``Retry-After``)."""

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        if exc.status == 401:
            count("unauthorized")
        resp = error_response(exc.status, exc.message, exc.type, exc.param)
        if exc.status == 429 and retry_after is not None:
            resp.headers["Retry-After"] = str(retry_after())
        return resp

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI says 422; OpenAI (and vLLM) say 400 for a malformed request.
        count("client_error")
        message, param = describe(list(exc.errors()))
        return error_response(400, message, "BadRequestError", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = str(exc.detail)
        if detail == "There was an error parsing the body":  # FastAPI's words for e.g. a RecursionError
            detail = "The request body is not valid JSON (not UTF-8, or nested too deeply)."
        resp = error_response(exc.status_code, detail)
        for k, v in (exc.headers or {}).items():
            resp.headers[k] = v
        return resp

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); see the server log")
