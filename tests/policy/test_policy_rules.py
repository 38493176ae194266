"""Each rule of the policy core pinned with exact decisions at given times."""

from __future__ import annotations

import pytest

from ecoserve.policy import (
    SLO,
    Constraint,
    Drained,
    InstanceState,
    LeastLoadedRouter,
    PrefillTimePredictor,
    Queued,
    Rejected,
    RoundRobinRouter,
    Routed,
    SetPhase,
    Phase,
    PolicyConfig,
)
from tests.policy.helpers import checker, macro, overall, req


def routed_to(actions):
    return [(a.request_id, a.instance_id) for a in actions if isinstance(a, Routed)]


# -- predictor ---------------------------------------------------------------------------


def test_profile_interpolates_and_extrapolates():
    p = PrefillTimePredictor(points=[(100, 0.1), (500, 0.3), (1000, 0.8)])
    assert p.predict(100) == pytest.approx(0.1)
    assert p.predict(300) == pytest.approx(0.2)
    assert p.predict(750) == pytest.approx(0.55)
    assert p.predict(2000) == pytest.approx(1.8)  # last segment's slope: 1e-3 s/token
    assert p.predict(0) == pytest.approx(0.05)  # first segment's slope back to 0


def test_quadratic_fit_recovers_coefficients():
    a, b, c = 0.02, 3e-4, 2e-7
    pts = [(n, a + b * n + c * n * n) for n in (64, 128, 512, 1024, 2048, 4096)]
    p = PrefillTimePredictor.fit_quadratic(pts)
    fa, fb, fc = p.coeffs
    assert (fa, fb, fc) == pytest.approx((a, b, c), rel=1e-6)
    assert p.predict(3000) == pytest.approx(a + b * 3000 + c * 9e6, rel=1e-9)


def test_online_correction_follows_observed_prefills():
    p = PrefillTimePredictor(points=[(0, 0.0), (1000, 1.0)], alpha=0.5)
    for _ in range(20):
        p.observe(500, 1.0)  # the engine is twice as slow as its profile
    assert p.predict(500) == pytest.approx(1.0, rel=1e-4)
    assert p.base(500) == pytest.approx(0.5)
    p.observe(500, 1000.0)  # an outlier is clamped, not swallowed whole
    assert p.correction <= 0.5 * 2.0 + 0.5 * 5.0


@pytest.mark.parametrize(
    "kw",
    [{}, {"points": []}, {"points": [(1, 1.0), (1, 2.0)]}, {"points": [(1, 1.0)], "coeffs": (0, 0, 0)}],
)
def test_predictor_rejects_bad_input(kw):
    with pytest.raises(ValueError):
        PrefillTimePredictor(**kw)


def test_quadratic_fit_needs_three_lengths():
    with pytest.raises(ValueError):
        PrefillTimePredictor.fit_quadratic([(1, 0.1), (2, 0.2), (2, 0.2)])


# -- constraint check (Algorithm 1) ------------------------------------------------------------


def test_ttft_budget_rejects_the_request_that_would_pass_the_slo():
    m = macro(n=1)  # TTFT SLO 1 s, 1 ms per prompt token
    assert routed_to(m.submit(req("a", 400), 0.0)) == [("a", "i0")]
    assert routed_to(m.submit(req("b", 400), 0.0)) == [("b", "i0")]  # window 0.8 s
    assert m.submit(req("c", 300), 0.0) == [Queued("c", Constraint.TTFT)]  # 1.1 s > 1 s
    inst = m.instance("i0")
    assert checker().check(inst, req("d", 200), 0.0).ok  # exactly 1.0 s still fits


def test_request_alone_in_a_fresh_window_passes_ttft_even_if_slow():
    m = macro(n=1)
    assert routed_to(m.submit(req("huge", 5000), 0.0)) == [("huge", "i0")]


