"""One engine process, started and stopped the same way everywhere.

Every vLLM server EcoServe starts (a ``LocalLauncher`` engine, a Ray actor's,
a benchmark's, and the benchmarks' other servers) is built and run here: its
command line (``vllm_command``), its environment (``engine_env``) and the
process itself (``EngineProcess``, stopped with ``stop_engines``).

No orphans, ever:
- each process runs in its own process group (in our session), so its
  EngineCore and workers are signalled together, and a Ctrl-C at the terminal
  (sent to the foreground group) reaches us only: we stop the engines in order;
- stopping sends SIGTERM to the whole group, waits, then SIGKILLs the group;
- every started process is registered for an ``atexit`` sweep, and the kernel
  sends it SIGTERM if we die without running it (PR_SET_PDEATHSIG, Linux),
  which then stops its own children.

PR_SET_PDEATHSIG fires when the *thread* that forked the process exits: start
it from a long-lived thread, or with ``start(keeper=True)`` (a thread of its
own that lives as long as the process).

Import-light (no vLLM, no Ray). The scheduler class name is the plugin's own
``vllm_plugin.SCHEDULER_CLS``, which imports nothing.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import IO

from ecoserve.engine.launcher_api import start_error
from ecoserve.engine.resources import default_cpu_kv_gib
from vllm_plugin import SCHEDULER_CLS

__all__ = [
    "PLUGIN_NAME", "SCHEDULER_CLS", "STOP_GRACE_S", "EngineProcess", "check_engine_args", "engine_env", "free_port",
    "group_alive", "plugins_env", "stop_engines", "vllm_command",
]  # fmt: skip

PLUGIN_NAME = "ecoserve"
STOP_GRACE_S = 15.0
KILL_WAIT_S = 5.0  # SIGKILL is delivered asynchronously
# Flags ecoserve sets itself; passing them through would contradict it.
OWNED_FLAGS = ("--host", "--port", "--scheduler-cls")

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # our servers are local
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
        for flag in OWNED_FLAGS:
            if a == flag or a.startswith(flag + "="):
                raise ValueError(
                    f"engine argument {flag} is set by ecoserve itself (engines get free ports on "
                    f"127.0.0.1 and the EcoServe scheduler); remove it from the arguments after --"
                )


def plugins_env(current: str | None) -> str:
    """VLLM_PLUGINS with ``ecoserve`` added to what is there."""
    names = [n for n in (current or "").split(",") if n]
    return ",".join(names if PLUGIN_NAME in names else [*names, PLUGIN_NAME])


def vllm_command(
    model: str | Path,
    port: int,
    engine_args: Sequence[str] = (),
    *,
    host: str | None = "127.0.0.1",
    plugin: bool = True,
    base_cmd: Sequence[str] | None = None,
) -> list[str]:
    """The vLLM API server's command line: with the EcoServe scheduler unless
    ``plugin`` is false (stock vLLM); ``host`` None: vLLM's default. A
    ``base_cmd`` replaces it (tests start stand-ins), with ``{port}``,
    ``{host}`` and ``{model}`` filled in."""
    if base_cmd is not None:
        return [a.format(port=port, host=host, model=model) for a in base_cmd]
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    cmd += ["--host", host] if host is not None else []
    cmd += ["--port", str(port)]
    cmd += ["--scheduler-cls", SCHEDULER_CLS] if plugin else []
    return [*cmd, *engine_args]


def engine_env(
    *overlays: Mapping[str, str],
    plugin: bool = True,
    engine_id: str | None = None,
    initial_phase: str | None = None,
    cpu_kv_share: int | None = None,
) -> dict[str, str]:
    """Our environment with ``overlays`` on top, in order (extra settings, then
    the engine's cores or GPUs), and the plugin's settings: VLLM_PLUGINS gains
    ``ecoserve`` (stock vLLM: is emptied), the engine's id, and its phase
    right from the first step, before any command. ``cpu_kv_share``: a CPU
    engine's KV cache, unless VLLM_CPU_KVCACHE_SPACE is set, is its share of
    memory among that many engines (vLLM's default takes 90% of it)."""
    env = dict(os.environ)
    for o in overlays:
        env.update(o)
    env["VLLM_PLUGINS"] = plugins_env(env.get("VLLM_PLUGINS")) if plugin else ""
    if engine_id is not None:
        env["ECOSERVE_ENGINE_ID"] = engine_id
    if initial_phase is not None:
        env["ECOSERVE_PHASE"] = initial_phase
    if cpu_kv_share is not None and "VLLM_CPU_KVCACHE_SPACE" not in env:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(default_cpu_kv_gib(cpu_kv_share))
    return env


def _child_setup(parent: int, cores: Collection[int] | None) -> None:
    """preexec_fn: pin to ``cores``; ask the kernel to SIGTERM this child when we die."""
    if cores is not None:
        os.sched_setaffinity(0, cores)
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # we died before prctl took effect
        os._exit(1)


class EngineProcess:
    """One server process in its own group, its output in ``log_path``
    (appended, or with ``fresh_log`` in an emptied file), after a
    ``# header: command`` line unless ``header`` is None. Without a log its
    output is dropped and its errors go to ours. ``cores``: the CPUs it may
    run on (as the current process's affinity)."""

    def __init__(
        self,
        cmd: Sequence[str],
        env: dict[str, str],
        log_path: Path | None,
        *,
        header: str | None = "ecoserve",
        fresh_log: bool = False,
        cwd: Path | None = None,
        cores: Collection[int] | None = None,
    ) -> None:
        self.cmd = list(cmd)
        self.env = env
        self.log_path = log_path
        self.header = header
        self.fresh_log = fresh_log
        self.cwd = cwd
        self.cores = cores
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, *, keeper: bool = False) -> None:
        """Start it, from this thread, or with ``keeper`` from a new thread
        that waits for it (see the module doc). Raises if it cannot start."""
        if not keeper:
            self._spawn()
            return
        failed: list[BaseException | None] = []
        ready = threading.Event()

        def keep() -> None:
            # Forks the server and lives as long as it: PR_SET_PDEATHSIG fires
            # when the forking *thread* ends, so it must be this one.
            try:
                self._spawn()
            except BaseException as e:
                failed.append(e)
                ready.set()
                return
            failed.append(None)
            ready.set()
            assert self.proc is not None
            self.proc.wait()

        threading.Thread(target=keep, name="ecoserve-engine-keeper", daemon=True).start()
        ready.wait()
        if failed[0] is not None:
            raise failed[0]

    def _spawn(self) -> None:
        if self.log_path is None:
            self.proc = self._popen(subprocess.DEVNULL, None)
        else:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "wb" if self.fresh_log else "ab") as log:
                if self.header is not None:
                    log.write(f"# {self.header}: {' '.join(self.cmd)}\n".encode())
                    log.flush()
                self.proc = self._popen(log, subprocess.STDOUT)
        _REGISTRY.add(self)

    def _popen(self, stdout: int | IO[bytes], stderr: int | None) -> subprocess.Popen[bytes]:
        parent, cores = os.getpid(), self.cores
        return subprocess.Popen(
            self.cmd,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=self.env,
            cwd=self.cwd,
            # Own process group (stopped as one), but the coordinator's
            # session: a new session is a new scheduler autogroup on Linux,
            # and an engine starting in its own autogroup on a core where
            # another engine's worker spins (vLLM's shm queue yields in a
            # loop for 1 s after each read) got no CPU at all for minutes.
            process_group=0,
            preexec_fn=lambda: _child_setup(parent, cores),
        )

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def wait_exit(self) -> int | None:
        """Blocks until it exits; its exit code (None if it never started)."""
        return None if self.proc is None else self.proc.wait()

    def wait_healthy(self, url: str, timeout: float) -> None:
        """Blocks until ``url``/health answers 200 (launchers use the async
        ``launcher_api.wait_healthy``). Raises EngineStartError, with the log's
        tail, if the process exits first or time runs out."""
        deadline = time.monotonic() + timeout
        while (code := self.exit_code()) is None:
            try:
                with _NO_PROXY.open(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:  # not listening yet, or an error status
                pass
            if time.monotonic() > deadline:
                raise start_error(url, f"was not healthy after {timeout:.0f} s", self)
            time.sleep(0.5)
        raise start_error(url, f"exited with code {code} while starting", self)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None:
            return "(no log kept)"
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

    def stop(self, grace: float = STOP_GRACE_S, sig: int = signal.SIGTERM) -> int | None:
        """``stop_engines`` for this one; its exit code (None: still not reaped)."""
        stop_engines([self], grace, sig)
        return self.exit_code()


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


def stop_engines(engines: Sequence[EngineProcess], grace: float = STOP_GRACE_S, sig: int = signal.SIGTERM) -> None:
    """``sig`` (SIGTERM) to every group at once, give them ``grace`` seconds
    together, then SIGKILL what is left and reap the leaders. Safe to call twice."""
    live = [e for e in engines if e.proc is not None]
    for e in live:
        e.signal_group(sig)
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
    deadline = time.monotonic() + KILL_WAIT_S
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
    """Every process started here and not stopped yet (for atexit)."""

    def __init__(self) -> None:
        self._procs: set[EngineProcess] = set()
        self._lock = threading.Lock()
        atexit.register(self.stop_all)

    def add(self, e: EngineProcess) -> None:
        with self._lock:
            self._procs.add(e)

    def discard(self, e: EngineProcess) -> None:
        with self._lock:
            self._procs.discard(e)

    def stop_all(self) -> None:
        with self._lock:
            procs = list(self._procs)
        if procs:
            stop_engines(procs, grace=5.0)


_REGISTRY = _Registry()
