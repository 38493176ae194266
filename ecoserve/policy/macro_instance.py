"""EcoServe's macro-instance scheduler (Algorithm 1) and its phase windows.

Routing walks the instances cyclically, starting with the one that took the
previous request, and places the request on the first that passes the
constraint check. Consecutive requests therefore pile onto one instance until
its TTFT budget or its decoders' slack runs out; routing then moves on while
that instance goes back to decoding. That is rolling activation.

Prefixes: a request whose prompt an instance already holds (its prefix cache,
``InstanceState.prefix``) tries that instance first, inside the same check; the
cyclic walk follows if it does not fit.

Phases: routing a request to an instance that is not in a prefill window opens
one (``SetPhase(PREFILL)``); once every request of the window has its first
token the window closes (``SetPhase(DECODE)``) and its requests join the
decoders whose slack the next window must respect.
"""

from __future__ import annotations

from ecoserve.policy.actions import Action, Constraint, SetPhase
from ecoserve.policy.constraints import ConstraintChecker
from ecoserve.policy.instance import InstanceState
from ecoserve.policy.phase import Phase
from ecoserve.policy.prefix_index import PrefixDirectory
from ecoserve.policy.request import RequestState
from ecoserve.policy.tracking import TrackingRouter


class MacroInstance(TrackingRouter):
    resting_phase = Phase.DECODE  # an instance's phase outside its prefill windows

    def __init__(self, checker: ConstraintChecker, name: str = "m0", *, affinity_min_tokens: int = 512) -> None:
        super().__init__()
        self.checker = checker
        self.name = name
        self._cursor = 0  # index in _order of the instance that took the previous request
        # A cached prefix at least this long makes its holder tried first (one
        # 512-token block: what vLLM and Mooncake reuse at the least).
        self.affinity_min_tokens = affinity_min_tokens

    def kv_need(self, req: RequestState, inst: InstanceState | None = None) -> int:
        return self.checker.kv_need(req, inst)

    def admits(self, inst: InstanceState, req: RequestState, now: float) -> Constraint | None:
        if not inst.accepting:
            return Constraint.NO_INSTANCE
        return self.checker.checked(inst, req, now).failed

    def took(self, inst: InstanceState) -> None:
        self._cursor = self._order.index(inst.id)

    def choose(self, req: RequestState, now: float) -> tuple[InstanceState | None, Constraint | str]:
        order = self._order
        n = len(order)
        first_failure: Constraint | None = None
        walk = [(self._cursor + k) % n for k in range(n)]
        held = self.cached_by_instance(req) if req.blocks else {}
        if held:
            walk = self._by_prefix(walk, held)
        for idx in walk:
            inst = self._instances[order[idx]]
            if not inst.accepting:
                continue
            failed = self.checker.checked(inst, req, now).failed
            if failed is None:
                if held.get(inst.id, 0) >= self.affinity_min_tokens:
                    return inst, "prefix"  # an affinity detour: rolling activation's cursor stays
                self._cursor = idx
                return inst, "fits"
            first_failure = first_failure or failed
        return None, first_failure or Constraint.NO_INSTANCE

    def cached_by_instance(self, req: RequestState) -> dict[str, int]:
        """Instance id -> prompt tokens of ``req`` it is thought to hold, for the
        accepting instances holding any; through their shared directory when they
        have one (``PrefixDirectory``: one walk of the prompt for every macro
        instance), else by asking each."""
        insts = self._instances
        directory = self.prefix_directory()
        if directory is None:
            return {i.id: c for i in insts.values() if i.accepting and (c := i.cached_tokens(req))}
        out = {}
        for iid, n in directory.matches(req.blocks).items():
            inst = insts.get(iid)
            if inst is not None and inst.accepting and inst.prefix is not None:
                out[iid] = inst.prefix.tokens_of(n, req.prompt_tokens)
        return out

    def prefix_directory(self) -> PrefixDirectory | None:
        """The ``PrefixDirectory`` its instances' prefix indexes share, if any."""
        for inst in self._instances.values():
            if inst.prefix is not None:
                return inst.prefix.directory
        return None

    def best_cached_tokens(self, req: RequestState) -> int:
        """The longest prefix of ``req`` any accepting instance here holds (tokens)."""
        return max(self.cached_by_instance(req).values(), default=0)

    def _by_prefix(self, walk: list[int], held: dict[str, int]) -> list[int]:
        """Prefix affinity inside the constraint check: instances holding at least
        ``affinity_min_tokens`` of the prompt (``held``: ``cached_by_instance``)
        first, longest first (ties: the cyclic order); then the cyclic walk. Each
        still has to pass the check, so a hot prefix spills to the next instance
        once its holder would miss an SLO, rather than pinning its traffic there."""
        cached = {idx: held.get(self._order[idx], 0) for idx in walk}
        warm = [idx for idx in walk if cached[idx] >= self.affinity_min_tokens]
        if not warm:
            return walk
        warm.sort(key=lambda idx: -cached[idx])  # stable: ties keep the cyclic order
        first = set(warm)
        return warm + [idx for idx in walk if idx not in first]

    def detach_instance(self, instance_id: str) -> InstanceState:
        idx = self._order.index(instance_id)
        inst = super().detach_instance(instance_id)
        if idx < self._cursor:
            self._cursor -= 1
        if self._cursor >= len(self._order):
            self._cursor = 0
        return inst

    # -- phase windows ---------------------------------------------------------------

    def on_placing(self, inst: InstanceState, req: RequestState, now: float) -> tuple[list[Action], bool]:
        req.cached_tokens = inst.cached_tokens(req)
        req.predicted_prefill = self.checker.predicted_prefill(inst, req, req.cached_tokens)
        if inst.prefix is not None and req.blocks:
            inst.prefix.insert(req.blocks)  # the engine will hold them once it prefilled
        if inst.window_start is not None:
            return [], True
        inst.open_window(now)
        return [SetPhase(inst.id, Phase.PREFILL)], True

    def on_started(self, inst: InstanceState, req: RequestState, now: float) -> list[Action]:
        return self._maybe_close_window(inst, now)

    def on_left(self, inst: InstanceState, req: RequestState, now: float) -> list[Action]:
        return self._maybe_close_window(inst, now)

    def _maybe_close_window(self, inst: InstanceState, now: float) -> list[Action]:
        if inst.window_start is None or inst.window_unstarted:
            return []
        inst.close_window(now, self.resting_phase)
        return [SetPhase(inst.id, self.resting_phase)]
