"""The prompt-token budget of each step in the ``chunked`` phase, taken inside
the engine.

In ``chunked`` a step runs every decode plus at most B prompt tokens. B is
either commanded (``PhaseCommand.prompt_budget``: the coordinator decides; or
``step_budget``, tokens per step with the decodes included, so B is that less
the step's decodes: Sarathi's rule, as the simulator's chunked engines run it) or,
with a TPOT SLO (``PhaseCommand.tpot_s`` or ``ECOSERVE_TPOT_SLO``), computed
here before every step by the policy's own rule (``ecoserve.policy.chunk_budget``)
from this engine's requests: each decoder's output tokens and first-token time
give its slack, and a step-time predictor corrected by this engine's own step
records says what chunk that slack pays for. So a single ``vllm serve`` with the
plugin sizes its chunks to the SLO with no coordinator at all.

Settings read once at start (environment, like ``ECOSERVE_PHASE``):
- ``ECOSERVE_TPOT_SLO`` (seconds): the SLO the rule keeps; unset: no rule, and
  ``chunked`` without a commanded budget runs stock.
- ``ECOSERVE_TTFT_SLO`` (seconds, optional, with the TPOT SLO): the rule's
  budget is also at least the chunk with which every waiting prompt that can
  still meet this TTFT does (``ttft_chunk``), from the requests' arrival times.
- ``ECOSERVE_LOST_YIELD`` (``1``/``0``; default: on with a TTFT SLO): a
  prompt that would miss its TTFT even in one step of the engine's limit sits
  out while a prompt that can still meet its own waits (``yielding``).
- ``ECOSERVE_FLOOR_WITHIN_TPOT`` (``1``/``0``; default: on with a TTFT SLO):
  the floor is cut to the largest chunk whose predicted step lasts at most one
  TPOT (the TTFT term raises the budget again where a prompt needs it). On one
  CPU engine both took SLO attainment from 0.83 to 0.93 at 0.7 req/s
  (bench/results/real/single-engine-poisson/); either alone did not.
- ``ECOSERVE_CHUNK_FLOOR`` (tokens, default 64): Sarathi's static budget under
  the rule; the floor at batch b is this less b.
- ``ECOSERVE_PROFILE``: an ``ecoserve profile`` JSON to start the predictor
  from; unset, it starts from the policy's default prefill model and the
  default decode model below, and learns from the steps.
"""

from __future__ import annotations

import os
import time

from ecoserve.policy.chunk_budget import ChunkBudgetRule, least_slack
from ecoserve.policy.config import DEFAULT_PREFILL_COEFFS, step_predictor
from ecoserve.policy.predictor import PrefillTimePredictor
from ecoserve.policy.step_time import StepTimePredictor
from ecoserve.workload.profile import EngineProfile

DEFAULT_CHUNK_FLOOR = 64
# Seconds of a TTFT spent outside the engine's steps (the API server's and the
# stream's share): the 11-21 profile's measured ``overheads.ttft_s`` is 8.7 ms;
# rounded up, since a first token a little early costs nothing.
TTFT_MARGIN_S = 0.02
# Waiting prompts the TTFT term looks at, in prefill order: past these, a
# prompt's deadline is too far behind the queue to move this step's chunk.
TTFT_LOOKAHEAD = 16


def _switch(name: str) -> bool | None:
    """An on/off setting: ``1``, ``0``, or unset (None: the default)."""
    value = os.environ.get(name)
    if value not in (None, "0", "1"):
        raise ValueError(f"{name} must be 0 or 1, got {value!r}")
    return None if value is None else value == "1"


def predictor_from(profile_path: str | None) -> StepTimePredictor:
    """The engine's step-time predictor: from a measured profile, else the defaults."""
    if not profile_path:
        return step_predictor(PrefillTimePredictor(coeffs=DEFAULT_PREFILL_COEFFS))
    prof = EngineProfile.load(profile_path)
    prefill = PrefillTimePredictor(points=prof.prefill)
    try:
        return step_predictor(prefill, prof.decode_points())
    except ValueError:  # one batch size or one context length: no plane to fit; learn from the steps
        return step_predictor(prefill)


