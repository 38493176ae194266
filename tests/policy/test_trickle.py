"""Trickle-first instance scheduling (policy/trickle.py), pinned at exact times."""

from __future__ import annotations

import pytest

from ecoserve.policy import SLO, ConstraintChecker, InstanceState, OverallScheduler, Phase, Routed, SetPhase
from ecoserve.policy.prefix_index import PrefixIndex
from ecoserve.policy.step_time import DecodeStepModel, StepTimePredictor
from ecoserve.policy.trickle import TrickleMacroInstance
from tests.policy.helpers import linear_predictor, req

# prefill 1 ms a token (linear, no fixed part); a decode step 20 ms + 1 ms a sequence
STEPS = StepTimePredictor(linear_predictor(), DecodeStepModel((0.02, 1e-3, 0.0)))


def scheduler(n=2, ttft=1.0, tpot=0.1, budget=100, steps=STEPS) -> OverallScheduler:
    checker = ConstraintChecker(SLO(ttft, tpot), steps.prefill, slack_mode="min")
    s = OverallScheduler(checker, lambda c, name: TrickleMacroInstance(c, steps, budget, name))
    for i in range(n):
        s.add_instance(InstanceState(f"i{i}", 100_000), 0.0)
    return s


def test_instances_rest_in_the_chunked_phase():
    assert scheduler().initial_phase is Phase.CHUNKED


def test_a_request_trickles_where_its_first_token_comes_first():
    s = scheduler()
    (a,) = s.submit(req("a", prompt=300), 0.0)
    assert a == Routed("a", "i0", "trickle")  # no window, no phase command
    (b,) = s.submit(req("b", prompt=300), 0.0)
    assert b.instance_id == "i1"  # i0 has 300 tokens trickling ahead: i1 is sooner
    i0 = s.macros[0].instance("i0")
    assert (i0.trickle_n, i0.trickle_tokens, i0.window_start) == (1, 300, None)


def test_the_trickle_prediction_is_queued_tokens_over_chunks_of_predicted_steps():
    s = scheduler(n=1)
    m = s.macros[0]
    s.submit(req("a", prompt=150), 0.0)
    s.on_progress([("a", 1)], 0.5)  # a decodes now: chunks are 100 - 1 tokens
    inst = m.instance("i0")
    # 250 tokens in chunks of 99: 2 steps of (20 ms + 1 ms + 99 ms), then one of the 52 left
    assert m.trickle_ttft(inst, req("b", prompt=250)) == pytest.approx(2 * (0.021 + 0.099) + (0.021 + 0.052))


def test_a_prompt_that_fits_one_chunk_trickles_where_fewer_decode():
    """The last step is predicted at the tokens left, not a full chunk: at a full
    chunk the busier instance looked sooner (its decoders shrink the chunk, and
    the predicted step with it) and trickling piled onto it."""
    # A decoder costs less than a prompt token (0.1 ms against 1 ms), as on the CPU engines' profile.
    s = scheduler(n=2, ttft=5.0, budget=2048,
                  steps=StepTimePredictor(linear_predictor(), DecodeStepModel((0.02, 1e-4, 0.0))))
    for rid in ("d1", "d2", "d3"):  # three decoders over the two instances
        s.submit(req(rid, prompt=10), 0.0)
    assert {s.request(r).instance_id for r in ("d1", "d2", "d3")} == {"i0", "i1"}
    s.on_progress([(r, 1) for r in ("d1", "d2", "d3")], 0.1)
    s.on_progress([(r, 10) for r in ("d1", "d2", "d3")], 0.2)  # ahead of their TPOT: slack to pay with
    busy = max(s.instances(), key=lambda i: i.dec_n)
    idle = min(s.instances(), key=lambda i: i.dec_n)
    assert busy.dec_n > idle.dec_n
    m = s.macros[0]
    assert m.trickle_ttft(idle, req("x", prompt=200)) < m.trickle_ttft(busy, req("x", prompt=200))
    (r,) = s.submit(req("a", prompt=200), 0.2)
    assert r.instance_id == idle.id