def test_mean_mode_admits_where_min_mode_rejects():
    # One instance with two decoding requests whose slack is 0.9 s and 0.1 s.
    for mode, expect in (("mean", Routed), ("min", Queued)):
        m = macro(n=1, mode=mode, capacity=10**6)
        m.submit(req("fast", 100, out=100), 0.0)
        m.submit(req("slow", 100, out=100), 0.0)
        m.on_tokens("fast", 1, 0.2)
        m.on_tokens("slow", 1, 0.2)  # window closes at 0.2 s
        m.on_tokens("fast", 9, 0.3)  # 10 out: slack 10*0.1 - (0.3-0.2) = 0.9
        m.on_tokens("slow", 1, 0.3)  # 2 out: slack 2*0.1 - 0.1 = 0.1
        out = m.submit(req("new", 300), 0.3)  # stall 0.3 s: mean 0.5 >= 0.3, min 0.1 < 0.3
        assert isinstance(out[0], expect), (mode, out)
        if expect is Queued:
            assert out[0].reason is Constraint.TPOT


def test_tpot_check_counts_only_the_stall_still_to_come():
    c = checker(ttft=10.0)
    inst = InstanceState("i", 10**6)
    m = macro(n=0)
    m.checker = c
    m.add_instance(inst, 0.0)
    m.submit(req("d", 100, out=100), 0.0)
    m.on_tokens("d", 1, 0.1)  # decoding, window closed
    m.on_tokens("d", 4, 0.1)  # 5 out: slack 0.5 at 0.1 s
    m.submit(req("w", 400), 0.1)  # opens a window at 0.1, predicted 0.4 s
    # At 0.4 s: 0.3 s of the window has elapsed, 0.1 s is left; slack is 0.2 s.
    assert c.check(inst, req("x", 100), 0.4).stall == pytest.approx(0.2)
    assert c.check(inst, req("x", 90), 0.4).ok  # stall 0.19 <= slack 0.2
    assert c.check(inst, req("y", 110), 0.4).failed is Constraint.TPOT  # 0.21 > 0.2
    # Counting the whole window (0.4 s) as the paper's t_total would refuse x.
    assert c.check(inst, req("x", 90), 0.4).t_total == pytest.approx(0.49)


def test_memory_reserves_prompt_plus_output():
    m = macro(n=1, capacity=1000)
    assert routed_to(m.submit(req("a", 600, out=300), 0.0)) == [("a", "i0")]
    assert m.submit(req("b", 50, out=60), 0.0) == [Queued("b", Constraint.MEMORY)]  # 900+110 > 1000
    half = macro(n=1, capacity=1000, reservation=0.5)
    half.submit(req("a", 600, out=300), 0.0)  # reserves 600 + 150
    assert routed_to(half.submit(req("b", 50, out=60), 0.0)) == [("b", "i0")]  # 750 + 80


def test_request_that_can_never_fit_is_rejected_with_a_reason():
    m = macro(n=2, capacity=1000)
    out = m.submit(req("big", 990, out=20), 0.0)
    assert len(out) == 1 and isinstance(out[0], Rejected)
    assert "1010 KV tokens" in out[0].reason and "1000" in out[0].reason
    assert m.pending() == [] and m.request("big") is None


# -- the macro-instance router ----------------------------------------------------------------


def test_cyclic_traversal_starts_at_the_previous_taker():
    m = macro(n=3)
    # 600-token prompts: one per window at TTFT 1 s, so each request moves on.
    got = [routed_to(m.submit(req(f"r{k}", 600), 0.0))[0][1] for k in range(3)]
    assert got == ["i0", "i1", "i2"]
    # i1 finishes and frees its window; i2 took the last one, so the walk starts
    # at i2 (busy), wraps to i0 (busy), then reaches i1.
    m.on_finish("r1", 0.5)
    assert routed_to(m.submit(req("r3", 600), 0.5)) == [("r3", "i1")]


def test_pending_is_fifo_and_reoffered_on_state_change():
    m = macro(n=1, capacity=1000)
    m.submit(req("a", 500, out=400), 0.0)
    assert m.submit(req("b", 50, out=60), 0.0)[0].reason is Constraint.MEMORY
    # c would fit in memory, but must not overtake b.
    assert m.submit(req("c", 10, out=10), 0.0) == [Queued("c", Constraint.QUEUE)]
    assert [r.id for r in m.pending()] == ["b", "c"]
    m.on_tokens("a", 1, 0.5)
    out = m.on_finish("a", 1.0)
    assert routed_to(out) == [("b", "i0"), ("c", "i0")]
    assert m.pending() == []


