"""The constraint check of Algorithm 1: may request r join instance i now?

Three tests, in the paper's order; the first that fails is reported:

1. TTFT. t_total = predicted prefill time of the instance's open window
   (requests routed at or after its last switch into prefill, each predicted
   when it was routed) plus r's (of the part of its prompt the instance's
   prefix cache does not hold, ``predicted_prefill``). Fails
   if t_total > TTFT SLO. A request alone in a fresh window always passes:
   nothing could serve it sooner, and refusing would leave it pending forever.
2. TPOT. The decode stall still to come is the window's remaining predicted
   prefill time plus r's, plus ``decode_margin_s`` (after the pause the next
   token still needs one decode step; drivers pass their estimate of it). The
   decoders' slack ("saved TPOT", see RequestState.saved_tpot) is measured now,
   so it has already paid for the part of the window that has elapsed.
   ``min`` is the default: in simulation (CodeLlama-34B, L20, ShareGPT) the
   paper's mean let P99 goodput collapse to ~2.6 req/s against 39.6 with min,
   because old decoders' seconds of slack hide the youngest ones' lack of it.
   Decoders are all requests with a first token, including those of the open
   window: the paper counts only requests routed before the window, but the
   engine pauses window members too once they have started, and leaving them
   out let long windows (up to the TTFT SLO) wreck their TPOT. ``mean`` mode
   (the paper) fails if the mean slack is below the stall; ``min`` mode fails
   if any request's slack is, protecting the request with the least slack,
   which the mean does not.
3. Memory. r reserves its prompt plus a share of its output tokens
   (``output_reservation``, 1.0 = all of max_tokens: it never runs out of KV
   mid-decode), less the prompt blocks it would share with requests already
   holding them there (``InstanceState.shared_tokens``: vLLM's prefix cache
   shares them, so only new blocks count). Fails if that does not fit in the instance's free KV, or
   (``SEATS``) if the engine already holds as many requests as it can run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ecoserve.policy.actions import Constraint
from ecoserve.policy.instance import InstanceState
from ecoserve.policy.predictor import PrefillTimePredictor
from ecoserve.policy.request import RequestState
from ecoserve.policy.slo import SLO

SlackMode = Literal["mean", "min"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    failed: Constraint | None  # None: r may go there
    t_total: float  # predicted prefill seconds of the window including r
    stall: float  # predicted decode pause still to come, including r

    @property
    def ok(self) -> bool:
        return self.failed is None


class ConstraintChecker:
    def __init__(
        self,
        slo: SLO,
        predictor: PrefillTimePredictor,
        *,
        slack_mode: SlackMode = "min",
        output_reservation: float = 1.0,
        decode_margin_s: float = 0.0,
    ) -> None:
        if slack_mode not in ("mean", "min"):
            raise ValueError(f"slack_mode must be 'mean' or 'min', got {slack_mode!r}")
        if not 0.0 <= output_reservation <= 1.0:
            raise ValueError("output_reservation must be within [0, 1]")
        self.slo = slo
        self.predictor = predictor
        self.slack_mode = slack_mode
        self.output_reservation = output_reservation
        if decode_margin_s < 0:
            raise ValueError("decode_margin_s must be >= 0")
        self.decode_margin_s = decode_margin_s
        # Told every check's result (instance, request, result, now): a probe
        # for observers (the simulator's analysis); it must not decide anything.
        self.on_check: Callable[[InstanceState, RequestState, CheckResult, float], None] | None = None

    def kv_need(self, req: RequestState, inst: InstanceState | None = None) -> int:
        """KV tokens r reserves when routed (to ``inst``: besides the blocks it shares there)."""
        shared = inst.shared_tokens(req) if inst is not None else 0
        return req.prompt_tokens - shared + math.ceil(self.output_reservation * req.max_output_tokens)

    def checked(self, inst: InstanceState, req: RequestState, now: float) -> CheckResult:
        """``check``, reported to ``on_check``: what routers call."""
        res = self.check(inst, req, now)
        if self.on_check is not None:
            self.on_check(inst, req, res, now)
        return res

    def predicted_prefill(self, inst: InstanceState, req: RequestState, cached: int | None = None) -> float:
        """r's prefill on ``inst``: of the part its prefix cache does not hold
        (``cached``: those tokens, when the caller has them)."""
        return self.predictor.predict_uncached(req.prompt_tokens, inst.cached_tokens(req) if cached is None else cached)

    def check(self, inst: InstanceState, req: RequestState, now: float) -> CheckResult:
        mine = self.predicted_prefill(inst, req)
        window_pred = inst.window_pred if inst.window_start is not None else 0.0
        # Prompts trickling there (policy/trickle.py) are prefilled first by the
        # window too; always none under Algorithm 1.
        t_total = window_pred + inst.trickle_pred + mine
        elapsed = 0.0 if inst.window_start is None else now - inst.window_start
        stall = max(0.0, window_pred - elapsed) + inst.trickle_pred + mine

        if (inst.window_size or inst.trickle_n) and t_total > self.slo.ttft:
            return CheckResult(Constraint.TTFT, t_total, stall)
        if inst.dec_n:
            if self.slack_mode == "mean":
                slack = inst.mean_slack(now, self.slo.tpot)
            else:
                slack = inst.min_slack(now, self.slo.tpot)
            if slack < stall + self.decode_margin_s:
                return CheckResult(Constraint.TPOT, t_total, stall)
        if self.kv_need(req, inst) > inst.kv_free:
            return CheckResult(Constraint.MEMORY, t_total, stall)
        if not inst.has_seat:
            return CheckResult(Constraint.SEATS, t_total, stall)
        return CheckResult(None, t_total, stall)
