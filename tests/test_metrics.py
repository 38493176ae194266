"""Metrics on hand-computed cases and the goodput search on synthetic curves."""

from __future__ import annotations

import math

import pytest

from ecoserve.metrics import RequestRecord, attainment, find_goodput, percentile, summarize


def rec(arrival, first, finish, out=11, prompt=10):
    return RequestRecord(arrival, prompt, out, first, finish)


def test_ttft_and_tpot_by_hand():
    r = rec(1.0, 1.5, 2.5, out=11)  # 10 tokens after the first in 1.0 s
    assert r.ttft == pytest.approx(0.5)
    assert r.tpot == pytest.approx(0.1)
    assert r.e2e == pytest.approx(1.5)
    assert r.meets(0.5, 0.1) and not r.meets(0.49, 0.1) and not r.meets(0.5, 0.099)


def test_one_token_and_unfinished_requests():
    one = rec(0.0, 0.2, 0.2, out=1)  # no second token: no TPOT, and so no TPOT miss
    assert one.tpot is None and one.meets(1.0, 0.01) and not one.meets(0.1, 0.01)
    s = summarize([one], 1.0, 0.01)
    assert s["tpot_attainment"] == 1.0 and s["attainment"] == 1.0 and s["tpot"]["p50"] != s["tpot"]["p50"]  # NaN
    stuck = rec(0.0, 0.2, None)
    assert stuck.tpot is None and not stuck.meets(10, 10)
    never = rec(0.0, None, None)
    assert never.ttft is None and not never.meets(10, 10)


def test_percentiles_interpolate_linearly():
    xs = [4.0, 1.0, 3.0, 2.0]
    assert percentile(xs, 50) == pytest.approx(2.5)
    assert percentile(xs, 90) == pytest.approx(3.7)
    assert percentile(xs, 0) == 1.0 and percentile(xs, 100) == 4.0
    assert math.isnan(percentile([], 50))


def test_attainment_and_summary():
    recs = [rec(0, 0.5, 1.5), rec(0, 2.0, 3.0), rec(0, 0.1, 5.1), rec(0, None, None)]
    # meets (1 s, 0.1 s): first only; second fails TTFT, third fails TPOT (0.5), fourth never ran
    assert attainment(recs, 1.0, 0.1) == pytest.approx(0.25)
    s = summarize(recs, 1.0, 0.1)
    assert s["num_requests"] == 4 and s["finished"] == 3
    assert s["ttft_attainment"] == pytest.approx(0.5) and s["tpot_attainment"] == pytest.approx(0.5)
    assert s["ttft"]["p50"] == pytest.approx(0.5) and s["tpot"]["max"] == pytest.approx(0.5)


def curve(r):
    """Monotone: 1 up to 10 req/s, then falling linearly to 0 at 30."""
    return max(0.0, min(1.0, 1.0 - (r - 10.0) / 20.0))


def test_goodput_search_finds_each_level():
    res = find_goodput(curve, start=1.0, rel_tol=0.01)
    assert res.goodput["p50"] == pytest.approx(20.0, rel=0.01)
    assert res.goodput["p90"] == pytest.approx(12.0, rel=0.01)
    assert res.goodput["p99"] == pytest.approx(10.2, rel=0.01)
    for name, target in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        assert curve(res.goodput[name]) >= target  # the answer always passed
    assert len(res.evaluations) == len(set(res.evaluations)) <= 30  # evaluations shared between levels


def test_goodput_search_from_above_and_never_passing():
    res = find_goodput(curve, {"p90": 0.9}, start=100.0, rel_tol=0.01)
    assert res.goodput["p90"] == pytest.approx(12.0, rel=0.01)
    none = find_goodput(lambda r: 0.0, {"p90": 0.9}, start=1.0, min_rate=0.01)
    assert none.goodput["p90"] == 0.0


def test_goodput_search_is_deterministic():
    a = find_goodput(curve, start=3.0)
    b = find_goodput(curve, start=3.0)
    assert a.goodput == b.goodput and a.evaluations == b.evaluations
