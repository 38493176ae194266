"""The slack-derived chunk budget (policy/chunk_budget.py) and the step-time
predictor it inverts (policy/step_time.py), pinned at exact numbers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecoserve.policy import PrefillTimePredictor
from ecoserve.policy.chunk_budget import ChunkBudgetRule, least_slack
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
