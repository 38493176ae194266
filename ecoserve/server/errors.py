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

from ecoserve.live.coordinator import RequestError

log = logging.getLogger("ecoserve.server")

_TYPES = {
    400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError", 404: "NotFoundError",
    405: "MethodNotAllowedError", 413: "BadRequestError", 415: "BadRequestError", 422: "BadRequestError",
    429: "RateLimitError",
    500: "InternalServerError", 502: "EngineError", 503: "ServiceUnavailableError",
}  # fmt: skip


def error_response(status: int, message: str, type: str | None = None, param: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type or _TYPES.get(status, "Error"), "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


def _describe(errors: list[dict]) -> tuple[str, str | None]:
    """One readable message naming every offending field (at most 5), and the first as ``param``."""
    parts: list[str] = []
    param = None
    seen: dict[str, None] = {}
    unions: dict[str, tuple[list[str], str, int]] = {}
    for e in errors:
        kind, loc = e.get("type", ""), [x for x in e.get("loc", ()) if x != "body"]
        if kind == "json_invalid":  # loc is ("body", position)
            pos = loc[0] if loc else "?"
            why = (e.get("ctx") or {}).get("error", "JSON decode error")
            return f"The request body is not valid JSON: {why} (at character {pos}).", None
        if not loc:  # the body as a whole
            if kind == "missing":
                return "The request body is missing; expected a JSON object.", None
            return f"The request body must be a JSON object: {e.get('msg')}.", None
        # Union members add their type to the location (prompt.list[int].0): one line per field.
        cut = next((i for i, x in enumerate(loc) if not isinstance(x, int) and _is_tag(x)), len(loc))
        where = ".".join(str(x) for x in loc[:cut])
        param = param or str(loc[0])
        if cut < len(loc):
            rest = ".".join(str(x) for x in [*loc[:cut], *loc[cut + 1 :]])
            detail = (
                f"{rest}: {e.get('msg')}"
                if len(loc) > cut + 1
                else f"{e.get('msg')} (got {_json_type(e.get('input'))})"
            )
            if where not in unions:
                unions[where] = ([], detail, len(loc))
                parts.append(where)
            options, _, depth = unions[where]
            options.append(str(loc[cut]).replace("constrained-int", "int"))
            if len(loc) > depth:  # the member that got furthest says best what is wrong
                unions[where] = (options, detail, len(loc))
        elif where not in seen:
            seen[where] = None
            parts.append(f"{where}: {e.get('msg')}")
    lines = []
    for part in parts[:5]:
        if part in unions:
            options, detail, _ = unions[part]
            lines.append(f"{part}: expected {' or '.join(dict.fromkeys(options))}; {detail}")
        else:
            lines.append(part)
    parts = lines
    return "; ".join(parts) or "invalid request", param


_TYPE_TAGS = {"str", "int", "float", "bool", "none", "dict", "list"}


def _is_tag(x: object) -> bool:
    """A pydantic union-member tag in an error location (``str``, ``list[int]``, ``StreamOptions``)."""
    s = str(x)
    return s in _TYPE_TAGS or "[" in s or s[:1].isupper()


def _json_type(v: object) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "an array",
             dict: "an object", type(None): "null"}  # fmt: skip
    return names.get(type(v), type(v).__name__)


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
        message, param = _describe(list(exc.errors()))
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
