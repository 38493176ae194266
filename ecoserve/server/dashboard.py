"""The dashboard: a web page of every engine's timeline, and the data it draws.

    GET /ecoserve/dashboard              the page (no data in it; open, like /docs)
    GET /ecoserve/timeline               the timeline document (JSON); ``after=SEQ``
                                         for what was recorded since, ``since=T``
                                         (wall-clock seconds) to start at T
    GET /ecoserve/timeline/stream        the same as server-sent events: a delta
                                         every PUSH_S seconds, each one a document,
                                         for STREAM_S seconds (then reconnect)

The data routes sit behind the API key like every other ``/ecoserve`` route;
the page asks for the key, keeps it in the tab's session storage and sends it
as a header (an ``EventSource`` cannot, so the page reads the stream with
``fetch``). A page that is open costs one status read a second and one delta
encode per push; nothing is computed for a page that is not. Streams end as
the server stops (``app.state.stopping``), not during a drain: an operator
watches the drain.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from ecoserve.live.timeline import LiveTimeline
from ecoserve.timeline.document import encode
from ecoserve.timeline.html import page

PUSH_S = 0.5
STREAM_S = 30.0  # a stream ends after this; the page reconnects with its cursor (a stuck client holds nothing long)
LATEST_T = 1e11  # seconds since 1970 (year 5138): a later `since` is a typo, not a time


def dashboard_router(timeline: LiveTimeline, auth: Callable[..., Awaitable[None]]) -> APIRouter:
    router = APIRouter(prefix="/ecoserve", tags=["dashboard"])
    html = page(None, live=True)
    guarded = [Depends(auth)]

    @router.get("/dashboard", response_class=HTMLResponse)
    async def dashboard() -> HTMLResponse:
        """The live dashboard page; it asks for the API key when the server has one."""
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})

    @router.get("/timeline", dependencies=guarded)
    async def timeline_doc(after: int = Query(0, ge=0),
                           since: float | None = Query(None, ge=0, le=LATEST_T)) -> Response:  # fmt: skip
        """The timeline document (``ecoserve/timeline/document.py``), everything
        kept (about the last 15 minutes), or what came after ``after``."""
        return Response(encode(timeline.document(after=after, since=since)), media_type="application/json")

    @router.get("/timeline/stream", dependencies=guarded)
    async def timeline_stream(request: Request, after: int = Query(0, ge=0)) -> StreamingResponse:
        """Server-sent events: ``data: <document>`` with what is new, every half
        second, for at most 30 s (reconnect with ``after`` = the last ``seq``)."""
        state = request.app.state

        async def events() -> AsyncIterator[bytes]:
            cursor, ends = after, time.monotonic() + STREAM_S
            while not getattr(state, "stopping", False) and time.monotonic() < ends:
                doc = timeline.document(after=cursor)
                cursor = doc.seq
                yield b"data: " + encode(doc) + b"\n\n"
                await asyncio.sleep(PUSH_S)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip

    return router
