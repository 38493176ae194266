"""The contract between the coordinator and whatever starts its engines.

The coordinator never cares where an engine runs: a launcher starts engines,
tells when they are healthy and stops them; the coordinator then reaches each
one over HTTP (and its status channel) by URL, exactly as it reaches an
attached engine. Two launchers implement it: ``LocalLauncher`` (child
processes on this machine, the default) and ``RayLauncher`` (Ray actors on a
cluster). Like vLLM's scheduler interface, the contract is an abstract class
so that implementations can be swapped.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import aiohttp


OnProgress = Callable[[int, "int | None", str], None]  # (done, total, detail); see ecoserve/cli/progress.py


class EngineStartError(RuntimeError):
    """An engine exited or stayed unhealthy while starting; the message holds its log tail."""


class Logged(Protocol):
    """Anything with a log (an engine, a process)."""

    @property
    def log_path(self) -> Path | None: ...  # where its log is, on the machine it runs on

    def log_tail(self, lines: int = 40) -> str: ...


def start_error(who: str, what: str, engine: Logged) -> EngineStartError:
    """``who what``, and the last lines of the engine's log."""
    return EngineStartError(f"{who} {what}. Last lines of {engine.log_path}:\n{engine.log_tail()}")


class LaunchedEngine(Logged, Protocol):
    """One started engine, as the coordinator sees it."""

    id: str  # unique over the coordinator's life: a replacement gets a new id

    @property
    def url(self) -> str: ...

    @property
    def pid(self) -> int | None: ...  # None where the process is not on this machine

    def exit_code(self) -> int | None:
        """None while it runs. Must not block (the coordinator calls it on its event loop)."""


class EngineLauncher(ABC):
    """Starts and stops engines for one coordinator."""

    name: str = "?"

    @abstractmethod
    def launch(self, count: int, *, initial_phase: str) -> list[LaunchedEngine]:
        """Start ``count`` more engines and return at once (not yet healthy).
        Called on the coordinator's event-loop thread. Raises if they cannot
        be placed (``PlacementError``) or started."""

    @abstractmethod
    async def stop(self, engines: Sequence[LaunchedEngine]) -> None:
        """Stop these engines: SIGTERM, a grace period, then kill. Idempotent."""

    def capacity(self) -> int | None:
        """How many more engines ``launch`` can place now; None when unknown
        (a cluster that may grow)."""
        return None

    async def wait_healthy(self, engines: Sequence[LaunchedEngine], timeout: float,
                           on_progress: OnProgress | None = None) -> None:  # fmt: skip
        """Until every engine is healthy (``wait_healthy``); ``on_progress(healthy, total, detail)`` as it goes."""
        await wait_healthy(engines, timeout, on_progress)

    async def close(self) -> None:
        """Stop every engine still running and release the launcher's resources."""


async def wait_healthy(engines: Sequence[LaunchedEngine], timeout: float,
                       on_progress: OnProgress | None = None) -> None:  # fmt: skip
    """Until every engine answers ``GET /health`` with 200. Raises
    EngineStartError (exit code and log tail) for the first that exits or is
    still not healthy at the deadline. Cancellable. ``on_progress(healthy,
    total, detail)`` hears before every round of checks (every 0.5 s) and at the end."""
    deadline = time.monotonic() + timeout
    pending = list(engines)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while pending:
            if on_progress is not None:
                ids = [e.id for e in pending]
                more = f" and {len(ids) - 3} more" if len(ids) > 3 else ""
                on_progress(len(engines) - len(pending), len(engines), f"waiting for {', '.join(ids[:3])}{more}")
            for e in list(pending):
                code = e.exit_code()
                if code is not None:
                    raise start_error(f"{e.id} ({e.url})", f"exited with code {code} while starting", e)
                try:
                    async with http.get(e.url + "/health") as r:
                        if r.status == 200:
                            pending.remove(e)
                except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
                    pass
            if not pending:
                break
            if time.monotonic() > deadline:
                e = pending[0]
                raise start_error(f"{e.id} ({e.url})", f"was not healthy after {timeout:.0f} s", e)
            await asyncio.sleep(0.5)
    if on_progress is not None:
        on_progress(len(engines), len(engines), "")
