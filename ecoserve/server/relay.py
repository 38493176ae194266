"""Relaying one generation to its HTTP client, and noticing when it leaves.

A client that disconnects must not leave its request running: while it waits
in the queue, while the engine prefills, or mid-stream. ``DisconnectWatcher``
listens on the ASGI ``receive`` channel (after the body, the only message
left is ``http.disconnect``) and cancels whatever is being awaited for the
client; the generation's ``aclose`` then drops the upstream connection (the
engine aborts the request) and tells the policy.

``SSEResponse`` writes each upstream read as one chunk of ``data:`` events:
as many tokens as the engine delivered, in one write, with no added delay.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from starlette.responses import Response

from ecoserve.live.generation import Generation

T = TypeVar("T")
Receive = Callable[[], Awaitable[dict[str, Any]]]
_DONE = b"data: [DONE]\n\n"


class ClientGone(Exception):
    """The client disconnected before the reply was complete."""


class DisconnectWatcher:
    def __init__(self, receive: Receive) -> None:
        self.gone = asyncio.Event()
        self._task = asyncio.create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        with contextlib.suppress(Exception):
            while True:
                message = await receive()
                if message.get("type") == "http.disconnect":
                    break
        self.gone.set()

    async def run(self, aw: Awaitable[T]) -> T:
        """Await ``aw``; cancel it and raise ClientGone if the client leaves first."""
        task = asyncio.ensure_future(aw)
        gone = asyncio.ensure_future(self.gone.wait())
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            gone.cancel()
            raise
        if task.done():
            gone.cancel()
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise ClientGone

    def stop(self) -> None:
        self._task.cancel()


ENGINE_HEADER = "x-ecoserve-engine"  # which engine served the request (its id in /ecoserve/status)


def engine_header(gen: Generation) -> list[tuple[bytes, bytes]]:
    return [(ENGINE_HEADER.encode(), gen.instance_id.encode())] if gen.instance_id else []


class SSEResponse(Response):
    """An ASGI response streaming a generation as server-sent events."""

    media_type = "text/event-stream"

    def __init__(self, gen: Generation, watcher: DisconnectWatcher) -> None:  # noqa: D107 (no body to render)
        self.status_code = 200
        self.background = None
        self.gen = gen
        self.watcher = watcher

    async def __call__(self, scope: Any, receive: Receive, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        async def pump() -> None:
            await send({
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                            (b"x-accel-buffering", b"no"), *engine_header(self.gen)],
            })  # fmt: skip
            async for batch in self.gen.payloads():
                if len(batch) == 1:
                    body = b"data: " + batch[0] + b"\n\n"
                else:
                    body = b"".join([b"data: " + p + b"\n\n" for p in batch])
                await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": _DONE, "more_body": False})

        try:
            await self.watcher.run(pump())
        except (ClientGone, OSError):
            pass  # nobody left to tell
        finally:
            self.watcher.stop()
            await self.gen.aclose()
