"""The coordinator's timeline: an ``Observer`` that records what the engines
report (their step records), what the policy does (routing, phase commands)
and how requests end, into a ``TimelineRecorder``; ``sample`` adds the fleet's
state (queue, in flight, KV use, draining/failed, layout, scaling events).

Rule: wall-clock times (``time.time()``), the engines' step records' clock.
Recording costs a few appends per step and per request, and a status read at
most once a second while engines are busy (their step reports drive it: no
task, nothing done while all is idle); reading is the dashboard's business
(``ecoserve.server.dashboard``), which samples too while a page is open.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ecoserve.live.coordinator import Coordinator
from ecoserve.live.observer import Observer
from ecoserve.protocol import StepRecord
from ecoserve.timeline.document import Event, Macro, Timeline
from ecoserve.timeline.recorder import TimelineRecorder

SAMPLE_S = 1.0  # the dashboard is at most a second behind
NOT_SERVED = ("client_error", "overloaded")  # refused at the door (4xx, 429): no latency to draw


class LiveTimeline(Observer):
    def __init__(self, coord: Coordinator, *, clock: Callable[[], float] = time.time, **recorder: Any) -> None:
        self.coord = coord
        self.clock = clock
        self.recorder = TimelineRecorder(slo_ttft=coord.slo.ttft, slo_tpot=coord.slo.tpot, **recorder)
        self.last_sample = -1.0
        self._phase_seen: dict[str, str] = {}

    # ---- Observer: what happened (and, at most once a second, the fleet's state) ------
    def on_steps(self, instance_id: str, steps: list[StepRecord]) -> None:
        self.recorder.steps(instance_id, ((s.start, s.start + s.duration_s, s.kind, s.prefill_tokens) for s in steps))
        self.sample_if_stale()

    def on_routed(self, instance_id: str, reason: str) -> None:
        self.recorder.routed(instance_id, self.clock())
        self.sample_if_stale()

    def on_queued(self, reason: str) -> None:
        self.sample_if_stale()  # requests piling up on stalled engines: no steps, no finishes, still seen

    def on_phase(self, instance_id: str, phase: str) -> None:
        self._phase_seen[instance_id] = phase
        self.recorder.phase(instance_id, phase, self.clock())

    def on_done(self, outcome: str, ttft: float | None, tpot: float | None) -> None:
        if outcome not in NOT_SERVED:
            self.recorder.finished(self.clock(), ttft, tpot)
        self.sample_if_stale()

    # ---- the fleet's state ------------------------------------------------------------
    def sample(self) -> None:
        """Queue (pending: not yet routed; in flight: routed, not finished), KV use
        and state per engine, the layout, scaling events; and any engine's phase
        the policy holds that no command told us of (the one it was attached in)."""
        now = self.clock()
        st = self.coord.status()
        engines: dict[str, tuple[float, str]] = {}
        for inst in st["instances"]:
            eng = inst.get("engine")
            if eng and eng.get("kv_blocks_total"):
                used = 1.0 - eng["kv_blocks_free"] / eng["kv_blocks_total"]
            else:  # no report yet: what the policy reserved
                used = inst["kv_reserved_tokens"] / inst["kv_capacity_tokens"] if inst["kv_capacity_tokens"] else 0.0
            state = "failed" if not inst["healthy"] else "draining" if inst["draining"] else "serving"
            engines[inst["id"]] = (round(min(max(used, 0.0), 1.0), 4), state)
            phase = inst["phase"]
            if phase is not None and self._phase_seen.get(inst["id"]) != phase:
                self.on_phase(inst["id"], phase)
        macros = [Macro(m["name"], list(m["instances"])) for m in st["layout"]]
        events = [Event(e["time"], e["event"], e.get("instance"), e.get("detail")) for e in st["events"]]
        pending = st["pending"]
        self.recorder.sample(now, pending, max(st["in_flight"] - pending, 0), engines, macros, events)
        self.last_sample = now

    def sample_if_stale(self) -> None:
        if self.clock() - self.last_sample >= SAMPLE_S:
            self.sample()

    # ---- reading it (the dashboard's routes) ------------------------------------------
    @property
    def seq(self) -> int:
        return self.recorder.seq

    def document(self, *, after: int = 0, since: float | None = None) -> Timeline:
        self.sample_if_stale()
        return self.recorder.document(self.clock(), after=after, since=since,
                                      title=f"{self.coord.served_model} · {self.coord.policy}")  # fmt: skip