def test_windows_open_and_close_with_phase_commands():
    m = macro(n=1)
    assert m.submit(req("a"), 0.0)[1:] == [SetPhase("i0", Phase.PREFILL)]
    assert m.submit(req("b"), 0.1)[1:] == []  # same window
    assert m.on_tokens("a", 1, 0.2) == []  # b still prefilling
    assert m.on_tokens("b", 1, 0.3) == [SetPhase("i0", Phase.DECODE)]
    inst = m.instance("i0")
    assert inst.phase is Phase.DECODE and inst.window_start is None
    assert {r.id for r in inst.decoding()} == {"a", "b"}


def test_aborting_the_last_unstarted_request_closes_the_window():
    m = macro(n=1)
    m.submit(req("a"), 0.0)
    m.submit(req("b"), 0.0)
    m.on_tokens("a", 1, 0.1)
    assert SetPhase("i0", Phase.DECODE) in m.on_finish("b", 0.2)


def test_failed_instance_requeues_unstarted_requests_at_the_head():
    m = macro(n=2, capacity=1000)
    m.submit(req("s", 500, out=400), 0.0)  # i0
    m.on_tokens("s", 1, 0.1)
    m.submit(req("u", 500, out=400), 0.1)  # i1 (i0 full)
    m.submit(req("late", 500, out=400), 0.1)  # pending: both full
    out = m.fail_instance("i1", 0.2)
    assert routed_to(out) == []
    assert [r.id for r in m.pending()] == ["u", "late"]  # u keeps its place, ahead
    out = m.on_finish("s", 0.3)
    assert routed_to(out) == [("u", "i0")]


def test_draining_instance_takes_nothing_new_and_reports_drained():
    m = macro(n=2)
    m.submit(req("a", 600), 0.0)  # i0
    assert m.remove_instance("i0", 0.1) == []
    assert routed_to(m.submit(req("b", 600), 0.1)) == [("b", "i1")]
    m.on_tokens("a", 1, 0.2)
    assert Drained("i0") in m.on_finish("a", 0.3)
    assert [i.id for i in m.instances()] == ["i1"]
    assert m.remove_instance("i1", 0.4) == []  # b still there
    m.on_tokens("b", 1, 0.5)
    assert m.on_finish("b", 0.6)[-1] == Drained("i1")


def test_duplicate_submit_and_late_events_are_handled():
    m = macro(n=1)
    m.submit(req("a"), 0.0)
    with pytest.raises(ValueError):
        m.submit(req("a"), 0.0)
    m.on_finish("a", 1.0)
    assert m.on_tokens("a", 3, 1.1) == [] and m.on_finish("a", 1.2) == []


# -- baselines ---------------------------------------------------------------------------


def test_round_robin_cycles_and_skips_unhealthy():
    r = RoundRobinRouter()
    for i in range(3):
        r.add_instance(InstanceState(f"i{i}", 10_000), 0.0)
    r.instance("i1").healthy = False
    got = [routed_to(r.submit(req(f"r{k}"), 0.0))[0][1] for k in range(4)]
    assert got == ["i0", "i2", "i0", "i2"]


def test_least_loaded_uses_vllm_score_with_kv_penalty():
    r = LeastLoadedRouter()
    r.add_instance(InstanceState("a", 1000), 0.0)
    r.add_instance(InstanceState("b", 1000), 0.0)
    assert routed_to(r.submit(req("x", 800, out=1), 0.0)) == [("x", "a")]  # a: waiting 1, 80% KV
    assert routed_to(r.submit(req("y", 10, out=1), 0.0)) == [("y", "b")]
    r.submit(req("z", 10, out=1), 0.0)  # tie 1 vs 1 + 1*6*0.3: b
    assert r.request("z").instance_id == "b"
    r.on_tokens("y", 1, 0.1)
    r.on_tokens("z", 1, 0.1)
    # a: waiting 1 + penalty 1.8 = 2.8; b: running 2 -> b again.
    assert routed_to(r.submit(req("w", 10, out=1), 0.2)) == [("w", "b")]


