"""Local engines: N vLLM API servers with the EcoServe plugin, as child processes.

Each engine is an ``EngineProcess`` (see ``process``: its own process group
in our session, the parent-death signal, an ``atexit`` sweep; stopping is
SIGTERM to the whole group, a grace period, then SIGKILL), on the cores or
GPUs of one slot of the machine's plan (see ``resources``). A Ctrl-C at the
terminal reaches us only: we stop the engines in order. ``ecoserve serve``
turns SIGTERM/SIGINT into an orderly shutdown on top of this.

Engines are started from the calling thread (PR_SET_PDEATHSIG fires when the
*thread* that forked them exits): call ``start`` on a long-lived thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ecoserve.engine.kv_events import local_endpoint, publishing_args
from ecoserve.engine.launcher_api import EngineLauncher, EngineStartError, LaunchedEngine, wait_healthy
from ecoserve.engine.process import (
    PLUGIN_NAME, SCHEDULER_CLS, STOP_GRACE_S, EngineProcess, check_engine_args, engine_env, free_port, group_alive,
    stop_engines, vllm_command,
)  # fmt: skip
from ecoserve.engine.resources import EngineSlot, PlacementError, plan_engines

__all__ = [
    "PLUGIN_NAME", "SCHEDULER_CLS", "STOP_GRACE_S", "EngineStartError", "LocalEngine", "LocalLauncher", "build_engines",
    "check_engine_args", "free_port", "group_alive", "stop_engines", "wait_healthy",
]  # fmt: skip


@dataclass(eq=False)  # identity: one record per process
class LocalEngine(EngineProcess):
    """An ``EngineProcess`` serving at ``host:port`` on its ``slot``."""

    id: str
    host: str
    port: int
    log_path: Path
    cmd: list[str]
    env: dict[str, str]
    slot: EngineSlot | None = None

    def __post_init__(self) -> None:
        EngineProcess.__init__(self, self.cmd, self.env, self.log_path)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def build_engines(
    model: str,
    slots: Sequence[EngineSlot],
    engine_args: Sequence[str],
    log_dir: Path,
    *,
    host: str = "127.0.0.1",
    initial_phase: str = "decode",
    base_cmd: Sequence[str] | None = None,
    extra_env: dict[str, str] | None = None,
    ids: Sequence[str] | None = None,
    kv_events: bool = True,
) -> list[LocalEngine]:
    """One engine per slot, not started (ids default to ``engine-<slot>``).
    ``base_cmd`` replaces the vLLM command (tests use it to start stand-ins).
    ``kv_events``: each engine publishes its KV-cache events on a local
    ``ipc://`` endpoint, with block hashes the coordinator can compute
    (``ecoserve.engine.kv_events``), unless the arguments say otherwise."""
    check_engine_args(engine_args)
    engines = []
    ids = list(ids) if ids is not None else [f"engine-{s.index}" for s in slots]
    for slot, eid in zip(slots, ids, strict=True):
        port = free_port(host)
        env = engine_env(extra_env or {}, slot.env, engine_id=eid, initial_phase=initial_phase)
        args = [*publishing_args(engine_args, local_endpoint(eid, port)), *engine_args] if kv_events else engine_args
        cmd = vllm_command(model, port, args, host=host, base_cmd=base_cmd)
        engines.append(LocalEngine(eid, host, port, log_dir / f"{eid}.log", cmd, env, slot))
    return engines


class LocalLauncher(EngineLauncher):
    """Engines as child processes of this one, each on its own cores or GPUs.

    The machine is planned once for ``slots`` engines (the most that may run
    at once); a launched engine takes a free slot and gives it back when it
    stops, so scaling out and in, or replacing a dead engine, never makes two
    engines share cores that the plan gave to one.
    """

    name = "local"

    def __init__(
        self,
        model: str,
        engine_args: Sequence[str] = (),
        *,
        slots: int = 1,
        device: str = "auto",
        log_dir: Path,
        extra_env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        base_cmd: Sequence[str] | None = None,
        stop_grace: float = STOP_GRACE_S,
    ) -> None:
        check_engine_args(engine_args)
        self.model = model
        self.stop_grace = stop_grace
        self.engine_args = list(engine_args)
        self.plan = plan_engines(slots, engine_args, device)
        self.log_dir = log_dir
        self.extra_env = dict(extra_env or {})
        self.host = host
        self.base_cmd = base_cmd
        self._free = list(self.plan)
        self._running: dict[str, LocalEngine] = {}
        self._launched = 0

    @property
    def device(self) -> str:
        return self.plan[0].device

    def capacity(self) -> int:
        return len(self._free)

    def launch(self, count: int, *, initial_phase: str) -> list[LaunchedEngine]:
        if count > len(self._free):
            raise PlacementError(
                f"cannot start {count} more engine(s): {len(self._free)} of {len(self.plan)} slots are free "
                f"(raise --max-engines, or free devices)"
            )
        slots, self._free = self._free[:count], self._free[count:]
        ids = [f"engine-{self._launched + k}" for k in range(count)]
        self._launched += count
        engines = build_engines(
            self.model, slots, self.engine_args, self.log_dir, host=self.host, initial_phase=initial_phase,
            base_cmd=self.base_cmd, extra_env=self.extra_env, ids=ids,
        )  # fmt: skip
        started: list[LaunchedEngine] = []
        try:
            for e in engines:  # on this (the loop's) thread: see the module doc
                e.start()
                self._running[e.id] = e
                started.append(e)
        except BaseException:
            stop_engines([e for e in engines if e.proc is not None])
            self._release(engines)
            raise
        return started

    def _release(self, engines: Sequence[LocalEngine]) -> None:
        for e in engines:  # each was running, or never started
            self._running.pop(e.id, None)
            if e.slot is not None and e.slot not in self._free:
                self._free.append(e.slot)
        self._free.sort(key=lambda s: s.index)

    async def stop(self, engines: Sequence[LaunchedEngine]) -> None:
        mine = [self._running[e.id] for e in engines if e.id in self._running]
        if not mine:
            return
        # Shielded: a second Ctrl-C must not leave engines behind.
        await asyncio.shield(asyncio.to_thread(stop_engines, mine, self.stop_grace))
        self._release(mine)

    async def close(self) -> None:
        await self.stop(list(self._running.values()))
