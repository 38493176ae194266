"""Which engine steps calibrate the prefill-time predictor (the live fleet and
the simulator both feed it through ``observe_step``)."""

from ecoserve.policy import PrefillTimePredictor


def fresh() -> PrefillTimePredictor:
    return PrefillTimePredictor(coeffs=(0.0, 1e-3, 0.0))  # 1 ms a token


def test_a_lone_prompts_prefill_step_calibrates():
    p = fresh()
    p.observe_step("prefill", 100, 0.2, prompts=1)  # twice the prediction
    assert p.observations == 1 and p.correction == 1.2  # alpha 0.2 toward 2.0


def test_steps_with_decodes_or_several_prompts_do_not():
    p = fresh()
    p.observe_step("mixed", 100, 0.2, prompts=1)
    p.observe_step("decode", 0, 0.05, prompts=0)
    p.observe_step("prefill", 400, 0.1, prompts=4)  # a window of four short prompts: cheaper than one of 400
    assert p.observations == 0 and p.correction == 1.0
