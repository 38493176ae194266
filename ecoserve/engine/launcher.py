"""Local engines: N vLLM API servers with the EcoServe plugin, as child processes.

No orphans, ever:
- each engine runs in its own process group (in our session), so its
  EngineCore and workers are signalled together, and a Ctrl-C at the terminal
  (sent to the foreground group) reaches us only: we stop the engines in order;
- stopping sends SIGTERM to the whole group, waits, then SIGKILLs the group;
- every started engine is registered for an ``atexit`` sweep, and the kernel
  sends the API server SIGTERM if we die without running it
  (PR_SET_PDEATHSIG, Linux), which then stops its own children.
``ecoserve serve`` turns SIGTERM/SIGINT into an orderly shutdown on top of this.

Engines are started from the calling thread (PR_SET_PDEATHSIG fires when the
*thread* that forked them exits): call ``start`` on a long-lived thread.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ecoserve.engine.launcher_api import EngineLauncher, EngineStartError, LaunchedEngine, wait_healthy
from ecoserve.engine.resources import EngineSlot, PlacementError, plan_engines

__all__ = [
    "EngineStartError", "LocalEngine", "LocalLauncher", "build_engines", "free_port", "stop_engines", "wait_healthy",
]

SCHEDULER_CLS = "vllm_plugin.scheduler.EcoServeScheduler"
PLUGIN_NAME = "ecoserve"
STOP_GRACE_S = 15.0
# Flags ecoserve sets itself; passing them through would contradict it.
_OWNED_FLAGS = ("--host", "--port", "--scheduler-cls")

_PR_SET_PDEATHSIG = 1
try:
    _libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except OSError:  # pragma: no cover
    _libc = None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_engine_args(engine_args: Sequence[str]) -> None:
    for a in engine_args:
        for flag in _OWNED_FLAGS:
            if a == flag or a.startswith(flag + "="):
                raise ValueError(
                    f"engine argument {flag} is set by ecoserve itself (engines get free ports on "
                    f"127.0.0.1 and the EcoServe scheduler); remove it from the arguments after --"
                )


def _plugins_env(current: str | None) -> str:
    names = [n for n in (current or "").split(",") if n]
    return ",".join(names if PLUGIN_NAME in names else [*names, PLUGIN_NAME])


def _die_with_parent(parent: int) -> None:
    """preexec_fn: ask the kernel to SIGTERM this child when we die."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # we died before prctl took effect
        os._exit(1)


@dataclass(eq=False)  # identity: one record per process
class LocalEngine:
    id: str
    host: str
    port: int
    log_path: Path
    cmd: list[str]
    env: dict[str, str]
    slot: EngineSlot | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        parent = os.getpid()
        with open(self.log_path, "ab") as log:
            log.write(f"# ecoserve: {' '.join(self.cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                # Own process group (stopped as one), but the coordinator's
                # session: a new session is a new scheduler autogroup on Linux,
                # and an engine starting in its own autogroup on a core where
                # another engine's worker spins (vLLM's shm queue yields in a
                # loop for 1 s after each read) got no CPU at all for minutes.
                process_group=0,
                preexec_fn=lambda: _die_with_parent(parent),
            )
        _REGISTRY.add(self)

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as e:
            return f"(cannot read {self.log_path}: {e})"

    def signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)  # own group: group id == leader pid
        except (ProcessLookupError, PermissionError):
            pass

    def group_alive(self) -> bool:
        return self.proc is not None and group_alive(self.proc.pid)


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs. Zombies do not count: an
    orphaned child's zombie lingers until init reaps it, but it holds nothing."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True
    if not os.path.isdir("/proc"):  # pragma: no cover - not Linux
        return True
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":  # fields: state, ppid, pgrp, ...
            return True
    return False


def stop_engines(engines: Sequence[LocalEngine], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM every group at once, give them ``grace`` seconds together, then
    SIGKILL what is left and reap the leaders. Safe to call twice."""
    live = [e for e in engines if e.proc is not None]
    for e in live:
        e.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for e in live:
        assert e.proc is not None
        try:
            e.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    # The leader may exit before its children: wait for whole groups.
    while any(e.group_alive() for e in live) and time.monotonic() < deadline:
        time.sleep(0.1)
    for e in live:
        e.signal_group(signal.SIGKILL)
    deadline = time.monotonic() + 5.0  # SIGKILL is delivered asynchronously
    for e in live:
        assert e.proc is not None
        try:
            e.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:  # pragma: no cover - unkillable (D state)
            pass
        while e.group_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        _REGISTRY.discard(e)


class _Registry:
    """Every engine this process started and has not stopped (for atexit)."""

    def __init__(self) -> None:
        self._engines: set[LocalEngine] = set()
        self._lock = threading.Lock()
        atexit.register(self.stop_all)

    def add(self, e: LocalEngine) -> None:
        with self._lock:
            self._engines.add(e)

    def discard(self, e: LocalEngine) -> None:
        with self._lock:
            self._engines.discard(e)

    def stop_all(self) -> None:
        with self._lock:
            engines = list(self._engines)
        if engines:
            stop_engines(engines, grace=5.0)


_REGISTRY = _Registry()


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
) -> list[LocalEngine]:
    """One engine per slot, not started (ids default to ``engine-<slot>``).
    ``base_cmd`` replaces the vLLM command (tests use it to start stand-ins)."""
    check_engine_args(engine_args)
    engines = []
    ids = list(ids) if ids is not None else [f"engine-{s.index}" for s in slots]
    for slot, eid in zip(slots, ids, strict=True):
        port = free_port(host)
        env = dict(os.environ)
        env.update(extra_env or {})
        env.update(slot.env)
        env["VLLM_PLUGINS"] = _plugins_env(env.get("VLLM_PLUGINS"))
        env["ECOSERVE_ENGINE_ID"] = eid
        env["ECOSERVE_PHASE"] = initial_phase  # right from the first step, before any command
        if base_cmd is None:
            cmd = [
                sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                "--model", str(model), "--host", host, "--port", str(port),
                "--scheduler-cls", SCHEDULER_CLS, *engine_args,
            ]  # fmt: skip
        else:
            cmd = [a.format(port=port, host=host, model=model) for a in base_cmd]
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
