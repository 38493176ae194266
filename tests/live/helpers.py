"""Helpers for the live tests, in this process's event loop: stand-in engines
(``ecoserve.testing.fake_engine``) in process, the real front door on a free
port, and waiting on a condition. Import as ``tests.live.helpers``."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time

import uvicorn

from ecoserve.live.coordinator import Coordinator
from ecoserve.server.app import create_app
from ecoserve.testing.fake_engine import FakeEngine

# A stand-in engine process, as a launcher's ``base_cmd`` (the launcher fills in the fields).
FAKE_ENGINE_CMD = [sys.executable, "-m", "ecoserve.testing.fake_engine", "--host", "{host}", "--port", "{port}",
                   "--model", "{model}"]  # fmt: skip


@contextlib.asynccontextmanager
async def fakes(n: int = 2, **kw):
    """``n`` stand-in engines (``FakeEngine(**kw)``) serving in this event loop."""
    engines = [FakeEngine(**kw) for _ in range(n)]
    try:
        for e in engines:
            await e.start()
        yield engines
    finally:
        for e in engines:
            await e.stop()


@contextlib.asynccontextmanager
async def served(coord: Coordinator, api_key: str | None = None):
    """The real front door on a free port, in this event loop."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    server = uvicorn.Server(uvicorn.Config(create_app(coord, api_key=api_key), log_level="warning", lifespan="off"))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def wait_until(cond, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")
