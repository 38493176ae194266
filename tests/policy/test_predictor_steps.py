"""Which engine steps calibrate the prefill-time predictor (the live fleet and
the simulator both feed it through ``observe_step``)."""

import pytest

from ecoserve.policy import PrefillTimePredictor


def fresh() -> PrefillTimePredictor:
    return PrefillTimePredictor(coeffs=(0.0, 1e-3, 0.0))  # 1 ms a token


def test_a_lone_prompts_prefill_step_calibrates():
    p = fresh()
    p.observe_step("prefill", 100, 0.2, prompts=1)  # twice the prediction
    assert p.observations == 1 and p.correction == 1.2  # alpha 0.2 toward 2.0


def test_steps_with_decodes_do_not():
    p = fresh()
    p.observe_step("mixed", 100, 0.2, prompts=1)
    p.observe_step("decode", 0, 0.05, prompts=0)
    assert p.observations == 0 and p.correction == 1.0


def test_a_window_is_compared_with_the_sum_of_its_members_predictions():
    # Quadratic base: 4 prompts of 100 tokens are predicted 4 * (0.1 + 0.01) = 0.44 s, while one
    # prompt of 400 tokens would be 0.4 + 0.16 = 0.56 s. The step took 0.44 s: no correction.
    p = PrefillTimePredictor(coeffs=(0.0, 1e-3, 1e-6))
    p.observe_step("prefill", 400, 0.44, prompts=4)
    assert p.observations == 1 and p.correction == pytest.approx(1.0)
    p.observe_step("prefill", 400, 0.88, prompts=4)  # twice the members' sum
    assert p.correction == pytest.approx(1.2)
