"""Fixtures for the benchmark harness tests."""

from __future__ import annotations

import os
import sys

import pytest

from ecoserve.engine.process import EngineProcess, free_port


@pytest.fixture
def engine(tmp_path):
    """A stand-in engine (ecoserve.testing.fake_engine, stock-vLLM behaviour) as a
    process of its own, like the engines benchmarks put peers in front of: its URL."""
    port = free_port()
    proc = EngineProcess([sys.executable, "-m", "ecoserve.testing.fake_engine", "--port", str(port), "--no-phases"],
                         dict(os.environ), tmp_path / "fake.log")  # fmt: skip
    proc.start()
    url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_healthy(url, 60)
        yield url
    finally:
        proc.stop()
