"""Baseline: round-robin over healthy instances, no constraint check (each
engine queues internally, as stock vLLM behind a plain load balancer)."""

from __future__ import annotations

from ecoserve.policy.actions import Constraint
from ecoserve.policy.instance import InstanceState
from ecoserve.policy.phase import Phase
from ecoserve.policy.request import RequestState
from ecoserve.policy.tracking import TrackingRouter


class RoundRobinRouter(TrackingRouter):
    instance_phase = Phase.MIXED  # engines run stock vLLM scheduling
    def __init__(self) -> None:
        super().__init__()
        self._next = 0

    def choose(self, req: RequestState, now: float) -> tuple[InstanceState | None, Constraint | str]:
        n = len(self._order)
        for k in range(n):
            idx = (self._next + k) % n
            inst = self._instances[self._order[idx]]
            if inst.accepting:
                self._next = (idx + 1) % n
                return inst, "round_robin"
        return None, Constraint.NO_INSTANCE