def test_policy_config_builds_each_router():
    from ecoserve.policy import OverallScheduler

    for name, cls in (("ecoserve", OverallScheduler), ("round-robin", RoundRobinRouter),
                      ("least-loaded", LeastLoadedRouter)):  # fmt: skip
        assert isinstance(PolicyConfig(name, SLO(1, 0.1)).build_router(), cls)
    with pytest.raises(ValueError, match="unknown policy"):
        PolicyConfig("fastest", SLO(1, 0.1))


def test_slo_must_be_positive():
    with pytest.raises(ValueError):
        SLO(0, 0.1)


# -- overall scheduler -----------------------------------------------------------------------


def test_overall_spills_to_another_macro_instance():
    s = overall(sizes=(1, 1))
    assert routed_to(s.submit(req("a", 600), 0.0)) == [("a", "i0")]
    assert routed_to(s.submit(req("b", 600), 0.0)) == [("b", "i1")]
    assert s.submit(req("c", 600), 0.0)[0].reason is Constraint.TTFT
    s.on_tokens("b", 1, 0.6)  # i1's window closes; its decoder has one TPOT of slack
    s.on_finish("b", 0.7)
    assert s.request("c").instance_id == "i1"


def test_split_and_merge_move_instances_with_their_requests():
    s = overall(sizes=(4,))
    for k in range(4):
        s.submit(req(f"r{k}", 600), 0.0)
    before = {r: s.request(r).instance_id for r in ("r0", "r1", "r2", "r3")}
    s.split(0, 1.0)
    assert s.layout() == [["i0", "i1"], ["i2", "i3"]]
    assert {r: s.request(r).instance_id for r in before} == before
    s.on_tokens("r3", 1, 1.1)  # events still reach the moved instance's requests
    assert s.instances()[3].phase is Phase.DECODE
    s.merge(0, 1, 2.0)
    assert s.layout() == [["i0", "i1", "i2", "i3"]]
    assert {r: s.request(r).instance_id for r in before} == before


def test_started_window_members_are_protected_decoders():
    # a has its first token while the window is still open; in min mode its
    # slack (one TPOT at 0.1 s) cannot absorb another 0.3 s prefill.
    m = macro(n=1, mode="min")
    m.submit(req("a", 100, out=50), 0.0)
    m.submit(req("b", 100, out=50), 0.0)
    m.on_tokens("a", 1, 0.1)
    inst = m.instance("i0")
    assert inst.window_start is not None and [r.id for r in inst.decoding()] == ["a"]
    assert m.submit(req("c", 300), 0.1) == [Queued("c", Constraint.TPOT)]


def test_decode_margin_counts_one_decode_step_after_the_pause():
    from ecoserve.policy import ConstraintChecker, SLO

    m = macro(n=1)
    m.submit(req("d", 100, out=100), 0.0)
    m.on_tokens("d", 5, 0.1)  # window closes; slack 0.5 s at 0.1 s
    inst = m.instance("i0")
    plain = m.checker
    margin = ConstraintChecker(SLO(1.0, 0.1), plain.predictor, decode_margin_s=0.05)
    assert plain.check(inst, req("x", 480), 0.1).ok  # stall 0.48 <= 0.5
    assert margin.check(inst, req("x", 480), 0.1).failed is Constraint.TPOT  # 0.53 > 0.5


def test_seats_limit_routes_no_more_than_the_engine_can_admit():
    m = macro(n=1)
    m.instance("i0").max_requests = 2
    m.submit(req("a"), 0.0)
    m.submit(req("b"), 0.0)
    assert m.submit(req("c"), 0.0) == [Queued("c", Constraint.SEATS)]
    m.on_tokens("a", 1, 0.1)
    assert routed_to(m.on_finish("a", 0.2)) == [("c", "i0")]


def test_baselines_run_instances_mixed_and_name_one_group():
    for router in (RoundRobinRouter(), LeastLoadedRouter()):
        inst = InstanceState("e", 1000)
        router.add_instance(inst, 0.0)
        assert inst.phase is Phase.MIXED and router.group_of("e") == "m0"
    s = overall(sizes=(1, 1))
    assert s.group_of("i0") != s.group_of("i1")
