"""Cross-origin (CORS) access to the front door, with vLLM's settings
(``--allowed-origins``, ``--allowed-methods``, ``--allowed-headers``,
``--allow-credentials``).

Off by default, as in vLLM 0.32 (``allowed_origins`` defaults to ``[]``;
older vLLM allowed ``["*"]``): with ``*``, any web page a user opens could
call a server on their machine or network and read the replies, and the
front door also carries the admin routes (add or drain engines). Without
CORS a page can still send the simple requests a browser sends unasked, but
not read their replies; ``--api-key`` refuses them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starlette.middleware.cors import CORSMiddleware


@dataclass(frozen=True)
class CorsSettings:
    """Starlette's ``CORSMiddleware`` settings; vLLM's defaults but the origins."""

    allow_origins: Sequence[str] = ()
    allow_methods: Sequence[str] = ("*",)
    allow_headers: Sequence[str] = ("*",)
    allow_credentials: bool = False


def add_cors(app: Any, cors: CorsSettings | None) -> None:
    """Add the middleware (outermost: refusals carry the CORS headers too, so a
    browser shows the error, not a CORS failure). No origins: nothing added."""
    if cors is None or not cors.allow_origins:
        return
    app.add_middleware(CORSMiddleware, allow_origins=list(cors.allow_origins), allow_methods=list(cors.allow_methods),
                       allow_headers=list(cors.allow_headers), allow_credentials=cors.allow_credentials)  # fmt: skip
