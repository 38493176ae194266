"""Iteration-time models: how long one engine step takes.

A step processes prefill *chunks* ``(new_tokens, prior_context)`` (a whole
prompt is one chunk with prior context 0; Sarathi-style chunking continues a
prompt at its prior context) and ``batch`` decode tokens whose sequences hold
``ctx_sum`` tokens of context in total.

``RooflineModel``: analytic, from the model's shape and the hardware
(``specs.py``). Per step, with T = chunk tokens + batch:

- linear layers: 2 * linear_params * T FLOPs against reading every weight
  once (the step is bound by the larger, ``max(flops/F, bytes/B)``);
- LM head: 2 * hidden * vocab FLOPs per *sampled* token (one per finished
  prompt and one per decode), weights read once;
- attention: 4 * layers * heads * head_dim FLOPs per (query, key) pair
  (causal: a chunk of n at prior context c has n*(c + (n+1)/2) pairs; a decode
  token at context L has L), against reading the KV cache it attends to (prior
  context of chunks, all context of decodes) and writing the new KV;
- tensor parallelism: FLOPs and bytes split over TP GPUs; two ring
  all-reduces of T * hidden * 2 bytes per layer, each
  ``2(TP-1)/TP * bytes / link_bw + 2(TP-1) * hop_latency``;
- a fixed CPU overhead per step plus a small one per sequence.

Two cost models (``costs``): ``measured`` (the default) takes the share of
the pure roofline each operator reaches from Vidur's measured profiles
(``measured.py``): linear layers by step size, prefill attention by chunk and
prior context, decode attention as a fixed cost per layer plus the KV read,
and a measured CPU overhead; in a mixed step the prefill chunks' and the
decodes' attention are separate kernels and add up. ``constant`` is the
earlier model: one efficiency per operator kind (``specs.py``) and one
``max()`` over the step's attention.

``ProfileModel``: the same interface from a profile measured on a real engine
(``ecoserve.workload.profile``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ecoserve.sim.measured import MeasuredCosts
from ecoserve.sim.specs import HARDWARE, MODELS, HardwareSpec, ModelSpec
from ecoserve.workload.profile import EngineProfile

Chunks = Sequence[tuple[int, int]]  # (new tokens, prior context)

# Prompt lengths at which the offline prefill profile is taken (the policy's
# PrefillTimePredictor interpolates between them).
COST_MODELS = ("measured", "constant")
DECODE_BATCHES = (1, 4, 16, 32, 64, 128, 256)  # decode_points' grid: vLLM's max_num_seqs is 256
PROFILE_LENGTHS = (1, 16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192,
                   12288, 16384, 24576, 32768)


class EngineModel:
    name: str
    kv_capacity_tokens: int
    kv_bytes_per_token: int | None
    max_context: int | None
    max_batched_tokens: int  # vLLM's max_num_batched_tokens without chunking

    def decode_step(self, batch: int, ctx_sum: int) -> float:
        raise NotImplementedError

    def step_time(self, chunks: Chunks, batch: int, ctx_sum: int) -> float:
        raise NotImplementedError

    def prefill_time(self, prompt_tokens: int) -> float:
        """A lone prefill step of one prompt."""
        return self.step_time(((prompt_tokens, 0),), 0, 0)

    def prefill_points(self) -> list[tuple[int, float]]:
        """The offline profile for ``PrefillTimePredictor(points=...)``."""
        top = self.max_context or PROFILE_LENGTHS[-1]
        xs = [n for n in PROFILE_LENGTHS if n <= top]
        if xs[-1] != top:
            xs.append(top)
        return [(n, self.prefill_time(n)) for n in xs]

    def decode_points(self) -> list[tuple[int, int, float]]:
        """(batch, context tokens, seconds) of decode steps on a grid, what
        ``ecoserve profile`` measures: for ``DecodeStepModel.fit``."""
        top = self.max_context or PROFILE_LENGTHS[-1]
        out = []
        for b in DECODE_BATCHES:
            for c in (n for n in PROFILE_LENGTHS[1:] if n <= top):
                if b * c <= self.kv_capacity_tokens:
                    out.append((b, b * c, self.decode_step(b, b * c)))
        return out

    def describe(self) -> dict:
        return {"name": self.name, "kv_capacity_tokens": self.kv_capacity_tokens}


class RooflineModel(EngineModel):
    def __init__(self, model: ModelSpec | str, hardware: HardwareSpec | str, tp: int, costs: str = "measured") -> None:
        m = MODELS[model] if isinstance(model, str) else model
        hw = HARDWARE[hardware] if isinstance(hardware, str) else hardware
        if tp < 1 or tp & (tp - 1):
            raise ValueError(f"tp must be a power of two, got {tp}")
        if costs not in COST_MODELS:
            raise ValueError(f"unknown cost model {costs!r}; choose from {', '.join(COST_MODELS)}")
        self.spec, self.hw, self.tp, self.costs = m, hw, tp, costs
        self.name = f"{m.name}@{hw.name}x{tp}"
        self.max_context = m.max_context
        self.max_batched_tokens = max(m.max_context, 2048)
        self.kv_bytes_per_token = m.kv_bytes_per_token
        usable = tp * (hw.mem_gb * hw.gpu_memory_utilization - hw.activation_reserve_gb) * 1e9 - m.weight_bytes
        self.kv_capacity_tokens = int(usable // m.kv_bytes_per_token) if usable > 0 else 0

        flops = tp * hw.bf16_tflops * 1e12
        self.measured = MeasuredCosts(hw.profile_gpu, m.name, tp) if costs == "measured" else None
        self._peak = 1.0 / flops
        self._peak_bw = 1.0 / (tp * hw.hbm_gbps * 1e9)
        self._f_lin = 1.0 / (flops * hw.gemm_eff)
        self._f_attn = 1.0 / (flops * hw.attn_eff)
        self._bw = 1.0 / (tp * hw.hbm_gbps * 1e9 * hw.mem_eff)
        self._lin_flops_tok = 2.0 * m.linear_params
        self._head_flops_tok = 2.0 * m.hidden * m.vocab
        self._w_time = m.weight_bytes * self._bw
        self._lin_w_peak = m.linear_params * m.dtype_bytes * self._peak_bw
        self._head_w_peak = m.hidden * m.vocab * m.dtype_bytes * self._peak_bw
        self._attn_flops_pair = 4.0 * m.layers * m.heads * m.hd
        self._kv_b = float(m.kv_bytes_per_token)
        if tp > 1:
            link = hw.intra_gbps * 1e9 * hw.link_eff
            ring = 2.0 * (tp - 1) / tp
            self._ar_per_tok = 2 * m.layers * ring * m.hidden * m.dtype_bytes / link
            self._ar_fixed = 2 * m.layers * 2 * (tp - 1) * hw.hop_latency_s
        else:
            self._ar_per_tok = self._ar_fixed = 0.0
        if self.measured is not None:
            self._overhead = self.measured.step_overhead_s
            self._per_seq = self.measured.per_seq_overhead_s
        else:
            self._overhead = hw.step_overhead_s
            self._per_seq = hw.per_seq_overhead_s

    def fits(self, min_tokens: int | None = None) -> bool:
        """Weights fit with room for at least one full-context request."""
        return self.kv_capacity_tokens >= (min_tokens or self.max_context or 1)

    def decode_step(self, batch: int, ctx_sum: int) -> float:
        return self.step_time((), batch, ctx_sum)

    def step_time(self, chunks: Chunks, batch: int, ctx_sum: int) -> float:
        tokens = batch
        pairs = float(ctx_sum)
        kv_read = ctx_sum
        for n, c in chunks:
            tokens += n
            pairs += n * (c + (n + 1) / 2.0)
            kv_read += c
        if tokens == 0:
            return 0.0
        sampled = batch + len(chunks)
        seqs = batch + len(chunks)
        fixed = self._overhead + self._per_seq * seqs + self._ar_fixed + self._ar_per_tok * tokens
        if self.measured is not None:
            return fixed + self._measured_compute(chunks, batch, ctx_sum, tokens, sampled)
        lin = max(self._lin_flops_tok * tokens * self._f_lin + self._head_flops_tok * sampled * self._f_lin, self._w_time)
        attn = max(self._attn_flops_pair * pairs * self._f_attn, (kv_read + tokens) * self._kv_b * self._bw)
        return fixed + lin + attn

    def _measured_compute(self, chunks: Chunks, batch: int, ctx_sum: int, tokens: int, sampled: int) -> float:
        mc = self.measured
        assert mc is not None
        lin = max(self._lin_flops_tok * tokens * self._peak, self._lin_w_peak) / mc.linear_share(tokens)
        head = max(self._head_flops_tok * sampled * self._peak, self._head_w_peak) / mc.linear_share(sampled)
        attn = 0.0
        kv_bw = self._peak_bw / mc.kv_bandwidth_fraction
        for n, c in chunks:  # one prefill kernel per chunk's share of the varlen batch
            flops = self._attn_flops_pair * n * (c + (n + 1) / 2.0)
            attn += max(flops * self._peak / mc.prefill_attention_share(n, c), (c + n) * self._kv_b * kv_bw)
        if batch:  # decode attention: its own kernel, bound by the KV read
            attn += self.spec.layers * mc.decode_fixed_s + (ctx_sum + batch) * self._kv_b * kv_bw
        return lin + head + attn

    def describe(self) -> dict:
        m, hw = self.spec, self.hw
        return {
            "name": self.name, "model": m.name, "hardware": hw.name, "tp": self.tp, "costs": self.costs,
            "params_b": round(m.params / 1e9, 2), "kv_bytes_per_token": m.kv_bytes_per_token,
            "kv_capacity_tokens": self.kv_capacity_tokens,
            "decode_step_s_b1": round(self.decode_step(1, 512), 5),
            "prefill_s_512": round(self.prefill_time(512), 5),
        }

    def to_profile(self, batch_sizes=(1, 4, 16, 32, 64, 128, 256), contexts=(128, 512, 1024, 2048, 4096, 8192)) -> EngineProfile:
        """The profile a real engine with exactly this roofline would measure."""
        ctxs = [c for c in contexts if c <= (self.max_context or c)] or [min(contexts)]
        return EngineProfile(
            prefill=self.prefill_points(),
            batch_sizes=list(batch_sizes),
            context_lengths=ctxs,
            decode_seconds=[[self.decode_step(b, b * c) for c in ctxs] for b in batch_sizes],
            kv_capacity_tokens=self.kv_capacity_tokens,
            kv_bytes_per_token=self.kv_bytes_per_token,
            max_context=self.max_context,
            meta={"model": self.spec.name, "hardware": f"{self.hw.gpu} x{self.tp}"},
        )


class ProfileModel(EngineModel):
    """Step times from a measured profile.

    Batched prefill costs the fixed part once (the lone-prefill curve at 0
    tokens, extrapolated) plus each chunk's marginal cost
    ``P(c + n) - P(c)``; a mixed step adds the decode step minus the cheapest
    measured decode step (its fixed part, weights and overhead, is already
    paid by the prefill). An approximation: a profile could measure mixed
    steps directly.

    Every step also pays the profile's ``overheads.step_gap_s`` (if measured):
    the engine loop's time between two steps (outputs handed to the API
    server, inputs taken in), which a step record's duration leaves out but a
    busy real engine pays before its next step.
    """

    def __init__(self, profile: EngineProfile, name: str = "profile") -> None:
        self.profile = profile
        self.name = name
        self.kv_capacity_tokens = profile.kv_capacity_tokens
        self.kv_bytes_per_token = profile.kv_bytes_per_token
        self.max_context = profile.max_context
        self.max_batched_tokens = max(profile.max_context or 2048, 2048)
        self._p0 = profile.prefill_time(0)
        self._dfloor = min(min(r) for r in profile.decode_seconds)
        self.step_gap = float((profile.meta.get("overheads") or {}).get("step_gap_s") or 0.0)

    @classmethod
    def load(cls, path) -> ProfileModel:
        return cls(EngineProfile.load(path), name=str(path))

    def decode_step(self, batch: int, ctx_sum: int) -> float:
        return self.profile.decode_time(batch, ctx_sum / batch if batch else 0.0) + self.step_gap

    def step_time(self, chunks: Chunks, batch: int, ctx_sum: int) -> float:
        if not chunks:
            return self.decode_step(batch, ctx_sum) if batch else 0.0
        P = self.profile.prefill_time
        t = self._p0 + sum(P(c + n) - (P(c) if c else self._p0) for n, c in chunks) + self.step_gap
        if batch:
            t += self.profile.decode_time(batch, ctx_sum / batch) - self._dfloor
        return t

    def prefill_points(self) -> list[tuple[int, float]]:
        return list(self.profile.prefill)

    def decode_points(self) -> list[tuple[int, int, float]]:
        return [(b, c, s + self.step_gap) for b, c, s in self.profile.decode_points()]


def make_engine_model(model: str, hardware: str, tp: int, costs: str = "measured") -> EngineModel:
    """A preset name -> roofline; a path -> profile."""
    if model in MODELS:
        return RooflineModel(model, hardware, tp, costs)
    return ProfileModel.load(model)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b) if b else math.inf
