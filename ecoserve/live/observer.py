"""What the coordinator tells those who watch it: the ``Observer`` hooks.

Rule: hooks are called on the coordinator's event loop, in the order things
happen, and must return at once (no I/O, no waiting): the server's Prometheus
metrics, its 429 advice and the dashboard's timeline implement them, and a
Python-API user may pass one. ``Observers`` fans one call out to several.
"""

from __future__ import annotations

from ecoserve.protocol import StepRecord


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
    """Several observers as one (a user's and the server's metrics)."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = list(observers)

    def on_routed(self, instance_id: str, reason: str) -> None:
        for o in self.observers:
            o.on_routed(instance_id, reason)

    def on_queued(self, reason: str) -> None:
        for o in self.observers:
            o.on_queued(reason)

    def on_done(self, outcome: str, ttft: float | None, tpot: float | None) -> None:
        for o in self.observers:
            o.on_done(outcome, ttft, tpot)

    def on_steps(self, instance_id: str, steps: list[StepRecord]) -> None:
        for o in self.observers:
            o.on_steps(instance_id, steps)

    def on_phase(self, instance_id: str, phase: str) -> None:
        for o in self.observers:
            o.on_phase(instance_id, phase)
