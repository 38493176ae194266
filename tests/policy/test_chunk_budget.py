"""The slack-derived chunk budget (policy/chunk_budget.py) and the step-time
predictor it inverts (policy/step_time.py), pinned at exact numbers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecoserve.policy import PrefillTimePredictor
from ecoserve.policy.chunk_budget import ChunkBudgetRule, least_slack, prefill_seconds, ttft_chunk, ttft_plan
from ecoserve.policy.step_time import DecodeStepModel, StepTimePredictor


def steps() -> StepTimePredictor:
    # prefill 10 ms + 0.1 ms a token: a chunk adds 0.1 ms a token to a decode step;
    # a decode step is 20 ms + 1 ms a sequence + 1 us a context token
    return StepTimePredictor(PrefillTimePredictor(coeffs=(0.01, 1e-4, 0.0)), DecodeStepModel((0.02, 1e-3, 1e-6)))


RULE = ChunkBudgetRule(tpot=0.1, static_budget=128, max_budget=2048)


def test_a_step_is_the_decode_step_plus_the_chunks_marginal_prefill():
    s = steps()
    assert s.step_time(0, 10, 0) == pytest.approx(0.03)
    assert s.step_time(500, 10, 10_000) == pytest.approx(0.02 + 0.01 + 0.01 + 0.05)
    assert s.step_time(500, 0, 0) == pytest.approx(0.06)  # no decodes: the lone prefill


def test_largest_chunk_is_exact_at_the_boundary():
    s = steps()
    # 0.03 s of decode + 0.1 ms a token <= 0.2 s: 1700 tokens, not 1701
    assert s.largest_chunk(10, 0, 0.2, 4096) == 1700
    assert s.largest_chunk(10, 0, 0.2, 1000) == 1000  # the cap
    assert s.largest_chunk(10, 0, 0.0301, 4096) == 1
    assert s.largest_chunk(10, 0, 0.03, 4096) == 0  # not even one token fits


def test_the_least_slack_decoder_pays_for_the_chunk_and_keeps_one_tpot():
    # 0.3 s of slack, one TPOT (0.1) kept: the step may last 0.2 s -> 1700 prompt tokens
    # (1699 in floating point: 0.3 - 0.1 < 0.2): the largest whose step fits, and one more would not
    s = steps()
    b = RULE.prompt_budget(0.3, 10, 0, s)
    assert s.step_time(b, 10, 0) <= 0.3 - 0.1 < s.step_time(b + 1, 10, 0)
    assert b in (1699, 1700)


def test_without_banked_slack_it_is_sarathis_budget_at_this_batch():
    # a request that just started holds one TPOT: nothing to spend, the static floor (128 - 10)
    assert RULE.prompt_budget(0.1, 10, 0, steps()) == 118
    assert RULE.prompt_budget(-1.0, 10, 0, steps()) == 118  # a late decoder: still never below Sarathi


def test_the_floor_can_be_sarathis_rule_at_the_actual_batch():
    rule = ChunkBudgetRule(tpot=0.1, static_budget=128, max_budget=2048, floor_tpot_share=1.0)
    # the largest chunk whose step lasts one TPOT at this batch: 0.03 + 1e-4 c <= 0.1 -> 700
    assert rule.prompt_budget(0.1, 10, 0, steps()) == 700


def test_the_floor_can_be_cut_to_a_step_within_one_tpot():
    # a 35 ms TPOT: the static floor's 118 tokens would make a 41.8 ms step; 0.03 + 1e-4 c <= 0.035 -> 50
    rule = ChunkBudgetRule(tpot=0.035, static_budget=128, max_budget=2048, floor_within_tpot=True)
    assert rule.prompt_budget(0.035, 10, 0, steps()) == 50
    assert ChunkBudgetRule(tpot=0.035, static_budget=128, max_budget=2048).prompt_budget(0.035, 10, 0, steps()) == 118
    # a 20 ms TPOT: the decodes alone take 30 ms, no cut keeps them within it: the static floor stands
    assert ChunkBudgetRule(tpot=0.02, static_budget=128, max_budget=2048, floor_within_tpot=True).prompt_budget(
        0.02, 10, 0, steps()) == 118
    # a 50 ms TPOT: the static floor's step (41.8 ms) fits: it stands
    assert ChunkBudgetRule(tpot=0.05, static_budget=128, max_budget=2048, floor_within_tpot=True).prompt_budget(
        0.05, 10, 0, steps()) == 118


def test_with_nothing_decoding_the_engines_limit():
    assert RULE.prompt_budget(None, 0, 0, steps()) == 2048


def test_least_slack_reads_tokens_and_first_token_times():
    # (tokens out, first token at): slack = tokens * TPOT + t_first - now
    assert least_slack([(3, 10.0), (1, 10.25)], 10.2, 0.1) == pytest.approx(0.1)  # 0.1 and 0.15
    assert least_slack([], 10.0, 0.1) is None


def test_bad_rules_are_refused():
    with pytest.raises(ValueError):
        ChunkBudgetRule(tpot=0.1, static_budget=4096, max_budget=2048)
    with pytest.raises(ValueError):
        ChunkBudgetRule(tpot=0.0, static_budget=128, max_budget=2048)


@given(slack=st.floats(-1, 5), batch=st.integers(0, 256), context=st.integers(0, 200_000))
def test_the_budget_stays_within_its_bounds_and_the_slack(slack, batch, context):
    s = steps()
    b = RULE.prompt_budget(slack, batch, context, s)
    assert RULE.floor(batch) <= b or batch == 0
    assert b <= max(0, RULE.max_budget - batch)
    if batch and b > RULE.floor(batch):  # above Sarathi's budget only on slack that pays for it
        assert s.step_time(b, batch, context) <= slack - RULE.tpot + 1e-12


def test_prefill_seconds_counts_full_chunks_and_the_rest():
    # 1000 tokens in chunks of 300 beside 10 decodes: 3 steps of 0.06 s and one of 0.04 s
    assert prefill_seconds(1000, 300, 10, 0, steps()) == pytest.approx(3 * 0.06 + 0.04)
    assert prefill_seconds(100, 300, 10, 0, steps()) == pytest.approx(0.04)  # one step, the prompt alone


def test_ttft_chunk_is_the_smallest_chunk_that_meets_the_deadline():
    s = steps()
    # 1000 tokens due in 0.5 s: k steps of 0.03 s + 0.1 s of prompt in all -> k <= 13 -> chunk 77 (13 steps)
    c = ttft_chunk([(1000, 0.5)], 10, 0, s, 2038)
    assert prefill_seconds(1000, c, 10, 0, s) <= 0.5 < prefill_seconds(1000, c - 1, 10, 0, s)
    assert c == 77


def test_a_prompt_behind_another_needs_the_tokens_ahead_of_it():
    s = steps()
    alone = ttft_chunk([(200, 0.5)], 10, 0, s, 2038)
    behind = ttft_chunk([(800, 30.0), (200, 0.5)], 10, 0, s, 2038)  # the first has time; the second waits for it
    assert behind == ttft_chunk([(1000, 0.5)], 10, 0, s, 2038) > alone


def test_a_lost_prompt_asks_for_nothing_but_still_comes_first():
    s = steps()
    # 5000 tokens due in 0.1 s: lost even at the cap; the one behind it is lost too (its 5000 tokens come first)
    assert ttft_chunk([(5000, 0.1)], 10, 0, s, 2038) == 0
    assert ttft_chunk([(5000, 0.1), (10, 0.5)], 10, 0, s, 2038) == 0
    assert ttft_chunk([(100, -1.0), (100, 0.5)], 10, 0, s, 2038) == ttft_chunk([(200, 0.5)], 10, 0, s, 2038)


def test_with_lost_yield_a_lost_prompt_stops_holding_the_others_back():
    s = steps()
    waiting = [(5000, 0.1), (1000, 0.2)]  # the first is lost at any chunk
    assert ttft_plan(waiting, 10, 0, s, 2038) == (0, [0, 1])  # in order: the second waits for its 5000 tokens
    assert ttft_plan(waiting, 10, 0, s, 2038, lost_yield=True) == (334, [0])  # it goes first: chunks of 334
    rule = ChunkBudgetRule(tpot=0.1, static_budget=128, max_budget=2048, lost_yield=True)
    assert rule.plan(0.1, 10, 0, s, waiting) == (334, [0])
    assert rule.plan(None, 0, 0, s, waiting) == (2048, [0])  # nothing decodes: the ceiling, and still who is lost


def test_the_waiting_prompts_raise_the_budget_over_a_decoder_without_slack():
    s = steps()
    # a decoder that just started (one TPOT of slack) gives the floor, 118; a prompt due soon needs more
    assert RULE.prompt_budget(0.1, 10, 0, s, [(1000, 100.0)]) == 118  # far from due: no more than the floor
    # due in 0.2 s: 0.1 s of prompt leaves 0.1 s for 3 steps' decodes -> chunks of 334
    need = ttft_chunk([(1000, 0.2)], 10, 0, s, 2038)
    assert need == 334 and RULE.prompt_budget(0.1, 10, 0, s, [(1000, 0.2)]) == 334
    assert RULE.prompt_budget(2.0, 10, 0, s, [(1000, 0.2)]) == 2038  # slack that pays for more: the slack's  # slack that pays for more: the slack's


@given(waiting=st.lists(st.tuples(st.integers(0, 3000), st.floats(-1, 10)), max_size=8),
       batch=st.integers(1, 64), cap=st.integers(1, 2048))
def test_ttft_chunk_meets_every_deadline_that_the_cap_meets(waiting, batch, cap):
    s = steps()
    c = ttft_chunk(waiting, batch, 0, s, cap)
    assert 0 <= c <= cap
    ahead = 0
    for left, due in waiting:
        ahead += left
        if due > 0 and prefill_seconds(ahead, cap, batch, 0, s) <= due:  # reachable at all: reached at c
            assert c > 0 and prefill_seconds(ahead, c, batch, 0, s) <= due


def test_the_decode_model_fits_a_grid_and_learns_from_decode_steps():
    pts = [(b, b * c, 0.02 + 1e-3 * b + 1e-6 * b * c) for b in (1, 8, 64) for c in (128, 1024)]
    m = DecodeStepModel.fit(pts)
    assert m.coeffs == pytest.approx((0.02, 1e-3, 1e-6), rel=1e-6)
    m.observe(8, 8 * 128, 2 * m.base(8, 8 * 128))
    assert m.correction == pytest.approx(1.2)  # alpha 0.2 toward 2


def test_mixed_steps_correct_only_the_chunk_part():
    s = steps()
    # decode part predicted 0.03 s, chunk part 0.05 s; the step took 0.13 s: the chunk cost twice its prediction
    s.observe_step(500, 10, 0, 0.13)
    assert s.chunk_correction == pytest.approx(1.2)
    assert s.decode.correction == 1.0 and s.prefill.correction == 1.0
