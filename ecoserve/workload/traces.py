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
MOONCAKE_PACKAGED = "mooncake_synthetic_trace.jsonl.gz"
BLOCK_TOKENS = 512  # tokens per hashed block in Mooncake's traces


@dataclass(frozen=True)
class Trace:
    name: str
    times: list[float]  # seconds from the first request, non-decreasing
    prompts: list[int]
    outputs: list[int]
    source: str = ""
    meta: dict = field(default_factory=dict)
    # Per request, the hashes of its prompt's blocks (Mooncake's ``hash_ids``,
    # BLOCK_TOKENS tokens each, the last one possibly partial); None: no hashes.
    blocks: list[tuple[int, ...]] | None = None

    def __post_init__(self) -> None:
        if not (len(self.times) == len(self.prompts) == len(self.outputs)):
            raise ValueError("trace columns differ in length")
        if self.blocks is not None and len(self.blocks) != len(self.times):
            raise ValueError("trace block hashes differ in length from its requests")
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
        blocks = None if self.blocks is None else self.blocks[:n]
        return Trace(self.name, self.times[:n], self.prompts[:n], self.outputs[:n], self.source, self.meta, blocks)

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
    return _shipped_path(AZURE_PACKAGED, (AZURE_FILENAME, AZURE_PACKAGED), "Azure trace")


def default_mooncake_path() -> Path:
    """Mooncake's synthetic trace with prefix-block hashes (Apache-2.0), shipped
    in the package the same way; ``$ECOSERVE_DATA`` may hold it too."""
    return _shipped_path(MOONCAKE_PACKAGED, (MOONCAKE_PACKAGED[: -len(".gz")], MOONCAKE_PACKAGED), "Mooncake trace")


def _shipped_path(packaged: str, names: tuple[str, ...], what: str) -> Path:
    candidates: list[Path] = []
    if os.environ.get("ECOSERVE_DATA"):
        base = Path(os.environ["ECOSERVE_DATA"])
        candidates += [base / n for n in names]
        for c in candidates:
            if c.is_file():
                return c
    shipped = resources.files("ecoserve.workload") / "data" / packaged
    if isinstance(shipped, Path):  # an ordinary install: the file is on disk
        if shipped.is_file():
            return shipped
    elif shipped.is_file():  # a zipped install: extract once, for this process's life
        return _extracted(shipped)
    looked = [*map(str, candidates), str(shipped)]
    raise FileNotFoundError(
        f"{what} not found; looked in: {', '.join(looked)}. "
        "The package ships it as ecoserve/workload/data/" + packaged + ": reinstall, "
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
    """Mooncake's format; ``hash_ids`` (the prompt's block hashes, optional) are
    kept when every line has them."""
    path = Path(path)
    times, prompts, outputs, blocks = [], [], [], []
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
                ids = obj.get("hash_ids")
                blocks.append(None if ids is None else tuple(int(h) for h in ids))
            except (KeyError, ValueError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: need timestamp, input_length, output_length ({e})") from e
    hashed = bool(blocks) and all(b is not None for b in blocks)
    return _finish(path, times, prompts, outputs, blocks if hashed else None)


def _finish(path: Path, times: list[float], prompts: list[int], outputs: list[int],
            blocks: list[tuple[int, ...]] | None = None) -> Trace:  # fmt: skip
    if not times:
        raise ValueError(f"{path}: no requests")
    cols = blocks if blocks is not None else [()] * len(times)
    rows = sorted(zip(times, prompts, outputs, cols), key=lambda r: r[0])
    t0 = rows[0][0]
    # Requests asking for no output cannot be served as "force this many tokens";
    # they are kept as 1-token requests so the arrival process is unchanged.
    dropped = sum(1 for r in rows if r[2] < 1)
    return Trace(
        _trace_name(path),
        [r[0] - t0 for r in rows],
        [max(0, r[1]) for r in rows],
        [max(1, r[2]) for r in rows],
        source=str(path),
        meta={"zero_output_requests": dropped},
        blocks=[r[3] for r in rows] if blocks is not None else None,
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
