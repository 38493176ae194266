"""Shared fixtures. Engine tests need a model; it is generated once per session
(tiny, deterministic) into pytest's cache so reruns skip the work."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to the tiny random-weight Llama model (seed 0), generated once."""
    from ecoserve.models import make_model

    return Path(make_model(tmp_path_factory.mktemp("models") / "tiny", size="tiny", seed=0))
