"""A capacity bound: the request rate at which a workload's total work
saturates every instance, whatever the scheduler.

The cheapest steady state any scheduler could run, for the workload's mean
prompt P and mean output O: every step decodes b sequences and prefills the
n = b * P / (O - 1) prompt tokens that keep prefill and decode in balance,
with b up to the batch the KV cache holds (each sequence at P + O/2 tokens, at
most ``max_num_seqs``); the chunk is charged as a fresh prompt (no attention
over earlier chunks, which only lowers the bound's cost). Also tried: separate
prefill steps of the cheapest size per token and decode steps at the largest
batch. The bound is the better of the two, taken at the best b. SLOs are
ignored, so no scheduler's goodput can pass this rate for long: a policy's
share of it says how much any scheduler could still gain. Disaggregated
layouts split the same GPUs; their bound is the co-located one's (a KV
transfer only adds work).
"""

from __future__ import annotations

from collections.abc import Sequence

from ecoserve.sim.engine_model import EngineModel
from ecoserve.workload.workload import Request

PREFILL_STEPS = (128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384)


def capacity_bound(model: EngineModel, requests: Sequence[Request], instances: int, max_num_seqs: int = 256) -> float:
    """Requests per second the cluster's instances can complete at most."""
    if not requests or instances < 1:
        raise ValueError("need requests and at least one instance")
    n = len(requests)
    prompt = sum(r.prompt_tokens for r in requests) / n
    decodes = sum(max(0, r.output_tokens - 1) for r in requests) / n  # the first token comes with the prefill
    context = prompt + (decodes + 1) / 2
    b_max = max(1, min(max_num_seqs, int(model.kv_capacity_tokens // max(1.0, context))))
    top = model.max_context or PREFILL_STEPS[-1]
    per_prefill_token = min(model.step_time(((k, 0),), 0, 0) / k for k in PREFILL_STEPS if k <= top)
    separate = prompt * per_prefill_token + decodes * model.decode_step(b_max, int(b_max * context)) / b_max
    best = separate
    if decodes > 0:
        for b in sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, b_max}):
            if b > b_max:
                continue
            chunk = max(1, round(b * prompt / decodes))
            step = model.step_time(((chunk, 0),), b, int(b * context))
            best = min(best, step * decodes / b)
    return instances / best
