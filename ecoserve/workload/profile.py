"""Engine profiles: step times measured on a real engine, in one JSON file.

The simulator's profile-driven engine model and the policy's
``PrefillTimePredictor`` read the same file, so a profile taken once on real
hardware drives both the routing decisions and the simulated engine.

Format (``"format": "ecoserve-profile/v1"``)::

    {
      "format": "ecoserve-profile/v1",
      "model": "codellama-34b",            # free text: what was measured
      "hardware": "4x L20-48GB, TP=4",    # free text
      "kv_capacity_tokens": 180000,        # KV cache slots of one instance
      "kv_bytes_per_token": 196608,        # optional: needed for KV transfer (FuDG)
      "max_context": 16384,                # optional: longest prompt + output
      "prefill": [[16, 0.031], [512, 0.16], [2048, 0.61]],
                                           # [prompt tokens, seconds] of a lone
                                           # prefill step, prompt lengths distinct
      "decode": {
        "batch_sizes":     [1, 8, 32, 128],
        "context_lengths": [128, 1024, 4096],
        "seconds": [[...], [...], [...], [...]]
                                           # seconds[i][j]: one decode step of
                                           # batch_sizes[i] sequences that each
                                           # hold context_lengths[j] tokens
      }
    }

Interpolation: prefill is piecewise linear in the prompt length, extrapolated
along the end segments (exactly as ``PrefillTimePredictor`` does with points);
decode is bilinear in (batch size, mean context), extrapolated linearly beyond
the grid and never below the smallest measured step.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

PROFILE_FORMAT = "ecoserve-profile/v1"
# Keys with a field of their own; any other top-level key (model, hardware,
# source, notes, overheads ...) is kept as free metadata and written back.
_FIELDS = ("format", "prefill", "decode", "kv_capacity_tokens", "kv_bytes_per_token", "max_context")


def _interp(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    if len(xs) == 1:
        return ys[0]
    i = bisect.bisect_left(xs, x)
    i = min(max(i, 1), len(xs) - 1)
    x0, x1 = xs[i - 1], xs[i]
    return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - x0) / (x1 - x0)


@dataclass
class EngineProfile:
    prefill: list[tuple[int, float]]
    batch_sizes: list[int]
    context_lengths: list[int]
    decode_seconds: list[list[float]]
    kv_capacity_tokens: int
    kv_bytes_per_token: int | None = None
    max_context: int | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.prefill = sorted((int(n), float(s)) for n, s in self.prefill)
        if not self.prefill:
            raise ValueError("profile: 'prefill' needs at least one [prompt_tokens, seconds] point")
        if len({n for n, _ in self.prefill}) != len(self.prefill):
            raise ValueError("profile: duplicate prompt lengths in 'prefill'")
        if any(s < 0 or n < 0 for n, s in self.prefill):
            raise ValueError("profile: negative values in 'prefill'")
        for name, axis in (("batch_sizes", self.batch_sizes), ("context_lengths", self.context_lengths)):
            if not axis or any(b <= a for a, b in zip(axis, axis[1:])):
                raise ValueError(f"profile: decode.{name} must be non-empty and strictly increasing")
        if len(self.decode_seconds) != len(self.batch_sizes) or any(
            len(row) != len(self.context_lengths) for row in self.decode_seconds
        ):
            raise ValueError("profile: decode.seconds must be a len(batch_sizes) x len(context_lengths) grid")
        if any(s <= 0 for row in self.decode_seconds for s in row):
            raise ValueError("profile: decode step times must be > 0")
        if self.kv_capacity_tokens <= 0:
            raise ValueError("profile: kv_capacity_tokens must be > 0")
        self._px = [float(n) for n, _ in self.prefill]
        self._py = [s for _, s in self.prefill]
        self._bx = [float(b) for b in self.batch_sizes]
        self._cx = [float(c) for c in self.context_lengths]
        self._floor = min(min(row) for row in self.decode_seconds)

    def prefill_time(self, prompt_tokens: int) -> float:
        """Seconds of a lone prefill of ``prompt_tokens`` tokens."""
        if len(self._px) == 1:
            x, y = self._px[0], self._py[0]
            return y * prompt_tokens / x if x else y
        return max(0.0, _interp(self._px, self._py, float(prompt_tokens)))

    def decode_time(self, batch: int, mean_context: float) -> float:
        """Seconds of one decode step of ``batch`` sequences of ``mean_context`` tokens."""
        col = [_interp(self._cx, row, mean_context) for row in self.decode_seconds]
        return max(self._floor, _interp(self._bx, col, float(batch)))

    def decode_points(self) -> list[tuple[int, int, float]]:
        """The decode grid as (batch, context tokens, seconds) points, what
        ``policy.step_time.DecodeStepModel.fit`` takes."""
        return [(b, b * c, s) for b, row in zip(self.batch_sizes, self.decode_seconds)
                for c, s in zip(self.context_lengths, row)]  # fmt: skip

    # -- files -------------------------------------------------------------------------

    def to_json(self) -> dict:
        out = {
            "format": PROFILE_FORMAT,
            **{k: v for k, v in self.meta.items() if k not in ("format",)},
            "kv_capacity_tokens": self.kv_capacity_tokens,
            "prefill": [[n, s] for n, s in self.prefill],
            "decode": {
                "batch_sizes": list(self.batch_sizes),
                "context_lengths": list(self.context_lengths),
                "seconds": [list(r) for r in self.decode_seconds],
            },
        }
        if self.kv_bytes_per_token is not None:
            out["kv_bytes_per_token"] = self.kv_bytes_per_token
        if self.max_context is not None:
            out["max_context"] = self.max_context
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def from_json(cls, obj: dict, source: str = "profile") -> EngineProfile:
        if not isinstance(obj, dict) or obj.get("format") != PROFILE_FORMAT:
            raise ValueError(f"{source}: not an engine profile (need \"format\": \"{PROFILE_FORMAT}\")")
        try:
            dec = obj["decode"]
            return cls(
                prefill=[(int(n), float(s)) for n, s in obj["prefill"]],
                batch_sizes=[int(b) for b in dec["batch_sizes"]],
                context_lengths=[int(c) for c in dec["context_lengths"]],
                decode_seconds=[[float(s) for s in row] for row in dec["seconds"]],
                kv_capacity_tokens=int(obj["kv_capacity_tokens"]),
                kv_bytes_per_token=None if obj.get("kv_bytes_per_token") is None else int(obj["kv_bytes_per_token"]),
                max_context=None if obj.get("max_context") is None else int(obj["max_context"]),
                meta={k: v for k, v in obj.items() if k not in _FIELDS},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source}: malformed engine profile: {e}") from e

    @classmethod
    def load(cls, path: str | Path) -> EngineProfile:
        path = Path(path)
        try:
            obj = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON: {e}") from e
        return cls.from_json(obj, source=str(path))


def load_profile(path: str | Path) -> list[tuple[int, float]]:
    """The prefill points of a profile file, for ``PrefillTimePredictor(points=...)``."""
    return list(EngineProfile.load(path).prefill)


def is_profile_file(path: str | Path) -> bool:
    p = Path(path)
    if not p.is_file() or p.suffix.lower() != ".json":
        return False
    try:
        return json.loads(p.read_text()).get("format") == PROFILE_FORMAT
    except (ValueError, AttributeError, OSError):
        return False
