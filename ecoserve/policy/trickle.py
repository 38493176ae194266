"""Trickle-first instance scheduling: chunked prefill by default, prefill
windows only where chunking would miss the TTFT SLO.

Not the paper's. Its instance scheduler pauses every decoder for a whole
prefill window; measured in our simulator that loses to chunked prefill with a
tuned budget (Sarathi), which prefills inside the decode steps and pauses no one.
Here an instance's resting phase is ``CHUNKED``: each step decodes every request
and takes a prompt chunk within the engine's budget (the engine's own rule,
``chunk_budget.py``).

Routing a request:
1. **Trickle.** Among the instances that can hold it (memory, seats, not in a
   window), the one where chunking it would give the earliest first token: the
   prompt tokens trickling there plus its own, at the instance's trickle rate
   (``trickle_budget`` less one token per decode, per step of the predicted
   mixed-step time, the last step at what is left); ties go to the instance
   with fewer requests. Taken if that
   prediction meets the TTFT SLO and the decoders can pay for it (the guard).
   Prefixes: only the part of the prompt the instance's prefix cache does not
   hold is chunked (vLLM skips the rest), so every prediction here counts
   those tokens; and among the instances that pass, one holding at least
   ``affinity_min_tokens`` of the prompt is taken first, the longest prefix
   first (as ``MacroInstance.choose`` does for windows): a hot prefix spills
   over once its holder's predicted TTFT or its decoders' slack runs out.
   The guard: each of the k steps that prefill the prompts trickling there,
   r's included, lasts ``step`` against the decoders' TPOT; where a step is
   longer than the TPOT, the least-slack decoder loses ``k * (step - TPOT)``
   of its saved TPOT, which it must have (plus ``decode_margin_s``): the same
   protection Algorithm 1's TPOT check gives a window's decoders. Measured in
   the simulator on the real CPU engines' profile (bench/results/screens/cpu):
   with it trickling leads best-budget Sarathi on all three workloads there;
   without it, not on Azure or ShareGPT-half.
2. **Window.** Otherwise Algorithm 1 in rolling-activation order
   (``MacroInstance.choose``): the constraint check, which now also charges the
   prompts trickling on the instance (a window prefills them first), opens or
   grows a prefill window on the first instance whose decoders' slack covers
   the stall. The window prefills only, in batches, at the step sizes where
   prefill is cheapest per token; when its members have started, the instance
   goes back to ``CHUNKED``.
3. Otherwise it waits in the FIFO queue, as under Algorithm 1 (with
   ``lost_yield``, the requests whose TTFT is lost behind the others).
"""

from __future__ import annotations

import math

from ecoserve.policy.actions import Action, Constraint
from ecoserve.policy.constraints import ConstraintChecker
from ecoserve.policy.instance import InstanceState
from ecoserve.policy.macro_instance import MacroInstance
from ecoserve.policy.phase import Phase
from ecoserve.policy.request import RequestState
from ecoserve.policy.step_time import StepTimePredictor


