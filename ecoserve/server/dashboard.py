"""The dashboard: a web page of every engine's timeline, and the data it draws.

    GET /ecoserve/dashboard              the page (no data in it; open, like /docs)
    GET /ecoserve/timeline               the timeline document (JSON); ``after=SEQ``
                                         for what was recorded since, ``since=T``
                                         (wall-clock seconds) to start at T
    GET /ecoserve/timeline/stream        the same as server-sent events: a delta
                                         every PUSH_S seconds, each one a document

The data routes sit behind the API key like every other ``/ecoserve`` route;
the page asks for the key, keeps it in the tab's session storage and sends it
as a header (an ``EventSource`` cannot, so the page reads the stream with
``fetch``). A page that is open costs one status read a second and one delta
encode per push; nothing is computed for a page that is not.
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


def dashboard_router(timeline: LiveTimeline, auth: Callable[..., Awaitable[None]]) -> APIRouter:
    router = APIRouter(prefix="/ecoserve", tags=["dashboard"])
    html = page(None, live=True)
    guarded = [Depends(auth)]

    @router.get("/dashboard", response_class=HTMLResponse)
    async def dashboard() -> HTMLResponse:
        """The live dashboard page; it asks for the API key when the server has one."""
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})

    def document(after: int, since: float | None) -> bytes:
        timeline.sample_if_stale()
        doc = timeline.recorder.document(time.time(), after=after, since=since, title=timeline.title())
        return encode(doc)

    @router.get("/timeline", dependencies=guarded)
    async def timeline_doc(after: int = Query(0, ge=0), since: float | None = Query(None, ge=0)) -> Response:
        """The timeline document (``ecoserve/timeline/document.py``), everything
        kept (about the last 15 minutes), or what came after ``after``."""
        return Response(document(after, since), media_type="application/json")

    @router.get("/timeline/stream", dependencies=guarded)
    async def timeline_stream(request: Request, after: int = Query(0, ge=0)) -> StreamingResponse:
        """Server-sent events: ``data: <document>`` with what is new, every half second."""

        async def events() -> AsyncIterator[bytes]:
            cursor = after
            while not request.app.state.draining:
                body = document(cursor, None)
                cursor = timeline.recorder.seq
                yield b"data: " + body + b"\n\n"
                await asyncio.sleep(PUSH_S)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip

    return router
