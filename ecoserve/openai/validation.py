"""Validating an OpenAI request body: the one check, for the front door and
the Python API alike.

``validate(kind, body)`` runs the request schemas (``schemas.py``) and then
``check_values`` over every field, passed-through ones included, and returns
the body as the engine will get it. The front door lets FastAPI run the same
schemas (so they are in its OpenAPI document) and words their errors with the
same ``describe``; both refuse with ``RequestError`` (400).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import ValidationError

from ecoserve.openai.errors import RequestError
from ecoserve.openai.schemas import ChatCompletionRequest, CompletionRequest

COMPLETIONS, CHAT = "completions", "chat"
SCHEMAS = {COMPLETIONS: CompletionRequest, CHAT: ChatCompletionRequest}
MAX_DEPTH = 64  # nesting of JSON arrays/objects in a request (response_format schemas nest a little)
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what the engine (msgspec, C, torch) can carry


def validate(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """The validated body (fields the client set, defaults left out), or RequestError(400)."""
    if kind not in SCHEMAS:
        raise ValueError(f"kind must be {COMPLETIONS!r} or {CHAT!r}")
    if not isinstance(body, dict):
        raise RequestError(400, "The request body must be a JSON object.")
    try:
        req = SCHEMAS[kind].model_validate(body)
    except ValidationError as e:
        message, param = describe(list(e.errors()))
        raise RequestError(400, message, param=param) from None
    out = req.model_dump(exclude_unset=True)
    check_values(out)
    return out


def check_values(body: dict[str, Any]) -> None:
    """Refuse (400) what JSON allows but neither JSON nor the engine can carry,
    anywhere in the body (passed-through fields included): NaN or infinite
    numbers, integers beyond 64 bits, strings with lone surrogates (invalid
    UTF-8), nesting deeper than MAX_DEPTH. Iterative: no recursion limit to hit."""
    stack: list[tuple[Any, str, int]] = [(v, k, 1) for k, v in body.items()]
    while stack:
        value, where, depth = stack.pop()
        param = where.split(".", 1)[0].split("[", 1)[0]
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            if not _INT_MIN <= value <= _INT_MAX:
                raise RequestError(400, f"`{where}`: integer {_short(value)} is out of range (64 bits at most)",
                                   param=param)  # fmt: skip
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise RequestError(400, f"`{where}`: {value} is not a valid JSON number", param=param)
        elif isinstance(value, str):
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise RequestError(400, f"`{where}`: invalid unicode (lone surrogate at character {e.start})",
                                       param=param) from None  # fmt: skip
        elif isinstance(value, (list, dict)):
            if depth >= MAX_DEPTH:
                raise RequestError(400, f"`{where}`: nested too deeply (more than {MAX_DEPTH} levels)", param=param)
            items = enumerate(value) if isinstance(value, list) else value.items()
            for k, v in items:
                stack.append((v, f"{where}[{k}]" if isinstance(value, list) else f"{where}.{k}", depth + 1))


def _short(n: int) -> str:
    text = str(n) if n.bit_length() < 200 else f"of {len(str(abs(n)))} digits"
    return text


def describe(errors: list[dict]) -> tuple[str, str | None]:
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
