"""Shared fixtures.

- ``tiny_model``: engine tests need a model; it is generated once per session
  (tiny, deterministic) into pytest's cache so reruns skip the work.
- ``start_engine``: a real vLLM API server with the EcoServe plugin, for the
  tests that prove things on vLLM itself (tests/plugin, tests/bench).

Fixtures only the live tests use (``ecoserve serve`` subprocesses, stand-in
engine processes) are in tests/live/conftest.py. Free ports come from
``ecoserve.testing.ports.free_port``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ecoserve.testing.ports import free_port

VLLM_API_SERVER = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
RUNNING: list[VllmEngine] = []  # started and not yet stopped: their logs go with a failed test's report


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that fails while engines run carries each engine's log tail, so an
    engine-side crash (a 500 "EngineCore encountered an issue") shows its root
    cause in CI's output, not only in a temporary directory that is gone."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        report.sections.append(("host at the failure", _host_facts()))
        for engine in RUNNING:
            report.sections.append((f"log of {engine.name} ({engine.log_path})", engine.log_tail(80)))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to the tiny random-weight Llama model (seed 0), generated once."""
    from ecoserve.models import make_model

    return Path(make_model(tmp_path_factory.mktemp("models") / "tiny", size="tiny", seed=0))


def _host_facts() -> str:
    """What can starve or kill an engine: load, free memory, shared memory and
    disk (vLLM's engines talk through /dev/shm rings)."""
    import shutil

    lines = [f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}"]
    with open("/proc/meminfo") as f:
        lines += [line.strip() for line in f if line.split(":")[0] in ("MemTotal", "MemAvailable", "Shmem")]
    for path in ("/dev/shm", "/tmp"):
        if os.path.isdir(path):
            du = shutil.disk_usage(path)
            lines.append(f"{path}: {du.free / 2**30:.1f} GiB free of {du.total / 2**30:.1f}")
    return "\n".join(lines)


class VllmEngine:
    """A vLLM API server (``python -m vllm.entrypoints.openai.api_server``) with
    the EcoServe plugins loaded (``VLLM_PLUGINS=ecoserve``) on a free port of
    127.0.0.1, its output in ``log_path``.

    It runs in its own process group, so its EngineCore child is stopped with
    it, but in this session (``process_group=0``, not ``start_new_session``): a
    new session is a new scheduler autogroup on Linux, and vLLM's spinning
    workers then starve other engines' start-up on a shared core (see
    ecoserve/engine/launcher.py). Use it as a context manager, or call
    ``stop()``; ``wait_ready()`` fails the test with the log's tail."""

    def __init__(self, model: str | Path, args: list[str], *, name: str, log_path: Path,
                 extra_env: dict[str, str], core: int | None) -> None:  # fmt: skip
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = dict(os.environ, VLLM_PLUGINS="ecoserve", VLLM_CPU_KVCACHE_SPACE="1")
        if core is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = str(core)
        env.update(extra_env)
        cmd = [*VLLM_API_SERVER, "--model", str(model), "--port", str(self.port), *args]
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, process_group=0)
        self._stopped = False
        RUNNING.append(self)

    def wait_ready(self, timeout: float) -> VllmEngine:
        """Until ``/health`` answers 200; fails the test if the server exits or is not ready in time."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} server exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        pytest.fail(f"{self.name} server not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to the process group, up to 20 s for it to exit, then SIGKILL to
        whatever is left in the group (EngineCore stragglers). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        RUNNING.remove(self)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:  # stragglers (EngineCore) share the group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._log.close()

    def __enter__(self) -> VllmEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture(scope="session")
def start_engine(tmp_path_factory: pytest.TempPathFactory):
    """Factory: ``start_engine(model, *args, name=, env=, core=, log_dir=)`` starts a
    :class:`VllmEngine` (not yet ready: call ``.wait_ready(timeout)``) with vLLM
    arguments ``args`` after ``--model`` and ``--port``; ``env`` is added to the
    plugin's environment and ``core`` pins its OpenMP threads. The caller stops it
    (``with`` or ``.stop()``) at the end of its own scope; any still running at the
    end of the session are stopped then."""
    started: list[VllmEngine] = []

    def start(model: str | Path, *args: str, name: str = "engine", env: dict[str, str] | None = None,
              core: int | None = None, log_dir: Path | None = None) -> VllmEngine:  # fmt: skip
        log_dir = log_dir or tmp_path_factory.mktemp(name)
        engine = VllmEngine(model, list(args), name=name, log_path=log_dir / f"{name}.log",
                            extra_env=env or {}, core=core)
        started.append(engine)
        return engine

    yield start
    for engine in started:
        engine.stop()


def kv_event_subscriber(endpoint: str):
    """A ZeroMQ SUB socket connected to an engine's KV-event publisher at
    ``endpoint`` (subscribed to everything, no linger): the caller closes it."""
    import zmq

    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(endpoint)
    return sub
