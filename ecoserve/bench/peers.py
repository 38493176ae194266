"""The real tools a user would run instead of EcoServe, started for a
side-by-side benchmark: vllm-router (PyPI ``vllm-router``, a Rust load balancer
for vLLM) in front of stock engines.

``VllmRouter`` starts one with a routing policy (``round_robin``,
``cache_aware``, ``kv_aware``, ``power_of_two``, ...) over the given engine
URLs, as its own CLI does, in a process of its own group that dies with us
(``ecoserve.engine.process``). Benchmarks then point ``ecoserve bench`` (or
``vllm bench serve``) at ``url``.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from ecoserve.engine.process import EngineProcess, free_port

ROUTER_POLICIES = ("round_robin", "cache_aware", "kv_aware", "power_of_two", "random")


def router_command() -> list[str]:
    """``vllm-router`` as installed beside this Python (its console script)."""
    here = Path(sys.executable).with_name("vllm-router")
    found = str(here) if here.exists() else shutil.which("vllm-router")
    if found is None:
        raise FileNotFoundError("vllm-router is not installed: pip install vllm-router")
    return [found]


class VllmRouter:
    def __init__(self, worker_urls: Sequence[str], *, policy: str = "round_robin", port: int | None = None,
                 log_path: Path | None = None, extra_args: Sequence[str] = ()) -> None:  # fmt: skip
        if not worker_urls:
            raise ValueError("vllm-router needs at least one worker URL")
        if policy not in ROUTER_POLICIES:
            raise ValueError(f"unknown vllm-router policy {policy!r}; choose from {', '.join(ROUTER_POLICIES)}")
        self.policy = policy
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Its metrics listener defaults to port 29000: a second router on the host would die on it.
        metrics = [] if any(a.startswith("--prometheus-port") for a in extra_args) else [
            "--prometheus-port", str(free_port())]  # fmt: skip
        cmd = [*router_command(), "--host", "127.0.0.1", "--port", str(self.port), "--policy", policy,
               "--worker-urls", *worker_urls, *metrics, *extra_args]  # fmt: skip
        self.process = EngineProcess(cmd, dict(os.environ), log_path, header="vllm-router", fresh_log=True)

    def start(self, timeout: float = 60.0) -> VllmRouter:
        """Start it and wait until its ``/health`` answers (EngineStartError with its log otherwise)."""
        self.process.start()
        self.process.wait_healthy(self.url, timeout)
        return self

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> VllmRouter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
