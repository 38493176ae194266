"""Baseline: vLLM's own data-parallel balancing (vllm/v1/engine/core_client.py,
DPLBAsyncMPClient). Score = waiting + running, plus a penalty on waiting
requests that ramps from 0 at 50% KV usage to 3x at 100%, because a queue on a
KV-bound engine drains slowly. The scan start rotates so ties spread evenly.
Counts come from the router's own exact in-flight bookkeeping."""

from __future__ import annotations

from ecoserve.policy.actions import Constraint
from ecoserve.policy.instance import InstanceState
from ecoserve.policy.phase import Phase
from ecoserve.policy.request import RequestState
from ecoserve.policy.tracking import TrackingRouter


def load_score(inst: InstanceState) -> float:
    waiting = inst.num_waiting
    score = float(len(inst.requests))
    if waiting:
        usage = min(1.0, inst.kv_used / inst.kv_capacity_tokens)
        score += waiting * 6.0 * max(0.0, usage - 0.5)
    return score


class LeastLoadedRouter(TrackingRouter):
    instance_phase = Phase.MIXED  # engines run stock vLLM scheduling
    def __init__(self) -> None:
        super().__init__()
        self._start = 0

    def rank(self, inst: InstanceState, req: RequestState) -> tuple[float, ...]:
        """Lower is better; the first lowest in the rotating scan wins."""
        return (load_score(inst),)

    def reason(self, rank: tuple[float, ...]) -> str:
        return "least_loaded"

    def choose(self, req: RequestState, now: float) -> tuple[InstanceState | None, Constraint | str]:
        n = len(self._order)
        best: InstanceState | None = None
        best_rank: tuple[float, ...] = ()
        for k in range(n):
            inst = self._instances[self._order[(self._start + k) % n]]
            if not inst.accepting:
                continue
            rank = self.rank(inst, req)
            if best is None or rank < best_rank:
                best, best_rank = inst, rank
        if best is None:
            return None, Constraint.NO_INSTANCE
        self._start = (self._start + 1) % n
        return best, self.reason(best_rank)
