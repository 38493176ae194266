"""EcoServe's macro-instance scheduler (Algorithm 1) and its phase windows.

Routing walks the instances cyclically, starting with the one that took the
previous request, and places the request on the first that passes the
constraint check. Consecutive requests therefore pile onto one instance until
its TTFT budget or its decoders' slack runs out; routing then moves on while
that instance goes back to decoding. That is rolling activation.

Prefixes: a request whose prompt an instance already holds (its prefix cache,
``InstanceState.prefix``) tries that instance first, inside the same check (a
detour: the cursor stays); if it does not fit, the cyclic walk follows, as if
nothing were cached. Under ``OverallScheduler`` the detours of every macro
instance come first (``try_detour``), then its cyclic walk over the macro
instances (``choose_without_affinity``), so prefix routing never moves the
rolling-activation cursors.

Lost requests (``lost_yield``): a queued request whose first token would come
too late even if it were prefilled now, alone, has lost its TTFT; the queue is
re-offered with the others first (each part in arrival order), so past the knee
one lost request does not hold every later one past its TTFT too. It is still
served, once nothing that can be saved waits, or once it has waited
``lost_yield_max_wait`` seconds past its TTFT SLO (None: no bound): then it
takes its place in arrival order again, so sustained overload cannot starve it
without limit. The same rule as the plugin's ``ECOSERVE_LOST_YIELD``, one level up.

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

    def __init__(self, checker: ConstraintChecker, name: str = "m0", *, affinity_min_tokens: int = 512,
                 lost_yield: bool = False, lost_yield_max_wait: float | None = None) -> None:  # fmt: skip
        super().__init__()
        self.checker = checker
        self.name = name
        self.lost_yield = lost_yield
        self.lost_yield_max_wait = lost_yield_max_wait
        self._lost_ids: set[str] = set()  # queued requests found lost (only those still queued are kept)
        self._cursor = 0  # index in _order of the instance that took the previous request
        # A cached prefix at least this long makes its holder tried first (one
        # 512-token block: what vLLM and Mooncake reuse at the least).
        self.affinity_min_tokens = affinity_min_tokens

    def kv_need(self, req: RequestState, inst: InstanceState | None = None) -> int:
        return self.checker.kv_need(req, inst)

    def admits(self, inst: InstanceState, req: RequestState, now: float) -> Constraint | None:
        return self._fits(inst, req, now)

    def _fits(self, inst: InstanceState, req: RequestState, now: float) -> Constraint | None:
        """Algorithm 1's constraint check (a window on ``inst``), or what fails it."""
        if not inst.accepting:
            return Constraint.NO_INSTANCE
        return self.checker.checked(inst, req, now).failed

    def took(self, inst: InstanceState) -> None:
        self._cursor = self._order.index(inst.id)

    def choose(self, req: RequestState, now: float) -> tuple[InstanceState | None, Constraint | str]:
        held = self.cached_by_instance(req) if req.blocks else {}
        warm = self.warm_holders(req, held)
        first_failure: Constraint | None = None
        for inst in warm:
            failed = self._fits(inst, req, now)
            if failed is None:
                return inst, "prefix"
            first_failure = first_failure or failed
        inst, why = self._walk(req, now, skip={i.id for i in warm})
        return inst, (first_failure or why) if inst is None else why

    def choose_without_affinity(self, req: RequestState, now: float) -> tuple[InstanceState | None, Constraint | str]:
        return self._walk(req, now)

    def _walk(self, req: RequestState, now: float, skip: set[str] = frozenset()) -> tuple[InstanceState | None, Constraint | str]:
        """Rolling activation: the first instance from the cursor on that passes the check."""
        order, insts = self._order, self._instances
        n = len(order)
        first_failure: Constraint | None = None
        for k in range(n):
            idx = (self._cursor + k) % n
            inst = insts[order[idx]]
            if not inst.accepting or inst.id in skip:
                continue
            failed = self.checker.checked(inst, req, now).failed
            if failed is None:
                self._cursor = idx
                return inst, "fits"
            first_failure = first_failure or failed
        return None, first_failure or Constraint.NO_INSTANCE

    def detour(self, req: RequestState, now: float, held: dict[str, int] | None = None) -> InstanceState | None:
        """The holder of ``req``'s prefix that takes it (``warm_holders`` order), or
        None. ``held``: ``cached_by_instance(req)``, when the caller has it."""
        if held is None:
            held = self.cached_by_instance(req)
        return next((i for i in self.warm_holders(req, held) if self._fits(i, req, now) is None), None)

    def try_detour(self, req: RequestState, now: float, held: dict[str, int] | None = None) -> list[Action] | None:
        """Route ``req`` to a holder of its prefix if one takes it (``detour``), leaving
        the cursor where it is; None: none does."""
        inst = self.detour(req, now, held)
        return None if inst is None else self.place_on(inst, req, now, "prefix")

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
            if (prefix := inst.prefix) is not None:
                return prefix.directory
        return None

    def best_cached_tokens(self, req: RequestState) -> int:
        """The longest prefix of ``req`` any accepting instance here holds (tokens)."""
        return max(self.cached_by_instance(req).values(), default=0)

    def warm_holders(self, req: RequestState, held: dict[str, int] | None = None) -> list[InstanceState]:
        """Prefix affinity inside the constraint check: the accepting instances
        holding at least ``affinity_min_tokens`` of the prompt (``held``:
        ``cached_by_instance``), longest first (ties: the cyclic order). Each
        still has to pass the check, so a hot prefix spills to the next instance
        once its holder would miss an SLO, rather than pinning its traffic there."""
        if not req.blocks:
            return []
        if held is None:
            held = self.cached_by_instance(req)
        floor = self.affinity_min_tokens
        warm = [iid for iid, t in held.items() if t >= floor]
        if len(warm) > 1:
            order, n, cur = self._order, len(self._order), self._cursor
            warm.sort(key=lambda iid: (-held[iid], (order.index(iid) - cur) % n))
        return [self._instances[iid] for iid in warm]

    def lost(self, req: RequestState, now: float) -> bool:
        """Whether ``req``'s TTFT is lost: past due even if prefilled now, alone.
        Lost stays lost (time only grows), so a verdict is kept."""
        if req.id in self._lost_ids:
            return True
        if now - req.arrival + self.checker.predictor.predict(req.prompt_tokens) > self.checker.slo.ttft:
            self._lost_ids.add(req.id)
            return True
        return False

    def yields(self, req: RequestState, now: float) -> bool:
        """Whether ``req`` waits behind the savable requests: lost, and not yet
        ``lost_yield_max_wait`` past its TTFT SLO."""
        if not self.lost(req, now):
            return False
        bound = self.lost_yield_max_wait
        return bound is None or now - req.arrival <= self.checker.slo.ttft + bound

    def reoffer(self, now: float, only: InstanceState | None = None) -> list[Action]:
        pending = self._pending
        if self.lost_yield and pending and self.yields(pending[0], now):
            yielding = [r for r in pending if self.yields(r, now)]
            self._lost_ids = {r.id for r in pending if r.id in self._lost_ids}  # only the queued are kept
            if len(yielding) < len(pending):  # someone can still be saved (or waited too long): they go first
                keep = set(map(id, yielding))
                self._pending = type(pending)([r for r in pending if id(r) not in keep] + yielding)
        return super().reoffer(now, only)

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