class TrickleMacroInstance(MacroInstance):
    resting_phase = Phase.CHUNKED
    instance_phase = Phase.CHUNKED  # where its instances start

    def __init__(self, checker: ConstraintChecker, steps: StepTimePredictor, trickle_budget: int,
                 name: str = "m0", *, lost_yield: bool = False,
                 lost_yield_max_wait: float | None = None) -> None:  # fmt: skip
        super().__init__(checker, name, lost_yield=lost_yield, lost_yield_max_wait=lost_yield_max_wait)
        if trickle_budget < 1:
            raise ValueError("trickle_budget must be >= 1")
        self.steps = steps
        self.trickle_budget = trickle_budget

    def _trickle_steps(self, inst: InstanceState, req: RequestState, cached: int = 0) -> tuple[int, float, float]:
        """(k, full, last): the predicted chunked steps that prefill the prompts
        trickling on ``inst`` and ``req``'s (less its ``cached`` tokens there),
        the time of each full chunk and of the last, which takes only what is
        left. Predicting the last at a full
        chunk made a busier instance look sooner whenever a prompt fits in one
        chunk (its decoders shrink the chunk, hence the predicted step), and
        trickling piled onto it: on the real ShareGPT-half run at 0.6 req/s one
        engine carried 73% of the decode work."""
        batch = inst.dec_n
        chunk = max(1, self.trickle_budget - batch)
        # the decoders' KV, and the cached prefixes of the prompts trickling, which their chunks attend to
        kv = max(0, inst.kv_used - inst.trickle_tokens)
        tokens = inst.trickle_tokens + req.prompt_tokens - cached
        k = math.ceil(tokens / chunk)
        full = self.steps.step_time(chunk, batch, kv) if k > 1 else 0.0
        return k, full, self.steps.step_time(tokens - (k - 1) * chunk, batch, kv)

    def trickle_ttft(self, inst: InstanceState, req: RequestState, cached: int | None = None) -> float:
        """Predicted seconds to ``req``'s first token if chunked on ``inst`` now,
        behind the prompts already trickling there (inf: ``inst`` is in a window).
        ``cached``: its prompt tokens ``inst`` holds, when the caller has them."""
        if inst.window_start is not None:
            return math.inf
        k, full, last = self._trickle_steps(inst, req, inst.cached_tokens(req) if cached is None else cached)
        return (k - 1) * full + last

    def decoders_pay(self, inst: InstanceState, req: RequestState, now: float, cached: int | None = None) -> bool:
        """The guard: trickling ``req`` on ``inst`` leaves its least-slack decoder
        its next token in time (module docstring): the slack must cover the
        most the steps fall behind the TPOT at any point."""
        slack = inst.min_slack(now, self.checker.slo.tpot)
        if slack is None:
            return True  # nothing decodes: nobody's TPOT is at stake
        k, full, last = self._trickle_steps(inst, req, inst.cached_tokens(req) if cached is None else cached)
        tpot = self.checker.slo.tpot
        behind = (k - 1) * (full - tpot)
        need = max(0.0, behind, behind + last - tpot)  # steps shorter than the TPOT bank slack
        return need <= 0 or slack >= need + self.checker.decode_margin_s

    def _trickles(self, inst: InstanceState, req: RequestState, now: float) -> bool:
        cached = inst.cached_tokens(req)
        return (self._can_hold(inst, req) and self.trickle_ttft(inst, req, cached) <= self.checker.slo.ttft
                and self.decoders_pay(inst, req, now, cached))  # fmt: skip

    def _can_hold(self, inst: InstanceState, req: RequestState) -> bool:
        return inst.accepting and inst.has_seat and self.checker.kv_need(req, inst) <= inst.kv_free

    def _trickle_choice(self, req: RequestState, now: float) -> tuple[InstanceState | None, str]:
        """The instance to trickle ``req`` on, or None, and why: "prefix" where
        its cached prefix decided, else "trickle"."""
        held = self.cached_by_instance(req) if req.blocks else {}
        return self._best_trickle(req, now, (self._instances[iid] for iid in self._order), held)

    def detour(self, req: RequestState, now: float, held: dict[str, int] | None = None) -> InstanceState | None:
        """A holder of ``req``'s prefix it may trickle on (never a window there:
        trickling elsewhere comes first)."""
        if held is None:
            held = self.cached_by_instance(req) if req.blocks else {}
        best, _ = self._best_trickle(req, now, self.warm_holders(req, held), held)
        req.trickled = best is not None
        return best

    def choose_without_affinity(self, req: RequestState, now: float) -> tuple[InstanceState | None, Constraint | str]:
        return self.choose(req, now)  # the trickle rule weighs every instance at once: nothing to leave out

    def _best_trickle(self, req: RequestState, now: float, candidates, held: dict[str, int]) -> tuple[InstanceState | None, str]:
        floor, ttft_slo = self.affinity_min_tokens, self.checker.slo.ttft
        best, best_key = None, None
        for inst in candidates:
            cached = held.get(inst.id, 0)
            if not self._can_hold(inst, req) or not self.decoders_pay(inst, req, now, cached):
                continue
            ttft = self.trickle_ttft(inst, req, cached)
            if ttft > ttft_slo:
                continue
            key = (-cached if cached >= floor else 0, ttft, len(inst.requests))
            if best_key is None or key < best_key:
                best, best_key = inst, key
        return best, ("prefix" if best_key is not None and best_key[0] else "trickle")

    # choose and admits decide trickle or window (``req.trickled``); the placement
    # that follows either (TrackingRouter.try_route) reads it in on_placing.
    def choose(self, req: RequestState, now: float) -> tuple[InstanceState | None, Constraint | str]:
        inst, reason = self._trickle_choice(req, now)
        req.trickled = inst is not None
        if inst is not None:
            return inst, reason
        return super().choose(req, now)

    def admits(self, inst: InstanceState, req: RequestState, now: float) -> Constraint | None:
        req.trickled = self._trickles(inst, req, now)
        return None if req.trickled else super().admits(inst, req, now)

    def on_placing(self, inst: InstanceState, req: RequestState, now: float) -> tuple[list[Action], bool]:
        if req.trickled:
            req.cached_tokens = inst.cached_tokens(req)
            req.predicted_prefill = self.checker.predicted_prefill(inst, req, req.cached_tokens)
            if inst.prefix is not None and req.blocks:
                inst.prefix.insert(req.blocks)  # the engine will hold them once it prefilled
            return [], False
        return super().on_placing(inst, req, now)

