"""The live timeline: a bounded record of what every engine did, and deltas of
it for the dashboard.

Rule: pure (time passed in, no I/O), bounded (items older than
``retention_s`` or beyond ``max_items`` per kind are dropped, oldest first),
and cheap to read incrementally. Every recorded item gets a sequence number;
``document(after=n)`` returns only the items recorded after ``n``, plus each
engine's open segment (it may have grown), plus the small parts (layout,
events) whole. The reply's ``seq`` is the cursor for the next call. A client
keys segments by ``(engine, start)``: a closed segment replaces the open one it
was.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Generic, TypeVar

from ecoserve.timeline.document import (
    MERGE_GAP_S,
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

RETENTION_S = 900.0  # what the page can show (its longest window is 15 minutes)
# Per kind, whatever the step rate: ~0.2 KB of Python objects an item (measured:
# 36 MB for 100k segments and 100k marks), so ~50 MB with every kind full.
MAX_ITEMS = 50_000

T = TypeVar("T")


class _Log(Generic[T]):
    """Items with their sequence numbers and times, oldest first."""

    def __init__(self, max_items: int) -> None:
        self.items: deque[tuple[int, float, T]] = deque(maxlen=max_items)

    def add(self, seq: int, t: float, item: T) -> None:
        self.items.append((seq, t, item))

    def prune(self, before: float) -> None:
        while self.items and self.items[0][1] < before:
            self.items.popleft()

    def after(self, seq: int, since: float | None) -> list[T]:
        out: list[T] = []
        for s, t, item in reversed(self.items):  # newest first: stop at the cursor
            if s <= seq:
                break
            if since is None or t >= since:
                out.append(item)
        out.reverse()
        return out


class TimelineRecorder:
    def __init__(self, *, slo_ttft: float, slo_tpot: float, retention_s: float = RETENTION_S,
                 max_items: int = MAX_ITEMS, merge_gap_s: float = MERGE_GAP_S) -> None:  # fmt: skip
        if retention_s <= 0 or max_items < 1:
            raise ValueError("need retention_s > 0 and max_items >= 1")
        self.slo_ttft = slo_ttft
        self.slo_tpot = slo_tpot
        self.retention_s = retention_s
        self.merge_gap_s = merge_gap_s
        self.seq = 0
        self._lanes: dict[str, LaneBuilder] = {}
        self._segments: _Log[Segment] = _Log(max_items)
        self._marks: _Log[Mark] = _Log(max_items)
        self._phases: _Log[PhaseChange] = _Log(max_items)
        self._latencies: _Log[Latency] = _Log(max_items)
        self._samples: _Log[Sample] = _Log(max_items)
        self.macros: list[Macro] = []
        self.events: list[Event] = []
        self._phase_before: dict[str, PhaseChange] = {}  # per engine, its last change pruned away

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    # ---- what happened ----------------------------------------------------------------
    def steps(self, engine: str, steps: Iterable[tuple[float, float, str, int]]) -> None:
        """Engine steps in time order: ``(start, end, kind, prefill_tokens)``."""
        lane = self._lanes.get(engine)
        if lane is None:
            lane = self._lanes[engine] = LaneBuilder(engine, self.merge_gap_s)
        for start, end, kind, tokens in steps:
            closed = lane.add(start, end, kind, 1, tokens)
            if closed is not None:
                self._segments.add(self._next(), closed.end, closed)

    def routed(self, engine: str, now: float) -> None:
        self._marks.add(self._next(), now, Mark(engine, now))

    def phase(self, engine: str, phase: str, now: float) -> None:
        self._phases.add(self._next(), now, PhaseChange(engine, now, phase))

    def finished(self, now: float, ttft: float | None, tpot: float | None) -> None:
        self._latencies.add(self._next(), now, Latency(now, ttft, tpot))

    def sample(self, now: float, pending: int, in_flight: int, engines: dict[str, tuple[float, str]],
               macros: list[Macro], events: list[Event]) -> None:  # fmt: skip
        """The fleet at ``now`` (the dashboard's sampler calls this about once a
        second); also prunes what is older than the retention."""
        self._samples.add(self._next(), now, Sample(now, pending, in_flight, engines))
        self.macros = macros
        self.events = events
        self.prune(now)

    def prune(self, now: float) -> None:
        before = now - self.retention_s
        for _, t, p in self._phases.items:
            if t >= before:
                break
            self._phase_before[p.engine] = p  # what the window starts in
        for log in (self._segments, self._marks, self._phases, self._latencies, self._samples):
            log.prune(before)
        for eng, lane in list(self._lanes.items()):  # an engine gone quiet long ago
            if lane.open is not None and lane.open.end < before:
                lane.close()
            if lane.open is None and not any(m for m in self.macros if eng in m.engines):
                del self._lanes[eng]

    # ---- reading it -------------------------------------------------------------------
    def document(self, now: float, *, after: int = 0, since: float | None = None, title: str = "") -> Timeline:
        """Everything recorded after ``after`` (0: all that is kept), from ``since`` on.
        Its ``start``: ``since``, or the earliest time in it. A whole document
        (``after=0``) also carries each engine's last phase change before its
        start: the phase its window opens in."""
        open_segs = [lane.open for lane in self._lanes.values() if lane.open is not None]
        if since is not None:
            open_segs = [s for s in open_segs if s.end >= since]
        phases = self._phases.after(after, since)
        if after == 0:
            phases = self._phase_at_start(since) + phases
        doc = Timeline(
            source="live", title=title, start=now, end=now, slo_ttft=self.slo_ttft, slo_tpot=self.slo_tpot,
            macros=self.macros, segments=self._segments.after(after, since) + open_segs,
            marks=self._marks.after(after, since), phases=phases,
            latencies=self._latencies.after(after, since), samples=self._samples.after(after, since),
            events=[e for e in self.events if since is None or e.time >= since], seq=self.seq,
        )  # fmt: skip
        times = [*(s.start for s in doc.segments), *(m.time for m in doc.marks),
                 *(x.time for x in doc.samples), *(x.time for x in doc.latencies)]  # fmt: skip
        if since is not None:
            doc.start = since
        else:
            oldest_phase = [self._phases.items[0][1]] if self._phases.items else []  # kept ones only
            doc.start = min([*times, *oldest_phase, now])
        return doc

    def _phase_at_start(self, since: float | None) -> list[PhaseChange]:
        last = dict(self._phase_before)
        if since is not None:
            for _, t, p in self._phases.items:
                if t >= since:
                    break
                last[p.engine] = p
        return sorted(last.values(), key=lambda p: p.time)
