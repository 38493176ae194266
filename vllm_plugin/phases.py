"""What the next engine step may contain, given the phase. Pure logic, no vLLM.

EcoServe's phases never mix prefill and decode in one batch, except ``mixed``
(the stock-vLLM baseline) and ``chunked`` (decodes plus a budgeted prompt chunk). The scheduler asks ``plan_step`` before every step and
enforces the answer with vLLM's own levers (see scheduler.py).
"""

from __future__ import annotations

import enum


class StepPlan(enum.Enum):
    STOCK = "stock"  # unmodified vLLM scheduling
    CHUNKED = "chunked"  # vLLM's scheduling within a per-step prompt-token budget (budget.py)
    PREFILL = "prefill"  # prefills only; running decodes sit out (keep their KV)
    DECODE = "decode"  # decodes only; nothing admitted, partial prefills sit out
    IDLE = "idle"  # nothing the phase allows: the engine must sleep, not spin


def plan_step(phase: str, *, can_prefill: bool, can_decode: bool) -> StepPlan:
    """``can_prefill``: a partial prefill is running or the head of the waiting
    queue can be admitted now; ``can_decode``: a running request is past its
    prompt."""
    if phase == "mixed":
        return StepPlan.STOCK
    if phase == "chunked":
        return StepPlan.CHUNKED
    if phase == "prefill":
        return StepPlan.PREFILL if can_prefill else StepPlan.IDLE
    if phase == "decode":
        return StepPlan.DECODE if can_decode else StepPlan.IDLE
    # temporal: prefill priority (vLLM V0's separate batching), else decode.
    if can_prefill:
        return StepPlan.PREFILL
    if can_decode:
        return StepPlan.DECODE
    return StepPlan.IDLE
