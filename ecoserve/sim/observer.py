"""Watching a simulation: the observer hook.

An observer sees what the simulator does as it happens, without changing it:
the steps each engine ran, the requests each engine took, phase switches, the
router's decisions and (EcoServe) its constraint checks, first tokens and
finishes. Analysis scripts (``bench/analysis``) and timeline views use it in
place of wrapping the simulator's methods.

Register observers on the simulator before ``run``::

    cluster = build(cfg)
    cluster.sim.observers.append(obs)
    states = cluster.sim.run(requests)

(``runner.simulate(..., setup=...)`` and ``sweep_policy(..., setup=...)`` hand
over each cluster they build, for the same purpose.) Subclass ``SimObserver``
and override what you need; every method is a no-op there. With no observer
registered, each hook costs one test of an empty list.

Observers must not modify what they are given: the requests, engines' lists
and policy states are the simulator's own.

Times are simulated seconds. Calls come in simulation order, except that a
step is reported when it ends (``on_step``), after the events that happened
while it ran; it carries its start time. Steps still running when a run stops
(drain limit, early stop) are not reported, as ``EngineStats.busy_s`` does not
count them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ecoserve.policy import Action, CheckResult, InstanceState, RequestState
    from ecoserve.policy.phase import Phase
    from ecoserve.sim.engine import SimRequest


@dataclass(frozen=True, slots=True)
class StepRecord:
    """What one engine step, or one fast-forwarded stretch of decode steps, did.

    A stretch of ``steps`` decode steps (same batch, no prefill) is one record;
    a step that prefills is always a record of its own (``steps == 1``). Every
    request in ``decode`` produced ``steps`` tokens; a prefill chunk that
    completes its prompt produces that request's next token (its first, unless
    it was preempted)."""

    engine: str  # engine id
    start: float
    end: float
    steps: int
    prefill: tuple[tuple[str, int], ...]  # (request id, prompt tokens prefilled in this step)
    decode: tuple[str, ...]  # ids of the requests decoded

    @property
    def kind(self) -> str:
        """``prefill``, ``decode`` or ``mixed`` (Sarathi's hybrid steps)."""
        if not self.prefill:
            return "decode"
        return "mixed" if self.decode else "prefill"

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def prefill_tokens(self) -> int:
        return sum(n for _, n in self.prefill)


class SimObserver:
    """Base observer: every hook does nothing. Override the ones you need."""

    def on_step(self, step: StepRecord) -> None:
        """An engine step (or decode stretch) ended."""

    def on_enqueue(self, engine_id: str, req: SimRequest, now: float) -> None:
        """A request joined an engine: queued to prefill there (routed, or placed
        on a prefill pool), or received with its KV by a decode-pool engine."""

    def on_phase(self, engine_id: str, old: Phase, new: Phase, now: float) -> None:
        """A phased engine switched phase (EcoServe's ``SetPhase``)."""

    def on_action(self, action: Action, now: float) -> None:
        """The router returned ``action`` (``Routed``, ``Queued`` with the
        constraint that failed, ``Rejected``, ``SetPhase``, ``Drained``); called
        just before the driver carries it out. Router-driven policies only."""

    def on_check(self, inst: InstanceState, req: RequestState, result: CheckResult, now: float) -> None:
        """EcoServe's router ran its constraint check for ``req`` on ``inst``
        (the policy's view, before any placement): every check, including those
        of routing walks and queue re-offers. A passing check places the request
        there."""

    def on_first_token(self, req: SimRequest, now: float) -> None:
        """A request got its first token (its prefill ended)."""

    def on_finish(self, req: SimRequest, now: float) -> None:
        """A request produced its last token."""
