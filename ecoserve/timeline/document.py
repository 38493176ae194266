"""The timeline document: what every engine did over time, in one shape for the
live dashboard, a simulated run and a benchmarked run.

Rule: one document, three producers (``recorder.TimelineRecorder`` live,
``ecoserve.sim.timeline.TimelineObserver`` simulated, the live document fetched
by ``ecoserve bench``), one renderer (``static/dashboard.js``; ``png.py`` draws
the same layout with matplotlib). Times are seconds on one clock: wall-clock
(``time.time()``) live, simulated seconds offline.

Bulk items are JSON arrays, not objects (msgspec ``array_like``), to keep a
live delta small; their field order is the contract (``dashboard.js`` reads
them by position):

- ``Segment``: ``[engine, start, end, kind, steps, prefill_tokens]``: a run of
  engine steps of one kind (``prefill``, ``decode``, ``mixed``; a gap longer than
  ``MERGE_GAP_S`` between steps is idle time and ends a segment);
- ``Mark``: ``[engine, time]``: a request routed to the engine;
- ``PhaseChange``: ``[engine, time, phase]``: the phase the policy commanded;
- ``Latency``: ``[time, ttft, tpot]``: a request finished (``tpot`` null for a
  one-token answer, ``ttft`` null when it never got a token);
- ``Sample``: ``[time, pending, in_flight, {engine: [kv_used, state]}]``:
  ``pending`` requests arrived and not yet routed, ``in_flight`` routed and not
  finished (live and simulated alike), ``kv_used`` the share of the engine's KV
  cache in use (0..1), ``state`` ``serving``, ``draining`` or ``failed``.
"""

from __future__ import annotations

import msgspec

VERSION = "ecoserve-timeline/v1"
# Steps closer than this merge into one segment: a quarter second is one pixel
# of a five-minute window on a 1200-pixel lane, and far above the gap between
# two busy steps of an engine (~1 ms, vLLM's step loop).
MERGE_GAP_S = 0.25
KINDS = ("prefill", "decode", "mixed")
STATES = ("serving", "draining", "failed")


class Segment(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    engine: str
    start: float
    end: float
    kind: str
    steps: int
    prefill_tokens: int


class Mark(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    engine: str
    time: float


class PhaseChange(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    engine: str
    time: float
    phase: str


class Latency(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    time: float
    ttft: float | None
    tpot: float | None


class Sample(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    time: float
    pending: int
    in_flight: int
    engines: dict[str, tuple[float, str]]  # engine -> (kv_used 0..1, state)


class Macro(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    engines: list[str]


class Event(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A scaling or failure event (``added``, ``drained``, ``split``, ``merged``,
    ``failed``, ``replaced``, ...), as ``/ecoserve/status`` lists them."""

    time: float
    event: str
    instance: str | None = None
    detail: str | None = None


class Timeline(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    version: str = VERSION
    source: str  # "live", "simulated" or "benchmark"
    title: str = ""
    start: float
    end: float
    slo_ttft: float
    slo_tpot: float
    macros: list[Macro] = []  # engines grouped by macro instance, in routing order
    segments: list[Segment] = []
    marks: list[Mark] = []
    phases: list[PhaseChange] = []
    latencies: list[Latency] = []
    samples: list[Sample] = []
    events: list[Event] = []
    seq: int = 0  # live: the cursor to ask the next delta after (``?after=seq``)

    def engines(self) -> list[str]:
        """Every engine, grouped as ``macros`` says, then any other seen in a segment."""
        seen = [e for m in self.macros for e in m.engines]
        for s in self.segments:
            if s.engine not in seen:
                seen.append(s.engine)
        return seen

    def groups(self) -> list[tuple[str, list[str]]]:
        """Lanes as drawn: each macro instance's engines, then the others as
        ``other`` (``engines`` when there is no macro instance), as dashboard.js's
        ``Store.groups`` does."""
        out = [(m.name, list(m.engines)) for m in self.macros]
        grouped = {e for _, es in out for e in es}
        rest = [e for e in self.engines() if e not in grouped]
        if rest:
            out.append(("other" if out else "engines", rest))
        return out


class _Versioned(msgspec.Struct):
    version: str = ""


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(Timeline)
_dec_version = msgspec.json.Decoder(_Versioned)


def encode(doc: Timeline) -> bytes:
    return _enc.encode(doc)


def decode(data: bytes | str) -> Timeline:
    """Strict: a document of another version (checked first, so its message says
    so) or shape, unknown fields included, is an error, never half-read."""
    version = _dec_version.decode(data).version
    if version != VERSION:
        raise ValueError(f"timeline version {version!r}, expected {VERSION!r}")
    return _dec.decode(data)


class LaneBuilder:
    """Merges one engine's steps, in time order, into segments. ``add`` returns
    the segment that a step of another kind (or a gap) closed, if any; ``open``
    is the segment still growing."""

    def __init__(self, engine: str, merge_gap_s: float = MERGE_GAP_S) -> None:
        self.engine = engine
        self.merge_gap_s = merge_gap_s
        self.open: Segment | None = None

    def add(self, start: float, end: float, kind: str, steps: int = 1, prefill_tokens: int = 0) -> Segment | None:
        if kind not in KINDS:  # "empty" steps (nothing scheduled) are idle time
            return None
        cur = self.open
        if cur is not None and cur.kind == kind and start - cur.end <= self.merge_gap_s:
            self.open = Segment(self.engine, cur.start, max(cur.end, end), kind, cur.steps + steps,
                                cur.prefill_tokens + prefill_tokens)  # fmt: skip
            return None
        self.open = Segment(self.engine, start, end, kind, steps, prefill_tokens)
        return cur

    def close(self) -> Segment | None:
        cur, self.open = self.open, None
        return cur
