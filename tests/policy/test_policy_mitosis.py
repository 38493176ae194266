"""The mitosis planner's triggers and layout rules, at exact times."""

from __future__ import annotations

import pytest

from ecoserve.policy import (
    SLO,
    InstanceState,
    Merge,
    MitosisConfig,
    MitosisPlanner,
    ScaleIn,
    ScaleOut,
    Split,
    grow_target,
    shrink_victim,
    structural,
)
from tests.policy.helpers import overall, req

CFG = MitosisConfig(macro_min=6, macro_max=11, min_instances=1, max_instances=32,
                    ttft_window_s=10.0, cooldown_s=5.0, scale_in_hold_s=3.0)


def ids(*sizes):
    k = 0
    out = []
    for n in sizes:
        out.append([f"i{k + j}" for j in range(n)])
        k += n
    return out


def test_grow_refills_the_first_group_before_the_next():
    assert grow_target(ids(8), CFG) == 0
    assert grow_target(ids(11), CFG) == 0  # all full: the last grows past N_u ...
    assert structural(ids(12), CFG) == Split(0)  # ... and splits 12 -> 6 + 6
    assert grow_target(ids(6, 6), CFG) == 0
    assert grow_target(ids(11, 6), CFG) == 1
    assert grow_target([], CFG) == 0


def test_shrink_order_partial_then_smallest_above_nl_then_last():
    load = {}
    assert shrink_victim(ids(11, 3), CFG, load) in ids(11, 3)[1]  # the partial group
    assert shrink_victim(ids(9, 7), CFG, load) in ids(9, 7)[1]  # smallest above N_l
    assert shrink_victim(ids(6, 6), CFG, load) in ids(6, 6)[1]  # all at N_l: the last
    group = ids(6, 7)[1]
    busy = {iid: 5 for iid in group}
    busy[group[2]] = 1
    assert shrink_victim(ids(6, 7), CFG, busy) == group[2]  # fewest requests drains first


def test_merge_when_two_fit_in_nu():
    assert structural(ids(6, 5), CFG) == Merge(0, 1)
    assert structural(ids(6, 6), CFG) is None
    assert structural(ids(9, 2, 3), CFG) == Merge(1, 2)


def test_config_rejects_layouts_that_cannot_split():
    with pytest.raises(ValueError, match="N_l"):
        MitosisConfig(macro_min=6, macro_max=10)
    with pytest.raises(ValueError):
        MitosisConfig(macro_min=3, macro_max=2)


def planner_with(sched_sizes=(2,)):
    slo = SLO(ttft=1.0, tpot=0.1)
    sched = overall(sizes=sched_sizes)
    cfg = MitosisConfig(macro_min=1, macro_max=2, min_instances=1, max_instances=4,
                        ttft_window_s=10.0, cooldown_s=5.0, scale_in_hold_s=3.0)
    return MitosisPlanner(slo, cfg), sched


def test_scale_out_when_mean_ttft_exceeds_slo_then_cooldown():
    planner, sched = planner_with()
    sched.submit(req("a"), 0.0)  # keep the fleet busy: no scale-in
    planner.observe_ttft(0.5, 1.0)
    assert planner.plan(sched, 1.0) == []
    planner.observe_ttft(1.6, 2.0)  # mean 1.05 s > 1 s
    # Group 0 is full (N_u = 2): it grows to 3, and the planner then splits it.
    assert planner.plan(sched, 2.0) == [ScaleOut(0)]
    assert planner.plan(sched, 3.0) == []  # cooldown
    assert planner.plan(sched, 8.0, launching=1) == []  # waits for the one asked for
    assert planner.plan(sched, 8.0) == [ScaleOut(0)]
    planner.observe_ttft(0.1, 19.0)  # the slow ones left the 10 s window
    assert planner.plan(sched, 19.0) == []


def test_pending_requests_count_toward_ttft():
    planner, sched = planner_with(sched_sizes=(1,))
    for k in range(3):
        sched.submit(req(f"r{k}", 600), 0.0)  # one fits, two wait
    assert len(sched.pending()) == 2
    assert planner.mean_ttft(sched, 1.5) == pytest.approx(1.5)
    assert planner.plan(sched, 1.5) == [ScaleOut(0)]


def test_scale_in_needs_slack_to_hold_and_drains():
    planner, sched = planner_with(sched_sizes=(2,))
    # An idle fleet is over-provisioned, but only after the hold time.
    assert planner.plan(sched, 0.0) == []
    assert planner.plan(sched, 2.9) == []
    out = planner.plan(sched, 3.0)
    assert len(out) == 1 and isinstance(out[0], ScaleIn)
    assert planner.plan(sched, 4.0) == []  # cooldown
    # A loaded fleet with thin slack is not shrunk.
    planner, sched = planner_with(sched_sizes=(2,))
    sched.submit(req("a", 100, out=100), 0.0)
    sched.submit(req("b", 100, out=100), 0.0)
    sched.on_tokens("a", 1, 0.1)
    sched.on_tokens("b", 1, 0.1)
    for t in (0.2, 5.0, 9.0):
        assert planner.plan(sched, t) == []  # slack 0.1 - elapsed < 1 * 3/2


def test_never_below_min_instances():
    planner, sched = planner_with(sched_sizes=(1,))
    for t in (0.0, 10.0, 20.0):
        assert planner.plan(sched, t) == []


def test_planner_fixes_layout_before_anything_else():
    planner, sched = planner_with(sched_sizes=(2,))
    sched.add_instance(InstanceState("extra", 100_000), 0.0, macro=0)  # 3 > N_u
    assert planner.plan(sched, 0.0) == [Split(0)]
    sched.split(0, 0.0)
    assert sched.layout() == [["i0"], ["i1", "extra"]]
    assert planner.plan(sched, 0.0) == []
