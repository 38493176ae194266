"""Fixtures for the live tests: processes started the way a user starts them.

- ``start_serve``: ``ecoserve serve`` (``python -m ecoserve.cli.serve``) as a subprocess;
- ``start_fake_engine``: a stand-in engine (``ecoserve.testing.fake_engine``) as a subprocess.

Each runs in its own process group (stopped as one), in this session
(``process_group=0``), like the engines the launcher starts (see tests/conftest.py).
In-process stand-in engines and the front door are in tests/live/helpers.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest

from ecoserve.testing.ports import free_port

_FAKE_ENGINE = """
import asyncio, json, sys
from ecoserve.testing.fake_engine import FakeEngine

async def main():
    fake = FakeEngine(**json.loads(sys.argv[2]))
    await fake.start(port=int(sys.argv[1]))
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def _wait_healthy(url: str, proc: subprocess.Popen, what: str, timeout: float, output) -> None:
    """Until ``url``/health answers 200; fails the test (with ``output()``) if ``proc`` exits or time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited ({proc.returncode}):\n{output()}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{what} not ready after {timeout}s:\n{output()}")


class ServeProcess:
    """`ecoserve serve --port PORT --log-dir LOG_DIR ARGS` in its own process group,
    its output in ``log_dir``/serve.out (engine logs beside it)."""

    def __init__(self, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.out_path = log_dir / "serve.out"
        self._out = open(self.out_path, "wb")
        cmd = [sys.executable, "-m", "ecoserve.cli.serve", "--port", str(self.port), "--log-dir", str(log_dir), *args]
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", **(env or {}))
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._out, stderr=subprocess.STDOUT, process_group=0)
        self.model = ""  # the served model's name, for tests that look it up

    def output(self) -> str:
        """serve's output, then the tail of each engine's log."""
        text = self.out_path.read_text(errors="replace")
        for log in sorted(self.log_dir.glob("engine-*.log")):
            text += f"\n----- {log.name} (tail) -----\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        return text

    def wait_ready(self, timeout: float) -> None:
        _wait_healthy(self.url, self.proc, "ecoserve serve", timeout, self.output)

    def status(self) -> dict:
        return httpx.get(self.url + "/ecoserve/status", timeout=10).json()

    def engine_pids(self) -> list[int]:
        return [i["pid"] for i in self.status()["instances"] if i["pid"]]

    @contextlib.contextmanager
    def serving(self, timeout: float):
        """Ready (``.model`` set to the served model's id) for the ``with`` block; then
        killed with every engine it started, even if a test failed."""
        pids: list[int] = []
        try:
            self.wait_ready(timeout)
            self.model = httpx.get(self.url + "/v1/models").json()["data"][0]["id"]
            yield self
        finally:
            if self.proc.poll() is None:
                with contextlib.suppress(Exception):
                    pids = self.engine_pids()
            self.kill(pids)

    def kill(self, engine_pids: Iterable[int] = ()) -> None:
        """SIGKILL to serve's process group, then to each of ``engine_pids``' groups:
        never leave an engine behind, even if a test failed. Idempotent."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._out.close()
        for pid in engine_pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


class FakeEngineProcess:
    """A stand-in engine, ``FakeEngine(**kw)``, serving on a free port of 127.0.0.1
    in a process of its own; its output in ``log_path``."""

    def __init__(self, log_path: Path, **kw) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-c", _FAKE_ENGINE, str(self.port), json.dumps(kw)],
                                     stdout=self._log, stderr=subprocess.STDOUT, process_group=0)  # fmt: skip

    def wait_ready(self, timeout: float = 60) -> FakeEngineProcess:
        _wait_healthy(self.url, self.proc, "the fake engine", timeout, self.output)
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGKILL to its process group. Idempotent."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log.close()

    def __enter__(self) -> FakeEngineProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture(scope="session")
def start_serve():
    """Factory: ``start_serve(args, log_dir[, env])`` starts a :class:`ServeProcess` (not yet
    ready: call ``.wait_ready(timeout)``). The caller kills it (``.kill(engine_pids)``)
    at the end of its own scope; any still running at the end of the session are killed then."""
    started: list[ServeProcess] = []

    def start(args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> ServeProcess:
        serve = ServeProcess(args, log_dir, env)
        started.append(serve)
        return serve

    yield start
    for serve in started:
        serve.kill()


@pytest.fixture(scope="session")
def start_fake_engine(tmp_path_factory: pytest.TempPathFactory):
    """Factory: ``start_fake_engine(log_dir=None, **kw)`` starts a
    :class:`FakeEngineProcess` running ``FakeEngine(**kw)`` and waits until it is
    healthy. The caller stops it (``with`` or ``.stop()``) at the end of its own
    scope; any still running at the end of the session are stopped then."""
    started: list[FakeEngineProcess] = []

    def start(log_dir: Path | None = None, **kw) -> FakeEngineProcess:
        log_dir = log_dir or tmp_path_factory.mktemp("fake-engine")
        fake = FakeEngineProcess(log_dir / "fake.out", **kw)
        started.append(fake)
        try:
            return fake.wait_ready()
        except BaseException:
            fake.stop()
            raise

    yield start
    for fake in started:
        fake.stop()
