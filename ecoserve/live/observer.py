"""What the coordinator tells those who watch it: the ``Observer`` hooks.

Rule: hooks are called on the coordinator's event loop, in the order things
happen, and must return at once (no I/O, no waiting): the server's Prometheus
metrics, its 429 advice and the dashboard's timeline implement them, and a
Python-API user may pass one. ``Observers`` fans one call out to several, and
keeps a failing one from breaking the coordinator (the coordinator always
holds an ``Observers``).
"""

from __future__ import annotations

import logging

from ecoserve.protocol import StepRecord

log = logging.getLogger("ecoserve.coordinator")


class Observer:
    """Hooks for metrics (the server's Prometheus exporter implements them)."""

    def on_routed(self, instance_id: str, reason: str) -> None: ...

    def on_queued(self, reason: str) -> None: ...

    def on_done(self, outcome: str, ttft: float | None, tpot: float | None) -> None: ...

    def on_steps(self, instance_id: str, steps: list[StepRecord]) -> None:
        """New step records an engine reported (each once, in step order)."""

    def on_phase(self, instance_id: str, phase: str) -> None:
        """The policy commanded a phase for the engine."""


class Observers(Observer):
    """Several observers as one (a user's, the server's metrics, the timeline).

    A hook that raises is logged (its first failure with the traceback, then
    every ``LOG_EVERY``-th) and the others still hear the call: a watcher's bug
    must never stop a phase loop, a status stream or a request's ending."""

    LOG_EVERY = 1000

    def __init__(self, *observers: Observer) -> None:
        self.observers: list[Observer] = []
        for o in observers:
            if isinstance(o, Observers):
                self.observers.extend(o.observers)
            elif type(o) is not Observer:  # the base class hears nothing
                self.observers.append(o)
        self.failures: dict[tuple[str, str], int] = {}

    def _each(self, hook: str, *args: object) -> None:
        for o in self.observers:
            try:
                getattr(o, hook)(*args)
            except Exception:
                key = (type(o).__name__, hook)
                n = self.failures[key] = self.failures.get(key, 0) + 1
                if n == 1 or n % self.LOG_EVERY == 0:
                    log.exception("observer %s.%s failed (%d times so far)", key[0], hook, n)

    def on_routed(self, instance_id: str, reason: str) -> None:
        self._each("on_routed", instance_id, reason)

    def on_queued(self, reason: str) -> None:
        self._each("on_queued", reason)

    def on_done(self, outcome: str, ttft: float | None, tpot: float | None) -> None:
        self._each("on_done", outcome, ttft, tpot)

    def on_steps(self, instance_id: str, steps: list[StepRecord]) -> None:
        self._each("on_steps", instance_id, steps)

    def on_phase(self, instance_id: str, phase: str) -> None:
        self._each("on_phase", instance_id, phase)
