"""The timeline document and the live recorder: merging steps into segments,
deltas after a cursor, bounds, strict decoding."""

from __future__ import annotations

import msgspec
import pytest

from ecoserve.timeline import TimelineRecorder, decode, encode
from ecoserve.timeline.document import LaneBuilder, Macro, Timeline


def test_lane_merges_steps_of_one_kind_and_splits_on_kind_or_gap():
    lane = LaneBuilder("e0", merge_gap_s=0.25)
    assert lane.add(0.0, 0.1, "prefill", 1, 100) is None
    assert lane.add(0.1, 0.2, "prefill", 1, 50) is None  # same kind, no gap: grows
    closed = lane.add(0.2, 0.25, "decode")
    assert (closed.start, closed.end, closed.kind, closed.steps, closed.prefill_tokens) == (0.0, 0.2, "prefill", 2, 150)
    assert lane.add(0.4, 0.5, "decode") is None  # a gap under 0.25 s is not idle time
    closed = lane.add(1.0, 1.1, "decode")  # 0.5 s of nothing: a new segment
    assert (closed.start, closed.end, closed.steps) == (0.2, 0.5, 2)
    assert lane.add(1.1, 1.2, "empty") is None and lane.open.end == 1.1  # empty steps are idle
    assert lane.close().start == 1.0 and lane.open is None


def _rec(**kw) -> TimelineRecorder:
    return TimelineRecorder(slo_ttft=1.0, slo_tpot=0.1, **kw)


def test_deltas_carry_what_is_new_and_the_open_segments():
    r = _rec()
    r.steps("e0", [(0.0, 0.1, "prefill", 64), (0.1, 0.2, "decode", 0)])
    r.routed("e0", 0.05)
    r.phase("e0", "prefill", 0.0)
    r.sample(0.3, 2, 1, {"e0": (0.5, "serving")}, [Macro("m0", ["e0"])], [])
    full = r.document(0.3)
    assert [s.kind for s in full.segments] == ["prefill", "decode"]  # closed, then the open one
    assert len(full.marks) == len(full.phases) == len(full.samples) == 1
    assert full.macros[0].engines == ["e0"] and full.end == 0.3 and full.start == 0.0

    r.steps("e0", [(0.2, 0.3, "decode", 0)])
    r.finished(0.35, 0.2, 0.05)
    delta = r.document(0.4, after=full.seq)
    assert delta.marks == [] and delta.phases == [] and delta.samples == []
    assert [(s.kind, s.end) for s in delta.segments] == [("decode", 0.3)]  # the open one, grown
    assert [(lat.ttft, lat.tpot) for lat in delta.latencies] == [(0.2, 0.05)]
    assert r.document(0.4, after=delta.seq).latencies == []


def test_since_cuts_the_document_at_a_time():
    r = _rec()
    r.steps("e0", [(0.0, 0.1, "prefill", 8), (5.0, 5.1, "prefill", 8), (9.0, 9.1, "decode", 0)])
    r.routed("e0", 1.0)
    r.routed("e0", 6.0)
    doc = r.document(10.0, since=4.0)
    assert [m.time for m in doc.marks] == [6.0]
    assert [s.start for s in doc.segments] == [5.0, 9.0] and doc.start == 4.0


def test_bounded_by_retention_and_by_count():
    r = _rec(retention_s=10.0, max_items=3)
    for i in range(5):
        r.routed("e0", float(i))
    assert [m.time for m in r.document(5.0).marks] == [2.0, 3.0, 4.0]  # count bound: oldest dropped
    r.sample(13.5, 0, 0, {}, [], [])  # prunes what is older than 13.5 - 10
    assert [m.time for m in r.document(13.5).marks] == [4.0]
    with pytest.raises(ValueError):
        _rec(retention_s=0)


def test_documents_round_trip_and_are_decoded_strictly():
    r = _rec()
    r.steps("e0", [(0.0, 0.1, "mixed", 16)])
    doc = r.document(1.0)
    again = decode(encode(doc))
    assert again == doc
    assert isinstance(again, Timeline)
    with pytest.raises(ValueError, match="version"):
        decode(encode(doc).replace(b"ecoserve-timeline/v1", b"ecoserve-timeline/v9"))
    head = b'{"version": "ecoserve-timeline/v1", "source": "live", "start": 0, "end": 1, "slo_ttft": 1, "slo_tpot": 1'
    with pytest.raises(msgspec.ValidationError):  # a segment of another shape
        decode(head + b', "segments": [["e0", 0]]}')
    with pytest.raises(msgspec.ValidationError):  # a field this version does not have
        decode(head + b', "extra": 1}')
    with pytest.raises(ValueError, match="version"):  # no version at all: not ours
        decode(b'{"source": "live"}')
    assert decode(head + b"}").segments == []
