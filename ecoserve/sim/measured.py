"""Measured operator efficiencies for the roofline engine model.

Where the constant-efficiency roofline (``specs.py``: 0.65 of peak for every
GEMM, 0.45 for attention, 3 ms + 10 us of CPU per step) guesses, this module
reads what Microsoft's Vidur simulator measured on real GPUs (MIT licence;
``data/vidur_profiles.json``, whose ``_source`` names every file and commit):

- **linear layers** (QKV, O, gate+up, down, plus the element-wise operators of
  a layer): the share of the pure roofline ``max(FLOPs/peak, weights/bandwidth)``
  reached at each step size T, per GPU, model shape and TP. It is not smooth:
  0.69-0.76 at T <= 64, 0.45-0.52 at T = 144-320 (cuBLAS changes tiles), back
  to 0.66-0.70 from T = 768 (A40, CodeLlama-34B, TP=4);
- **prefill attention**: the share of peak FLOP/s by chunk size and prior
  context (A100 only, FlashAttention): 0.006 for a 64-token chunk alone, 0.19
  for 4,096 tokens, higher with prior context;
- **decode attention**: 20 us per layer plus the KV read at 0.80 of bandwidth (A100);
- **CPU overhead per step**: Vidur's own sum (schedule, sampler, input
  preparation, output processing, Ray hand-off), fitted a + b * sequences:
  13.7 ms + 108 us (A40, TP=4), 7.7 ms + 44.5 us (A100, TP=2).

GPUs Vidur did not profile take the closest one that it did, with the
shares scaled by their own peaks (``HardwareSpec.profile_gpu``): the L20
(Ada, 48 GB GDDR6) the A40 (Ampere, 48 GB GDDR6), the A800 the A100. Attention
was measured on the A100 only and its shares are used for every GPU. Model
shapes Vidur did not profile take the closest it did (``PROFILE_MODEL``).
"""

from __future__ import annotations

import bisect
import functools
import json
import math
from importlib import resources

# Our preset -> the Vidur model whose linear shapes are closest.
PROFILE_MODEL = {
    "codellama-34b": "codellama-34b",  # identical shapes
    "qwen2-72b": "llama-2-70b",  # 8192 hidden, 64/8 heads; intermediate 28672 vs 29568
    "llama-30b": "codellama-34b",  # no profiled 6656-hidden model; the 34B is the nearest in size
}


@functools.cache
def _data() -> dict:
    return json.loads(resources.files("ecoserve.sim").joinpath("data/vidur_profiles.json").read_text())


def _interp_log(points: list[list[float]], x: float) -> float:
    """Piecewise linear in log(x); clamped to the ends."""
    xs = [p[0] for p in points]
    if x <= xs[0]:
        return points[0][1]
    if x >= xs[-1]:
        return points[-1][1]
    i = bisect.bisect_right(xs, x)
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    w = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return y0 + w * (y1 - y0)


class MeasuredCosts:
    """The measured shares for one (GPU, model, TP)."""

    def __init__(self, profile_gpu: str, model: str, tp: int) -> None:
        d = _data()
        if profile_gpu not in d["linear"]:
            raise ValueError(f"no measured profile for GPU {profile_gpu!r}; have {', '.join(d['linear'])}")
        curves = d["linear"][profile_gpu]
        proxy = PROFILE_MODEL.get(model, "codellama-34b")
        tps = sorted(int(k.split("/tp")[1]) for k in curves if k.startswith(proxy + "/"))
        near = min(tps, key=lambda t: (abs(math.log2(t) - math.log2(tp)), t))
        self.linear_curve = curves[f"{proxy}/tp{near}"]
        self.source = f"vidur {profile_gpu} {proxy} tp{near}"
        att = d["prefill_attention"]["a100"]
        self._chunks = sorted(int(c) for c in att)
        self._att = {int(c): rows for c, rows in att.items()}
        dec = d["decode_attention"]["a100"]
        self.decode_fixed_s = dec["fixed_s_per_layer"]
        self.kv_bandwidth_fraction = dec["kv_bandwidth_fraction"]
        cpu = d["cpu_overhead"].get(profile_gpu) or d["cpu_overhead"]["a100"]  # no H100 CPU data: the A100's
        self.step_overhead_s = cpu["step_s"]
        self.per_seq_overhead_s = cpu["per_seq_s"]

    def linear_share(self, tokens: int) -> float:
        """Share of the pure roofline the linear layers reach at a step of ``tokens``."""
        return _interp_log(self.linear_curve, max(1, tokens))

    def prefill_attention_share(self, chunk: int, prior: int) -> float:
        """Share of peak FLOP/s of a chunk's attention (log-interpolated in the
        chunk size, linear in the prior context; clamped to the measured range)."""
        cs = self._chunks
        c = min(max(chunk, cs[0]), cs[-1])
        i = min(max(bisect.bisect_left(cs, c), 1), len(cs) - 1)
        lo, hi = cs[i - 1], cs[i]
        a, b = self._by_prior(lo, prior), self._by_prior(hi, prior)
        w = (math.log(c) - math.log(lo)) / (math.log(hi) - math.log(lo))
        return a + w * (b - a)

    def _by_prior(self, chunk: int, prior: int) -> float:
        rows = self._att[chunk]
        ks = [r[0] for r in rows]
        if prior <= ks[0]:
            return rows[0][1]
        if prior >= ks[-1]:
            return rows[-1][1]
        j = bisect.bisect_right(ks, prior)
        (k0, e0), (k1, e1) = rows[j - 1], rows[j]
        return e0 + (e1 - e0) * (prior - k0) / (k1 - k0)