def test_when_trickling_would_miss_ttft_a_window_opens_and_closes_back_to_chunked():
    s = scheduler(n=1, ttft=1.0)
    # 900 tokens: 9 chunks of 100 at 100 ms each = 0.9 s, within 1 s: trickled
    assert s.submit(req("a", prompt=900), 0.0)[0].reason == "trickle"
    # 200 more: 11 chunks = 1.1 s > 1 s; the window's check charges a's 0.9 s ahead: 1.1 s > 1 s too
    (q,) = s.submit(req("b", prompt=200), 0.0)
    assert q.__class__.__name__ == "Queued"
    # once a has its first token, b's trickle prediction is within the SLO again: re-offered, trickled
    acts = s.on_progress([("a", 1)], 0.9)
    assert [a.request_id for a in acts if isinstance(a, Routed)] == ["b"]
    assert not any(isinstance(a, SetPhase) for a in acts) and s.request("b").trickled


def test_a_window_opens_when_chunking_is_too_slow_but_a_batched_prefill_is_not():
    s = scheduler(n=1, ttft=1.0, budget=10)
    s.submit(req("d", prompt=5, out=100), 0.0)  # a decoder with 2 s of banked slack at 0.1 s
    s.on_progress([("d", 1)], 0.0)
    s.on_progress([("d", 20)], 0.1)
    # 500 tokens in chunks of 10 - 1 beside d, 30 ms a step: 56 steps, 1.68 s > 1 s. As one
    # prefill: 0.5 s, within the TTFT SLO and d's slack: a window.
    acts = s.submit(req("a", prompt=500), 0.1)
    assert acts == [Routed("a", "i0", "fits"), SetPhase("i0", Phase.PREFILL)]
    acts = s.on_progress([("a", 1)], 0.6)
    assert acts == [SetPhase("i0", Phase.CHUNKED)]


def test_aggregates_follow_starts_and_aborts():
    s = scheduler(n=1)
    s.submit(req("a", prompt=100), 0.0)
    s.submit(req("b", prompt=50), 0.0)
    inst = s.macros[0].instance("i0")
    assert (inst.trickle_n, inst.trickle_tokens) == (2, 150)
    s.on_progress([("a", 1)], 0.2)
    assert (inst.trickle_n, inst.trickle_tokens) == (1, 50)
    s.on_finish("b", 0.3)  # aborted before its first token
    assert (inst.trickle_n, inst.trickle_tokens, inst.trickle_pred) == (0, 0, pytest.approx(0.0))


def test_a_prompt_trickles_only_where_the_decoders_can_pay_for_its_steps():
    s = scheduler(n=1, ttft=10.0, tpot=0.1, budget=100)
    s.submit(req("d", prompt=5, out=100), 0.0)
    s.on_progress([("d", 1)], 0.0)  # d's first token at 0: 0.1 s of saved TPOT
    # 990 tokens in chunks of 99 beside d: 10 steps of 120 ms, each 20 ms past d's TPOT: d would
    # need 0.2 s of slack and has 0.1. As a window the stall is 0.99 s: no better. It waits.
    (q,) = s.submit(req("a", prompt=990), 0.0)
    assert q.__class__.__name__ == "Queued"
    m = s.macros[0]
    assert not m.decoders_pay(m.instance("i0"), req("a", prompt=990), 0.0)
    assert m.decoders_pay(m.instance("i0"), req("a", prompt=396), 0.0)  # 4 steps: 0.08 s, paid
    # d runs ahead of its TPOT (10 tokens by 0.5 s: 0.5 s of slack): now it can pay, and a trickles
    acts = s.on_progress([("d", 10)], 0.5)
    assert [(a.request_id, a.instance_id) for a in acts if isinstance(a, Routed)] == [("a", "i0")]
    assert not any(isinstance(a, SetPhase) for a in acts) and s.request("a").trickled


