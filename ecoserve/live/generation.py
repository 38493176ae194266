"""One request's life between its admission and its last chunk.

A ``Generation`` waits to be placed, opens the stream to its engine, relays
the engine's chunks to the client (JSON payloads, without the SSE framing) and
counts their tokens. It reports back through a ``GenerationHost`` (the
coordinator) and never touches the host's state; the host changes its course
only through its four methods:

- ``place(instance_id)``: the router chose an engine;
- ``fail(error)``: it can never be placed (rejected, shutting down, no engine);
- ``requeue()``: its engine failed before the first token: back to waiting;
- ``break_stream(why)``: its engine failed under a started stream.

Tokens are never counted twice: a stream re-opened on another engine (its
first engine died before the first token) counts on from what was seen.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol

import msgspec

from ecoserve.engine.handle import EngineHandle, EngineUnreachable, UpstreamHTTPError, UpstreamStream
from ecoserve.openai.aggregate import ResponseBuilder
from ecoserve.openai.chunks import ModelRename, StreamTally
from ecoserve.openai.errors import RequestError
from ecoserve.openai.sse import SSESplitter
from ecoserve.openai.validation import CHAT, COMPLETIONS

PATHS = {COMPLETIONS: "/v1/completions", CHAT: "/v1/chat/completions"}
OPEN_TRIES = 3  # an engine that refuses connections this often is reported, not retried
_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


class GenerationHost(Protocol):
    def handle_of(self, instance_id: str) -> EngineHandle:
        """The handle of the engine a generation was placed on."""

    def on_tokens(self, gen: Generation, count: int) -> None:
        """``count`` more output tokens arrived (the first call: the first token)."""

    def on_finish(self, gen: Generation, outcome: str) -> None:
        """The generation ended (once)."""

    async def engine_broke(self, instance_id: str, why: str) -> None:
        """A stream to this engine broke: the host fails the engine if it is really gone
        (and then requeues or breaks the generations on it)."""


def from_upstream(e: UpstreamHTTPError) -> RequestError:
    """An engine's refusal, passed on to the client; its own 5xx are the engine's errors."""
    return RequestError(e.status, e.message(), "EngineError" if e.status >= 500 else None)


def outcome_of(e: BaseException) -> str:
    return e.outcome if isinstance(e, RequestError) else "engine_error"


class Generation:
    """Get one from ``Coordinator.open`` (which returns once an engine accepted
    it), then iterate ``payloads()`` or await ``result()``; always ``aclose()``
    (idempotent)."""

    def __init__(self, host: GenerationHost, rid: str, kind: str, upstream_body: bytes, *, keep_usage: bool,
                 keep_continuous: bool, arrival: float, rename: ModelRename | None = None) -> None:  # fmt: skip
        self._host = host
        self._rename = rename  # the served model name in place of the engine's
        self.id = rid
        self.kind = kind
        self._body = upstream_body
        self._keep = (keep_usage, keep_continuous)
        self.arrival = arrival
        self.instance_id: str | None = None
        self.placed = asyncio.Event()
        self.error: RequestError | None = None
        self.broken: str | None = None  # the engine died under a started stream
        self.upstream: UpstreamStream | None = None
        self.first_token_at: float | None = None
        self.tokens = 0
        self.outcome: str | None = None
        self._finished = False
        self._attempts = 0

    # ---- what the host may do to it --------------------------------------------------
    def place(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self.placed.set()

    def fail(self, error: RequestError) -> None:
        """It will never be placed (no-op once it was)."""
        if self.error is None and not self.placed.is_set():
            self.error = error
            self.placed.set()

    def requeue(self) -> None:
        """Its engine failed before the first token: wait for a new placement."""
        self.instance_id = None
        self.placed.clear()
        if self.upstream is not None:
            self.upstream.abort()

    def break_stream(self, why: str) -> None:
        """Its engine failed under a started stream: the stream ends with an error."""
        self.broken = why
        if self.upstream is not None:
            self.upstream.abort()

    def interrupt(self) -> None:
        """Shutting down: drop the upstream stream (the engine aborts the request)."""
        if self.upstream is not None:
            self.upstream.abort()

    @property
    def started(self) -> bool:
        return self.first_token_at is not None

    def count_tokens(self, count: int, now: float) -> bool:
        """Add ``count`` output tokens; True when they include the first."""
        first = self.first_token_at is None
        if first:
            self.first_token_at = now
        self.tokens += count
        return first

    # ---- placement and upstream ----------------------------------------------------
    async def wait_and_open(self) -> None:
        """Wait to be placed, then open the stream (re-placed if the engine broke)."""
        while True:
            await self.placed.wait()
            if self.error is not None:
                raise self.error
            iid = self.instance_id
            assert iid is not None
            self._attempts += 1
            try:
                self.upstream = await self._host.handle_of(iid).open_stream(PATHS[self.kind], self._body)
                return
            except UpstreamHTTPError as e:
                raise from_upstream(e) from None
            except EngineUnreachable as e:
                if self._attempts >= OPEN_TRIES:
                    raise RequestError(502, f"engine {iid} unreachable: {e}", "EngineError") from None
                await self._host.engine_broke(iid, str(e))
                if self.instance_id == iid:  # still ours: it is alive, try again
                    continue

    async def payloads(self) -> AsyncIterator[list[bytes]]:
        """The chunks for the client, a list per upstream read. Errors after the
        stream started come as an error chunk, as vLLM sends them."""
        while True:
            upstream = self.upstream
            iid = self.instance_id
            assert upstream is not None and iid is not None
            splitter = SSESplitter()
            tally = StreamTally(keep_usage=self._keep[0], keep_continuous=self._keep[1])
            base = self.tokens  # tokens already counted (never re-counted on a retry)
            try:
                async for data in upstream.reads():
                    payloads = splitter.feed(data)
                    if not payloads:
                        continue
                    out = tally.process(payloads)
                    if tally.tokens + base > self.tokens:
                        self._host.on_tokens(self, tally.tokens + base - self.tokens)
                    if out:
                        yield [self._rename(p) for p in out] if self._rename is not None else out
                    if tally.done:
                        break
                if tally.error is not None:
                    self.outcome = "engine_error"
                elif tally.done:
                    self.outcome = "success"
                    upstream.release()
                    self.upstream = None
                else:
                    raise EngineUnreachable("the engine closed the stream before [DONE]")
                return
            except EngineUnreachable as e:
                if self.broken is None and not self.started:
                    await self._host.engine_broke(iid, str(e))
                    if self.instance_id != iid and self.error is None:  # re-routed: start over there
                        self.upstream = None
                        try:
                            await self.wait_and_open()
                        except RequestError as err:
                            self.outcome = "engine_error"
                            yield [_enc.encode(err.body())]
                            return
                        continue
                self.outcome = "engine_error"
                why = self.broken or str(e)
                yield [_enc.encode(RequestError(502, f"engine {iid} failed mid-stream: {why}", "EngineError").body())]
                return

    async def result(self) -> dict[str, Any]:
        """The whole reply, as a non-streaming request gets it."""
        builder = ResponseBuilder(self.kind)
        async for batch in self.payloads():
            for p in batch:
                chunk = _dec.decode(p)
                if isinstance(chunk, dict) and "error" in chunk:
                    err = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
                    raise RequestError(
                        int(err.get("code") or 500) if str(err.get("code", "")).isdigit() else 500,
                        str(err.get("message")), str(err.get("type") or "EngineError"),
                    )  # fmt: skip
                builder.add(chunk)
        return builder.result()

    async def aclose(self, outcome: str | None = None) -> None:
        """End it: drop the upstream if still open (the engine aborts the
        request), tell the host, record the outcome. Idempotent."""
        if self._finished:
            return
        self._finished = True
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None
            if self.outcome is None:
                self.outcome = "aborted"
        self._host.on_finish(self, outcome or self.outcome or "aborted")
