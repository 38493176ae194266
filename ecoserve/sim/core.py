"""The discrete-event loop and the drivers that connect engines to routing.

``Simulator`` owns the clock and a heap of events (arrivals, step ends, KV
transfers, router ticks); ties are broken by insertion order, so a run is a
pure function of its inputs. A *driver* decides where requests go:

- ``RouterDriver`` drives a policy-core ``Router`` unchanged (EcoServe's
  ``OverallScheduler`` or the baselines' ``RoundRobinRouter`` /
  ``LeastLoadedRouter``), exactly as the live coordinator does: ``submit`` on
  arrival, ``on_progress`` for every engine step's tokens (a request's first
  report is its first token), ``on_finish``, and ``tick`` every ``tick_s`` while requests
  are pending; it carries out ``Routed`` (the engine queues the request) and
  ``SetPhase`` (the engine switches phase). No routing decision is made here.
- ``FuDGDriver`` (``fudg.py``) runs the prefill and decode pools of the fully
  disaggregated baselines.

Token reports and fast-forwarding. While the router has no pending request, a
token report for a request that has already started only adds to counters
(``Router.on_progress``); so the engines may simulate a decode stretch
as one segment, and the driver reports the tokens of every step completed by
``now`` before each routing decision (``flush``), and the rest at the end of
the segment. As soon as a request is pending, every engine falls back to one
step at a time and reports each step as it ends, so the router re-offers its
queue exactly when the live coordinator would. ``fast_forward=False``
simulates every step as its own event (same results, slower).

Observers (``observer.py``): ``Simulator.observers`` lists ``SimObserver``s
that the engines and drivers report to as the run goes; empty, it costs
nothing but the test.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence

from ecoserve.metrics import tpot_of
from ecoserve.policy import Drained, Queued, Rejected, RequestState, Routed, SetPhase
from ecoserve.policy.constraints import ConstraintChecker
from ecoserve.policy.predictor import PrefillTimePredictor
from ecoserve.policy.router import Router
from ecoserve.sim.engine import SimEngine, SimRequest
from ecoserve.sim.observer import SimObserver
from ecoserve.workload.workload import Request

_STEP, _CALL, _ARRIVAL = 0, 1, 2


class Simulator:
    def __init__(self, *, fast_forward: bool = True, max_ff_steps: int = 2048, drain_limit_s: float = 1800.0) -> None:
        self.heap: list = []
        self._seq = 0
        self.now = 0.0
        self.fast_forward = fast_forward
        self.max_ff_steps = max_ff_steps
        self.drain_limit_s = drain_limit_s
        self.driver = None
        self.engines: list[SimEngine] = []
        self.events = 0
        # Early stop (goodput search): once more than ``fail_budget`` requests
        # have missed an SLO, attainment is known to be below the level asked
        # about and the run ends; unfinished requests then count as misses.
        self.fail_budget: int | None = None
        self.slo_ttft = self.slo_tpot = float("inf")
        self.failures = 0
        self.stopped_early = False
        self.arrivals_left = 0  # arrivals of the current run not yet delivered
        # Progress of the current run (``run``'s ``on_progress``): requests done, next one reported.
        self._progress: Callable[[int, int | None, str], None] | None = None
        self._done, self._report_at, self._report_every, self._total = 0, 0, 1, 0
        # Watchers of the run (observer.py); append before ``run``.
        self.observers: list[SimObserver] = []

    def note_first_token(self, r: SimRequest, t: float) -> None:
        for o in self.observers:
            o.on_first_token(r, t)
        if t - r.arrival > self.slo_ttft:
            self._fail()

    def note_finish(self, r: SimRequest, t: float) -> None:
        for o in self.observers:
            o.on_finish(r, t)
        self._count_done(t)
        tpot = tpot_of(r.first_token, t, r.output)
        if r.first_token - r.arrival <= self.slo_ttft and tpot is not None and tpot > self.slo_tpot:
            self._fail()

    def note_rejected(self, r: SimRequest) -> None:
        self._count_done(self.now)
        self._fail()

    def _count_done(self, t: float) -> None:
        self._done += 1
        if self._progress is not None and self._done >= self._report_at:
            self._report_at += self._report_every
            self._progress(self._done, self._total, f"{t:.0f} s simulated")

    def _fail(self) -> None:
        self.failures += 1
        if self.fail_budget is not None and self.failures > self.fail_budget:
            self.stopped_early = True

    def schedule_step_end(self, engine: SimEngine, t: float, version: int) -> None:
        self._seq += 1
        heapq.heappush(self.heap, (t, self._seq, _STEP, engine, version))

    def at(self, t: float, fn: Callable[[float, object], None], arg: object = None) -> None:
        self._seq += 1
        heapq.heappush(self.heap, (t, self._seq, _CALL, fn, arg))

    def run(self, requests: Sequence[Request],
            on_progress: Callable[[int, int | None, str], None] | None = None) -> list[SimRequest]:  # fmt: skip
        """Run ``requests`` (sorted by arrival) to completion; returns their states.
        ``on_progress(done, total, detail)`` hears of every 1% of the requests
        done (finished or rejected), and of the end."""
        if self.driver is None:
            raise RuntimeError("no driver attached")
        reqs = [SimRequest(r.id, r.arrival, r.prompt_tokens, r.output_tokens, r.max_output) for r in requests]
        for sr, r in zip(reqs, requests):
            sr.blocks = r.blocks
        if any(b.arrival < a.arrival for a, b in zip(reqs, reqs[1:])):
            raise ValueError("requests must be sorted by arrival time")
        if self.observers and isinstance(self.driver, RouterDriver):
            self.driver.tap_checks()
        heap = self.heap
        push, pop = heapq.heappush, heapq.heappop
        n = len(reqs)
        self.arrivals_left = n
        self._progress, self._done, self._total = on_progress, 0, n
        self._report_every = self._report_at = max(1, n // 100)
        if n:
            self._seq += 1
            push(heap, (reqs[0].arrival, self._seq, _ARRIVAL, 0, None))
        stop_at = (reqs[-1].arrival if n else 0.0) + self.drain_limit_s
        driver = self.driver
        events = 0
        while heap:
            t, _, kind, a, b = pop(heap)
            if t > stop_at or self.stopped_early:
                break
            self.now = t
            events += 1
            if kind == _STEP:
                a.step_end(t, b)
            elif kind == _ARRIVAL:
                self.arrivals_left -= 1
                driver.on_arrival(reqs[a], t)
                if a + 1 < n:
                    self._seq += 1
                    push(heap, (reqs[a + 1].arrival, self._seq, _ARRIVAL, a + 1, None))
            else:
                a(t, b)
        self.events += events
        if on_progress is not None:
            self._progress = None
            on_progress(self._done, n, f"{self.now:.0f} s simulated")
        return reqs


class RouterDriver:
    """Connects a policy ``Router`` to simulated engines (see the module docstring)."""

    def __init__(self, sim: Simulator, router: Router, engines: Sequence[SimEngine], *, tick_s: float = 0.01,
                 predictor: PrefillTimePredictor | None = None) -> None:  # fmt: skip
        self.sim = sim
        self.router = router
        self.engines: list[SimEngine] = []
        self.by_id: dict[str, SimEngine] = {}
        for e in engines:
            self.add_engine(e)
        self.tick_s = tick_s
        # The router's predictor, corrected online from pure prefill steps as
        # the live coordinator corrects it from the engines' step records.
        self.predictor = predictor
        self.fine_grained = False
        self.reqs: dict[str, SimRequest] = {}
        self._tick_armed = False
        self._has_pending = router.has_pending
        self.counts = {"queued": 0, "rejected": 0, "routed": 0, "ticks": 0, "set_phase": 0}
        self.done = 0  # requests finished or rejected
        # Hooks for an autoscaler (``autoscale.py``): first tokens feed its TTFT
        # window; ``Drained`` tells it a removed instance is empty.
        self.on_first_token: Callable[[SimRequest, float], None] | None = None
        self.on_drained: Callable[[str, float], None] | None = None

    def add_engine(self, engine: SimEngine) -> None:
        """An engine joins (the router learns of it separately). A phased
        engine starts in the phase the router expects of its instances, as a
        live engine is commanded into it when attached."""
        if engine.mode == "phased":
            engine.phase = self.router.initial_phase
        self.engines.append(engine)
        self.by_id[engine.id] = engine

    def on_step(self, engine: SimEngine, kind: str, prefill_tokens: int, seconds: float, prompts: int) -> None:
        """An engine step ended (before its tokens are reported)."""
        if self.predictor is not None:
            self.predictor.observe_step(kind, prefill_tokens, seconds, prompts)

    def remove_engine(self, engine_id: str) -> SimEngine:
        """A drained engine leaves; it must hold no request."""
        e = self.by_id.pop(engine_id)
        if e.running or e.waiting or e.partial:
            raise AssertionError(f"{engine_id} drained with requests still on it")
        self.engines.remove(e)
        return e

    def wrap_checker(self, wrap: Callable[[ConstraintChecker], ConstraintChecker]) -> ConstraintChecker | None:
        """Route by ``wrap(checker)`` instead of the router's constraint check
        (what-if experiments). Returns the new checker, or None if the router
        has none (the baselines check nothing)."""
        old = self.router.constraint_checker()
        if old is None:
            return None
        new = wrap(old)
        self.router.use_checker(new)
        return new

    def tap_checks(self) -> None:
        """Report every constraint check to the simulator's observers."""
        checker = self.router.constraint_checker()
        if checker is None:
            return
        observers = self.sim.observers

        def on_check(inst, req, res, now: float) -> None:
            for o in observers:
                o.on_check(inst, req, res, now)

        checker.on_check = on_check

    def unfinished(self) -> int:
        """Requests that arrived and have not finished (or been rejected)."""
        return len(self.reqs) - self.done

    # -- events from the simulator ----------------------------------------------------

    def on_arrival(self, r: SimRequest, now: float) -> None:
        self.reqs[r.id] = r
        self.flush(now)
        rs = RequestState(r.id, r.arrival, r.prompt, r.max_tokens, blocks=r.blocks)  # the client's bound, as live
        self._apply(self.router.submit(rs, now), now)
        self._check_pending(now)

    def on_tokens(self, engine: SimEngine, reqs, count: int, now: float) -> None:
        first = self.on_first_token
        for r in reqs:
            if first is not None and r.reported == 0:
                first(r, now)
            r.reported += count
        actions = self.router.on_progress([(r.id, count) for r in reqs], now)
        if actions:
            self._apply(actions, now)
        if self.fine_grained:
            self._check_pending(now)

    def on_finish(self, engine: SimEngine, r: SimRequest, now: float) -> None:
        self.done += 1
        self._apply(self.router.on_finish(r.id, now), now)
        if self.fine_grained:
            self._check_pending(now)

    def on_prefilled(self, engine, r, now):  # pragma: no cover - only prefill pools call it
        raise AssertionError("router-driven engines have no prefill-only mode")

    def flush(self, now: float) -> None:
        """Report every token produced by ``now`` before a routing decision."""
        for e in self.engines:
            if len(e._ends) > 1:
                e.flush(now)

    def _tick(self, now: float, _arg: object) -> None:
        self._tick_armed = False
        if not self._has_pending():
            return
        self.counts["ticks"] += 1
        self.flush(now)
        self._apply(self.router.tick(now), now)
        self._check_pending(now)

    # -- carrying out the router's actions ------------------------------------------------

    def apply(self, actions, now: float) -> None:
        """Carry out actions that came from outside the event flow (an
        autoscaler's add, remove, split or merge; ``flush`` before asking the
        router for them), then re-check the queue."""
        self._apply(actions, now)
        self._check_pending(now)

    def _apply(self, actions, now: float) -> None:
        touched: list[SimEngine] = []
        observers = self.sim.observers
        for a in actions:
            for o in observers:
                o.on_action(a, now)
            cls = a.__class__
            if cls is Routed:
                e = self.by_id[a.instance_id]
                e.enqueue(self.reqs[a.request_id], now, kick=False)
                touched.append(e)
                self.counts["routed"] += 1
            elif cls is SetPhase:
                e = self.by_id[a.instance_id]
                e.set_phase(a.phase, now, kick=False)
                touched.append(e)
                self.counts["set_phase"] += 1
            elif cls is Queued:
                self.counts["queued"] += 1
            elif cls is Rejected:
                r = self.reqs[a.request_id]
                r.rejected = True
                self.done += 1
                self.counts["rejected"] += 1
                self.sim.note_rejected(r)
            elif cls is Drained:
                if self.on_drained is not None:
                    self.on_drained(a.instance_id, now)
        # Kick after the whole batch: a request and its window's SetPhase(PREFILL)
        # reach the engine together, as one command would.
        for e in touched:
            e.kick(now)

    def _check_pending(self, now: float) -> None:
        if self._has_pending():
            if not self.fine_grained:
                self.fine_grained = True
                for e in self.engines:
                    e.flush(now)
                    e.truncate(now)
            if not self._tick_armed:
                self._tick_armed = True
                self.sim.at(now + self.tick_s, self._tick)
        else:
            self.fine_grained = False


def busy_fraction(engines: Sequence[SimEngine], horizon: float) -> float:
    if horizon <= 0 or not engines:
        return math.nan
    return sum(e.stats.busy_s for e in engines) / (horizon * len(engines))
