"""Timestamped request traces: the Azure LLM trace (CSV) and Mooncake (JSONL).

Azure (``TIMESTAMP,ContextTokens,GeneratedTokens``): the conversation trace
released with Splitwise (Patel et al., ISCA 2024), Azure Public Dataset,
CC-BY-4.0. Timestamps look like ``2023-11-16 18:15:46.6805900``. The package
ships it gzipped in ``ecoserve/workload/data/`` (attribution in the README.md
there); ``default_azure_path()`` finds it through ``importlib.resources``.

Mooncake (one JSON object per line with ``timestamp``, ``input_length``,
``output_length``): the trace released with Mooncake (Qin et al., FAST 2025);
its timestamps are milliseconds from the start of the trace.

Either format may be gzipped (a ``.gz`` suffix). Times are returned in seconds
from the first request.
"""

from __future__ import annotations

import atexit
import csv
import gzip
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importlib.resources.abc from 3.11; importlib.abc before
    from importlib.resources.abc import Traversable

AZURE_FILENAME = "azure_llm_conv_2023.csv"
AZURE_PACKAGED = AZURE_FILENAME + ".gz"


@dataclass(frozen=True)
class Trace:
    name: str
    times: list[float]  # seconds from the first request, non-decreasing
    prompts: list[int]
    outputs: list[int]
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (len(self.times) == len(self.prompts) == len(self.outputs)):
            raise ValueError("trace columns differ in length")
        if not self.times:
            raise ValueError(f"trace {self.name} is empty")

    def __len__(self) -> int:
        return len(self.times)

    @property
    def duration(self) -> float:
        return self.times[-1] - self.times[0]

    @property
    def rate(self) -> float:
        """Mean arrival rate (requests/s) over the trace's span."""
        return (len(self) - 1) / self.duration if self.duration > 0 else math.inf

    def head(self, n: int | None) -> Trace:
        if n is None or n >= len(self):
            return self
        return Trace(self.name, self.times[:n], self.prompts[:n], self.outputs[:n], self.source, self.meta)

    def pairs(self) -> list[tuple[int, int]]:
        return list(zip(self.prompts, self.outputs))


def packaged_azure() -> Traversable:
    """The Azure trace shipped inside the package (``ecoserve/workload/data/``,
    gzipped; its attribution is in the ``README.md`` beside it)."""
    return resources.files("ecoserve.workload") / "data" / AZURE_PACKAGED


def default_azure_path() -> Path:
    """The Azure trace as a file path: ``$ECOSERVE_DATA/azure_llm_conv_2023.csv``
    (or ``.csv.gz``) if that variable is set and names a file, else the copy
    shipped in the package. Never looks outside the installed package."""
    candidates: list[Path] = []
    if os.environ.get("ECOSERVE_DATA"):
        base = Path(os.environ["ECOSERVE_DATA"])
        candidates += [base / AZURE_FILENAME, base / AZURE_PACKAGED]
        for c in candidates:
            if c.is_file():
                return c
    shipped = packaged_azure()
    if isinstance(shipped, Path):  # an ordinary install: the file is on disk
        if shipped.is_file():
            return shipped
    elif shipped.is_file():  # a zipped install: extract once, for this process's life
        return _extracted(shipped)
    looked = [*map(str, candidates), str(shipped)]
    raise FileNotFoundError(
        f"Azure trace not found; looked in: {', '.join(looked)}. "
        "The package ships it as ecoserve/workload/data/" + AZURE_PACKAGED + ": reinstall, "
        "give a trace path explicitly, or set ECOSERVE_DATA."
    )


_EXTRACTED: dict[str, Path] = {}


def _extracted(resource: Traversable) -> Path:
    """A real file (same name) for a resource inside a zip; removed at exit."""
    key = str(resource)
    if key not in _EXTRACTED:
        folder = Path(tempfile.mkdtemp(prefix="ecoserve-data-"))
        atexit.register(shutil.rmtree, folder, True)
        target = folder / resource.name
        target.write_bytes(resource.read_bytes())
        _EXTRACTED[key] = target
    return _EXTRACTED[key]


def _open_text(path: Path):
    """A text stream over a plain or gzipped (``.gz``) file."""
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", newline="")
    return path.open(newline="")


def _base_suffix(path: Path) -> str:
    """The format suffix, looking through ``.gz``: ``a.csv.gz`` -> ``.csv``."""
    suffixes = [x.lower() for x in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _trace_name(path: Path) -> str:
    name = path.name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    return Path(name).stem


def _azure_seconds(stamp: str) -> float:
    """``YYYY-MM-DD HH:MM:SS[.fffffff]`` -> seconds since 0001-01-01 (any fraction length)."""
    day, _, clock = stamp.strip().partition(" ")
    if not clock:
        day, _, clock = stamp.strip().partition("T")
    y, mo, d = (int(x) for x in day.split("-"))
    h, mi, s = clock.split(":")
    return date(y, mo, d).toordinal() * 86400.0 + int(h) * 3600 + int(mi) * 60 + float(s)


def load_azure_csv(path: str | Path) -> Trace:
    path = Path(path)
    times, prompts, outputs = [], [], []
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        need = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
        if not need <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: expected columns {sorted(need)}, got {reader.fieldnames}")
        for row in reader:
            times.append(_azure_seconds(row["TIMESTAMP"]))
            prompts.append(int(row["ContextTokens"]))
            outputs.append(int(row["GeneratedTokens"]))
    return _finish(path, times, prompts, outputs)


def load_mooncake_jsonl(path: str | Path, time_unit_s: float = 1e-3) -> Trace:
    path = Path(path)
    times, prompts, outputs = [], [], []
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
                times.append(float(obj["timestamp"]) * time_unit_s)
                prompts.append(int(obj["input_length"]))
                outputs.append(int(obj["output_length"]))
            except (KeyError, ValueError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: need timestamp, input_length, output_length ({e})") from e
    return _finish(path, times, prompts, outputs)


def _finish(path: Path, times: list[float], prompts: list[int], outputs: list[int]) -> Trace:
    if not times:
        raise ValueError(f"{path}: no requests")
    rows = sorted(zip(times, prompts, outputs), key=lambda r: r[0])
    t0 = rows[0][0]
    # Requests asking for no output cannot be served as "force this many tokens";
    # they are kept as 1-token requests so the arrival process is unchanged.
    dropped = sum(1 for r in rows if r[2] < 1)
    return Trace(
        _trace_name(path),
        [t - t0 for t, _, _ in rows],
        [max(0, p) for _, p, _ in rows],
        [max(1, o) for _, _, o in rows],
        source=str(path),
        meta={"zero_output_requests": dropped},
    )


def load_trace(path: str | Path) -> Trace:
    """Load a trace by its format: ``.jsonl``/``.json`` is Mooncake, else Azure
    CSV; either may be gzipped (``.csv.gz``, ``.jsonl.gz``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trace file not found: {path}")
    if _base_suffix(path) in (".jsonl", ".json"):
        return load_mooncake_jsonl(path)
    return load_azure_csv(path)
