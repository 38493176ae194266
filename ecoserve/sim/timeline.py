"""A simulated run's engine timelines, as the dashboard draws them.

``TimelineObserver`` is a ``SimObserver`` (``observer.py``): it merges each
engine's steps into segments (``ecoserve.timeline.document.LaneBuilder``, the
live recorder's rule), marks each request where it was routed (its first
``on_enqueue``: a decode pool receiving KV is not a routing), keeps the phases
EcoServe commanded and each request's TTFT and TPOT, and samples every engine's
KV use on a fixed grid. Queue depth and requests in flight are counted from the
requests' own times when the document is made: arrived and not yet routed is
pending, routed and not finished is in flight, as live. (A request the policy
rejected is never routed; it is not counted as pending: the simulator reports
rejections in the run's stats.)

    obs = TimelineObserver()
    simulate(cfg, requests, rate, setup=obs.attach)
    doc = obs.document(title="ecoserve, 4 req/s")
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from ecoserve.metrics import tpot_of
from ecoserve.sim.observer import SimObserver, StepRecord
from ecoserve.timeline.document import (
    Event,
    LaneBuilder,
    Latency,
    Macro,
    Mark,
    PhaseChange,
    Sample,
    Segment,
    Timeline,
)

if TYPE_CHECKING:
    from ecoserve.policy.phase import Phase
    from ecoserve.sim.cluster import Cluster
    from ecoserve.sim.engine import SimEngine, SimRequest

SAMPLE_S = 0.5  # KV samples in simulated seconds; a long run gets at most MAX_SAMPLES
MAX_SAMPLES = 2000


class TimelineObserver(SimObserver):
    def __init__(self, sample_s: float = SAMPLE_S) -> None:
        if sample_s <= 0:
            raise ValueError("sample_s must be > 0")
        self.sample_s = sample_s
        self.cluster: Cluster | None = None
        self._lanes: dict[str, LaneBuilder] = {}
        self._order: list[str] = []
        self.segments: list[Segment] = []
        self.marks: list[Mark] = []
        self.phases: list[PhaseChange] = []
        self.latencies: list[Latency] = []
        self._kv: list[tuple[float, dict[str, float]]] = []
        self._next_sample = 0.0
        self._arrivals: list[float] = []
        self._routed: dict[str, float] = {}
        self._finished: list[float] = []
        self._phased: set[str] = set()

    def attach(self, cluster: Cluster) -> None:
        """``simulate(..., setup=obs.attach)``: watch this cluster's run."""
        if self.cluster is not None:
            raise RuntimeError("a TimelineObserver watches one run")
        self.cluster = cluster
        cluster.sim.observers.append(self)

    # ---- hooks ----------------------------------------------------------------------
    def on_step(self, step: StepRecord) -> None:
        lane = self._lanes.get(step.engine)
        if lane is None:
            lane = self._lanes[step.engine] = LaneBuilder(step.engine)
            self._order.append(step.engine)
        closed = lane.add(step.start, step.end, step.kind, step.steps, step.prefill_tokens)
        if closed is not None:
            self.segments.append(closed)
        while step.end >= self._next_sample:
            self._sample_kv(self._next_sample)
            self._next_sample += self.sample_s

    def on_enqueue(self, engine_id: str, req: SimRequest, now: float) -> None:
        if req.id in self._routed:
            return
        self._routed[req.id] = now
        self._arrivals.append(req.arrival)
        self.marks.append(Mark(engine_id, now))

    def on_phase(self, engine_id: str, old: Phase, new: Phase, now: float) -> None:
        if engine_id not in self._phased:  # its first switch: the phase it started the run in
            self._phased.add(engine_id)
            self.phases.append(PhaseChange(engine_id, 0.0, old.value))
        self.phases.append(PhaseChange(engine_id, now, new.value))

    def on_finish(self, req: SimRequest, now: float) -> None:
        ttft = None if req.first_token is None else req.first_token - req.arrival
        self.latencies.append(Latency(now, ttft, tpot_of(req.first_token, now, req.output)))
        self._finished.append(now)

    def _sample_kv(self, t: float) -> None:
        engines: list[SimEngine] = self.cluster.engines if self.cluster is not None else []
        self._kv.append((t, {e.id: round(e.kv_used / e.capacity, 4) if e.capacity else 0.0 for e in engines}))

    # ---- the document -----------------------------------------------------------------
    def document(self, *, title: str = "", slo_ttft: float | None = None, slo_tpot: float | None = None,
                 events: list[Event] | None = None) -> Timeline:  # fmt: skip
        """The run as a timeline (call after the run). SLOs default to the cluster's config."""
        cfg = self.cluster.config if self.cluster is not None else None
        segments = self.segments + [lane.open for lane in self._lanes.values() if lane.open is not None]
        end = max([s.end for s in segments] + [m.time for m in self.marks] + [0.0])
        return Timeline(
            source="simulated", title=title, start=0.0, end=end,
            slo_ttft=slo_ttft if slo_ttft is not None else (cfg.slo_ttft if cfg else 0.0),
            slo_tpot=slo_tpot if slo_tpot is not None else (cfg.slo_tpot if cfg else 0.0),
            macros=self._macros(), segments=sorted(segments, key=lambda s: (s.engine, s.start)),
            marks=self.marks, phases=self.phases, latencies=self.latencies, samples=self._samples(end),
            events=events or [],
        )  # fmt: skip

    def _macros(self) -> list[Macro]:
        router = getattr(getattr(self.cluster, "driver", None), "router", None)
        if router is not None and hasattr(router, "group_names"):
            groups = router.layout(include_draining=True)
            return [Macro(n, list(ids)) for n, ids in zip(router.group_names(), groups)]
        engines = self.cluster.engines if self.cluster is not None else []
        ids = [e.id for e in engines] or self._order
        return [Macro("engines", ids)]

    def _samples(self, end: float) -> list[Sample]:
        arrivals = sorted(self._arrivals)
        routed = sorted(self._routed.values())
        finished = sorted(self._finished)
        kv = self._kv
        if len(kv) > MAX_SAMPLES:  # a long run: thin the grid evenly
            kv = kv[:: -(-len(kv) // MAX_SAMPLES)]
        out = []
        for t, per_engine in kv:
            if t > end:
                break
            arrived = bisect.bisect_right(arrivals, t)
            sent = bisect.bisect_right(routed, t)
            done = bisect.bisect_right(finished, t)
            out.append(Sample(t, arrived - sent, sent - done, {e: (v, "serving") for e, v in per_engine.items()}))
        return out