def test_steps_shorter_than_the_tpot_need_no_slack():
    s = scheduler(n=1, ttft=10.0, tpot=0.1, budget=50)
    s.submit(req("d", prompt=5, out=100), 0.0)
    s.on_progress([("d", 1)], 0.0)
    # chunks of 49 beside d: 70 ms steps, within d's 100 ms TPOT, so each step banks slack
    (r,) = s.submit(req("a", prompt=2000), 0.0)
    assert r == Routed("a", "i0", "trickle")


# -- prefixes ---------------------------------------------------------------------------

B = 512  # tokens per prefix block


def prefixed(s: OverallScheduler) -> OverallScheduler:
    for inst in s.instances():
        inst.prefix = PrefixIndex(100, B)
    return s


def test_a_cached_prefix_is_not_chunked_again_and_the_prompt_is_recorded():
    s = prefixed(scheduler(n=2, ttft=5.0))
    i0, i1 = s.instances()
    i1.prefix.insert((1, 2, 3))
    r = req("r", prompt=3 * B + 10)
    r.blocks = (1, 2, 3)
    m = s.macros[0]
    assert m.trickle_ttft(i1, r) == pytest.approx(STEPS.step_time(10, 0, 0))  # one step of the 10 uncached
    assert m.trickle_ttft(i0, r) > 10 * m.trickle_ttft(i1, r)
    (a,) = s.submit(r, 0.0)
    assert a == Routed("r", "i1", "prefix")
    assert (r.cached_tokens, i1.trickle_tokens) == (3 * B, 10)  # only the 10 uncached tokens trickle
    assert r.predicted_prefill == pytest.approx(STEPS.prefill.predict_uncached(3 * B + 10, 3 * B))
    fresh = req("f", prompt=3 * B + 10)
    fresh.blocks = (7, 8, 9)
    s.submit(fresh, 0.0)
    assert fresh.instance_id == "i0" and i0.prefix.matched_blocks((7, 8, 9)) == 3  # recorded where it went
    s.on_progress([("r", 1)], 0.1)
    assert i1.trickle_tokens == 0  # started: it leaves the trickle queue with what it added


@pytest.mark.parametrize("ttft_slo, where, why", [(5.0, "i1", "prefix"), (2.8, "i0", "trickle")])
def test_the_holder_is_preferred_while_its_ttft_holds_then_the_prompt_spills(ttft_slo, where, why):
    """i1 holds r's prefix but has more tokens trickling ahead of it than i0, so
    i0 would give r its first token sooner: the holder still takes r while its
    predicted TTFT meets the SLO (affinity, explicitly traded against load), and
    once it would not, r trickles on i0."""
    s = prefixed(scheduler(n=2, ttft=5.0))
    i0, i1 = s.instances()
    s.submit(req("x", prompt=1000), 0.0)  # -> i0
    s.submit(req("y", prompt=3000), 0.0)  # -> i1 (i0 has 1000 tokens ahead)
    assert (i0.trickle_tokens, i1.trickle_tokens) == (1000, 3000)
    s.use_checker(ConstraintChecker(SLO(ttft_slo, 0.1), STEPS.prefill, slack_mode="min"))
    i1.prefix.insert((1, 2, 3))
    r = req("r", prompt=3 * B + 10)
    r.blocks = (1, 2, 3)
    m = s.macros[0]
    on_i0, on_i1 = m.trickle_ttft(i0, r), m.trickle_ttft(i1, r)
    assert on_i0 < 2.8 < on_i1 < 5.0  # i0 sooner; only the lenient SLO admits the holder
    (a,) = s.submit(r, 0.0)
    assert (a.instance_id, a.reason) == (where, why)
    assert r.cached_tokens == (3 * B if where == "i1" else 0)
