"""Which cores or GPUs each local engine gets.

Engines on one machine must not fight over compute: on CPU each one (each of
its TP x PP ranks) is pinned to its own cores with VLLM_CPU_OMP_THREADS_BIND
(``|`` separates the ranks' core lists); on GPU each gets its own devices with
CUDA_VISIBLE_DEVICES. The machine's cores (those this process may run on)
are split evenly; when there are more ranks than cores, cores are shared
round-robin and the plan says so. Engines that other processes start on one
machine (Ray actors on a node) claim their cores with lock files instead
(``claim_cores``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

_CORE_LOCKS = Path(tempfile.gettempdir()) / f"ecoserve-cores-{os.getuid() if hasattr(os, 'getuid') else 0}"


class PlacementError(ValueError):
    """The engines asked for do not fit the machine."""


@dataclass(frozen=True)
class EngineSlot:
    index: int
    device: str  # "cpu" or "cuda"
    env: dict[str, str] = field(default_factory=dict)
    description: str = ""
    shared: bool = False  # shares cores with another engine


def _arg_value(args: Sequence[str], names: tuple[str, ...]) -> str | None:
    value = None
    for i, a in enumerate(args):
        for name in names:
            if a == name and i + 1 < len(args):
                value = args[i + 1]
            elif a.startswith(name + "="):
                value = a.split("=", 1)[1]
    return value


def ranks_per_engine(engine_args: Sequence[str]) -> int:
    """TP x PP of the engine arguments (the devices one engine occupies)."""
    sizes = []
    for names in (("--tensor-parallel-size", "-tp"), ("--pipeline-parallel-size", "-pp")):
        raw = _arg_value(engine_args, names)
        try:
            sizes.append(int(raw) if raw is not None else 1)
        except ValueError:
            raise PlacementError(f"{names[0]} must be an integer, got {raw!r}") from None
    if min(sizes) < 1:
        raise PlacementError("parallel sizes must be >= 1")
    return sizes[0] * sizes[1]


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES if set, else all
    that NVML counts (none when NVML or a driver is missing)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import pynvml  # nvidia-ml-py; only present on GPU installs

        pynvml.nvmlInit()
        try:
            return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no package, no driver, no GPU: a CPU machine
        return []


def available_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return list(range(os.cpu_count() or 1))


def core_list(cores: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (the format VLLM_CPU_OMP_THREADS_BIND reads)."""
    parts: list[str] = []
    run: list[int] = []
    for c in sorted(cores):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


def claim_cores(count: int) -> tuple[list[int], list[IO[str]], bool]:
    """Cores for one engine on this machine, held with a lock file each while
    the returned files stay open (they close when the process dies): engines
    started by separate processes get their own cores. When too few are free,
    shares (and says so)."""
    import fcntl

    cores = available_cores()
    _CORE_LOCKS.mkdir(parents=True, exist_ok=True)
    mine: list[int] = []
    held: list[IO[str]] = []
    for c in cores:
        if len(mine) == count:
            break
        f = open(_CORE_LOCKS / f"core-{c}.lock", "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        mine.append(c)
        held.append(f)
    shared = len(mine) < count
    k = 0
    while len(mine) < count:  # share what there is, least recently taken first
        mine.append(cores[k % len(cores)])
        k += 1
    return mine, held, shared


def plan_engines(
    n: int,
    engine_args: Sequence[str] = (),
    device: str = "auto",
    *,
    cores: Sequence[int] | None = None,
    gpus: Sequence[str] | None = None,
) -> list[EngineSlot]:
    if n < 1:
        raise PlacementError("need at least one engine")
    ranks = ranks_per_engine(engine_args)
    gpus = list(visible_gpus() if gpus is None else gpus)
    if device == "auto":
        device = "cuda" if gpus else "cpu"
    if device == "cuda":
        need = n * ranks
        if len(gpus) < need:
            raise PlacementError(
                f"{n} engine(s) x {ranks} GPU(s) each need {need} GPUs; {len(gpus)} visible "
                f"({', '.join(gpus) or 'none'})"
            )
        return [
            EngineSlot(
                i,
                "cuda",
                {"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * ranks : (i + 1) * ranks])},
                f"GPU {','.join(gpus[i * ranks : (i + 1) * ranks])}",
            )
            for i in range(n)
        ]
    if device != "cpu":
        raise PlacementError(f"device must be auto, cpu or cuda, got {device!r}")
    cores = list(available_cores() if cores is None else cores)
    total = n * ranks
    slots = []
    if len(cores) >= total:
        per = len(cores) // total
        groups = [cores[k * per : (k + 1) * per] for k in range(total)]
        shared = False
    else:  # more ranks than cores: share them, one core per rank
        groups = [[cores[k % len(cores)]] for k in range(total)]
        shared = True
    for i in range(n):
        mine = groups[i * ranks : (i + 1) * ranks]
        bind = "|".join(core_list(g) for g in mine)
        slots.append(
            EngineSlot(
                i, "cpu", {"VLLM_CPU_OMP_THREADS_BIND": bind}, f"cores {bind}" + (" (shared)" if shared else ""), shared
            )
        )
    return slots


def default_cpu_kv_gib(engines: int) -> int:
    """KV cache per CPU engine (VLLM_CPU_KVCACHE_SPACE) when none is given:
    a third of this machine's available memory shared out, 1 to 8 GiB. vLLM's
    own default reserves 90% per engine, so N engines could not all start."""
    try:
        with open("/proc/meminfo") as f:
            avail_kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
        gib = avail_kib / 2**20
    except (OSError, StopIteration, ValueError):
        gib = 8.0
    return int(min(8, max(1, gib / 3 / max(1, engines))))
