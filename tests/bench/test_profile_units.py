"""Engine profiles as `ecoserve profile` writes them: metadata survives a
round trip, and the simulator's ProfileModel charges the measured gap between
engine steps (which step records leave out) on every step."""

from __future__ import annotations

import json

import pytest

from ecoserve.bench.profiler import ProfilePlan, kv_bytes_per_token, parse_ints
from ecoserve.sim.engine_model import ProfileModel
from ecoserve.workload import EngineProfile


def _profile(**overheads) -> EngineProfile:
    meta = {"model": "m", "hardware": "h", "source": "steps"}
    if overheads:
        meta["overheads"] = overheads
    return EngineProfile(prefill=[(16, 0.05), (512, 0.8), (2000, 5.0)], batch_sizes=[1, 8, 32],
                         context_lengths=[128, 1024], decode_seconds=[[0.03, 0.035], [0.045, 0.06], [0.09, 0.12]],
                         kv_capacity_tokens=100_000, max_context=2048, meta=meta)  # fmt: skip


def test_metadata_and_overheads_survive_a_round_trip(tmp_path):
    path = tmp_path / "p.json"
    _profile(ttft_s=0.01, step_gap_s=0.004).save(path)
    raw = json.loads(path.read_text())
    assert raw["source"] == "steps" and raw["overheads"] == {"ttft_s": 0.01, "step_gap_s": 0.004}
    back = EngineProfile.load(path)
    assert back.meta["overheads"]["step_gap_s"] == 0.004 and back.meta["source"] == "steps"
    assert back.to_json() == raw


def test_profile_model_charges_the_step_gap_once_per_step():
    plain, gapped = ProfileModel(_profile()), ProfileModel(_profile(step_gap_s=0.004))
    assert plain.step_gap == 0.0 and gapped.step_gap == 0.004
    for b, ctx in ((1, 128), (8, 8 * 600), (32, 32 * 1024)):
        assert gapped.decode_step(b, ctx) == pytest.approx(plain.decode_step(b, ctx) + 0.004)
    for chunks, b, ctx in ((((512, 0),), 0, 0), (((256, 0), (100, 0)), 0, 0), (((300, 200),), 8, 8 * 500)):
        assert gapped.step_time(chunks, b, ctx) == pytest.approx(plain.step_time(chunks, b, ctx) + 0.004)
    assert gapped.step_time((), 0, 0) == 0.0  # an empty step costs nothing
    assert gapped.prefill_points() == plain.prefill_points()  # the predictor's profile stays the engine's


def test_plan_fits_the_context_and_kv_size_from_config(tmp_path):
    plan = ProfilePlan.default(512)
    assert max(plan.prefill_lengths) == 512 - plan.decode_tokens - 1
    assert all(c + plan.decode_tokens <= 512 for c in plan.context_lengths)
    quick = ProfilePlan.default(2048, quick=True)
    assert quick.size() < plan.size() and quick.prefill_lengths[-1] == 2048 - 24 - 1
    (tmp_path / "config.json").write_text(json.dumps(
        {"num_attention_heads": 16, "hidden_size": 1024, "num_key_value_heads": 4, "num_hidden_layers": 24}))
    assert kv_bytes_per_token(tmp_path) == 2 * 24 * 4 * 64 * 2
    assert kv_bytes_per_token(tmp_path / "nope") is None
    assert parse_ints("8,1,4,4", "--x") == [1, 4, 8]
    with pytest.raises(ValueError, match="positive"):
        parse_ints("0,2", "--x")