class EngineBudget:
    """First-token times of the engine's requests, its step-time predictor, and
    the rule; ``prompt_budget`` is asked before every ``chunked`` step."""

    def __init__(self, max_budget: int, *, tpot_s: float | None = None, floor: int | None = None,
                 profile_path: str | None = None, ttft_s: float | None = None) -> None:  # fmt: skip
        env_tpot, env_ttft = os.environ.get("ECOSERVE_TPOT_SLO"), os.environ.get("ECOSERVE_TTFT_SLO")
        self.tpot_s = tpot_s if tpot_s is not None else (float(env_tpot) if env_tpot else None)
        self.ttft_s = ttft_s if ttft_s is not None else (float(env_ttft) if env_ttft else None)
        if self.ttft_s is not None and self.ttft_s <= 0:
            raise ValueError(f"ECOSERVE_TTFT_SLO must be > 0 seconds, got {self.ttft_s}")
        # None: on with a TTFT SLO (both protect what it adds), off without one
        self._lost_yield = _switch("ECOSERVE_LOST_YIELD")
        self._floor_within_tpot = _switch("ECOSERVE_FLOOR_WITHIN_TPOT")
        # ids of the prompts that sit out this step: lost, while others can still be saved
        self.yielding: frozenset[str] = frozenset()
        self.floor = floor if floor is not None else int(os.environ.get("ECOSERVE_CHUNK_FLOOR", DEFAULT_CHUNK_FLOOR))
        if self.tpot_s is not None and self.tpot_s <= 0:
            raise ValueError(f"ECOSERVE_TPOT_SLO must be > 0 seconds, got {self.tpot_s}")
        if self.floor < 1:
            raise ValueError(f"ECOSERVE_CHUNK_FLOOR must be >= 1 token, got {self.floor}")
        self.max_budget = max_budget
        self.commanded: int | None = None
        self.commanded_step: int | None = None  # tokens per step, decodes included
        self.steps = predictor_from(profile_path if profile_path is not None else os.environ.get("ECOSERVE_PROFILE"))
        self._first: dict[str, float] = {}  # request id -> first-token time (time.time())
        self.last: int | None = None  # the budget of the latest chunked step

    def command(self, prompt_budget: int | None, tpot_s: float | None, step_budget: int | None = None,
                ttft_s: float | None = None) -> None:  # fmt: skip
        """A phase command's budget settings: a fixed budget (of prompt tokens,
        or of tokens with the decodes included), or new SLOs for the rule."""
        self.commanded, self.commanded_step = prompt_budget, step_budget
        if tpot_s is not None:
            self.tpot_s = tpot_s
        if ttft_s is not None:
            self.ttft_s = ttft_s

    def rule(self) -> ChunkBudgetRule | None:
        if self.tpot_s is None:
            return None
        static = max(1, min(self.floor, self.max_budget))
        return ChunkBudgetRule(self.tpot_s, static, self.max_budget, lost_yield=self.lost_yield,
                               floor_within_tpot=self.floor_within_tpot)  # fmt: skip

    @property
    def lost_yield(self) -> bool:
        return self._lost_yield if self._lost_yield is not None else self.ttft_s is not None

    @property
    def floor_within_tpot(self) -> bool:
        return self._floor_within_tpot if self._floor_within_tpot is not None else self.ttft_s is not None

    def prompt_budget(self, running, now: float | None = None, waiting=()) -> int | None:
        """Prompt tokens the next step may take (None: no budget, run stock).
        ``waiting``: the requests not yet admitted, in admission order (their
        TTFT counts with ``ttft_s``; partial prefills in ``running`` come first)."""
        if self.commanded is not None:
            self.last = self.commanded
            return self.commanded
        if self.commanded_step is not None:
            self.last = max(0, self.commanded_step - sum(1 for r in running if not r.is_prefill_chunk))
            return self.last
        rule = self.rule()
        if rule is None:
            return None
        now = time.time() if now is None else now
        decoders = [r for r in running if not r.is_prefill_chunk]
        context = sum(r.num_computed_tokens for r in decoders)
        slack = least_slack(((r.num_output_tokens, self._first[r.request_id]) for r in decoders
                             if r.request_id in self._first), now, rule.tpot)  # fmt: skip
        prompts = self._prompts(running, waiting)
        due = (self.ttft_s or 0.0) - TTFT_MARGIN_S - now
        self.last, lost = rule.plan(slack, len(decoders), context, self.steps,
                                    [(r.num_prompt_tokens - r.num_computed_tokens, r.arrival_time + due) for r in prompts])  # fmt: skip
        self.yielding = frozenset(prompts[k].request_id for k in lost) if len(lost) < len(prompts) else frozenset()
        return self.last

    def _prompts(self, running, waiting) -> list:
        """The requests not yet prefilled, in the order the engine prefills them,
        at most ``TTFT_LOOKAHEAD`` (none without ``ttft_s``). A preempted request
        recomputing its prompt has its first token already: not one of them."""
        if self.ttft_s is None:
            return []
        out = []
        for queue in (r for r in running if r.is_prefill_chunk), waiting:
            for r in queue:
                if len(out) >= TTFT_LOOKAHEAD:
                    return out
                if not r.num_output_tokens:
                    out.append(r)
        return out

    def note_outputs(self, requests: dict, scheduled_ids, now: float | None = None) -> None:
        """After a step: first-token times of the requests that just got one."""
        now = time.time() if now is None else now
        for rid in scheduled_ids:
            req = requests.get(rid)
            if req is not None and rid not in self._first and req.num_output_tokens > 0:
                self._first[rid] = now
        if len(self._first) > 2 * len(requests) + 64:  # forget finished requests
            self._first = {rid: t for rid, t in self._first.items() if rid in requests}

    def observe(self, record) -> None:
        """An engine step record (vllm_plugin.steps) for the predictor."""
        self.steps.observe_step(record.prefill_tokens, record.decode_batch, record.decode_context_tokens,
                                record.duration_s, max(1, record.prefill_reqs))  # fmt: skip
