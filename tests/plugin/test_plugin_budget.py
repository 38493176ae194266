"""The chunked phase's in-engine budget (vllm_plugin/budget.py), without an
engine: requests are stand-ins with the fields vLLM's Request has."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ecoserve.protocol import PhaseCommand, StepRecord, decode_command, encode
from vllm_plugin.budget import EngineBudget, predictor_from


@dataclass
class Req:  # the fields of vllm.v1.request.Request that the budget reads
    request_id: str
    num_computed_tokens: int
    num_output_tokens: int
    is_prefill_chunk: bool = False


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    for k in ("ECOSERVE_TPOT_SLO", "ECOSERVE_CHUNK_FLOOR", "ECOSERVE_PROFILE"):
        monkeypatch.delenv(k, raising=False)


def test_without_an_slo_or_a_command_there_is_no_budget():
    assert EngineBudget(2048).prompt_budget([Req("a", 100, 3)], now=10.0) is None


def test_a_commanded_budget_is_the_budget_until_an_slo_replaces_it():
    b = EngineBudget(2048)
    b.command(256, None)
    assert b.prompt_budget([], now=0.0) == 256 and b.last == 256
    b.command(None, 0.1)  # an SLO, no fixed budget: the rule
    assert b.prompt_budget([], now=0.0) == 2048  # nothing decodes: the limit


def test_the_rule_reads_first_token_times_and_output_counts():
    b = EngineBudget(2048, tpot_s=0.1, floor=64)
    reqs = {"a": Req("a", 200, 1), "p": Req("p", 50, 0, is_prefill_chunk=True)}
    b.note_outputs(reqs, ["a", "p"], now=10.0)  # a got its first token at 10.0
    # at 10.0 a holds exactly one TPOT: nothing to spend, the floor less one decode
    assert b.prompt_budget(list(reqs.values()), now=10.0) == 63
    # 9 tokens later and well ahead of them (0.9 s of deadlines at 10.2): 0.7 s of slack to spend
    reqs["a"].num_output_tokens = 10
    budget = b.prompt_budget(list(reqs.values()), now=10.2)
    assert budget > 63 and b.steps.step_time(budget, 1, 200) <= 1.0 + 10.0 - 10.2 - 0.1 + 1e-9


def test_bad_settings_are_refused_at_start(monkeypatch):
    monkeypatch.setenv("ECOSERVE_TPOT_SLO", "0")
    with pytest.raises(ValueError, match="ECOSERVE_TPOT_SLO"):
        EngineBudget(2048)
    monkeypatch.setenv("ECOSERVE_TPOT_SLO", "0.1")
    monkeypatch.setenv("ECOSERVE_CHUNK_FLOOR", "0")
    with pytest.raises(ValueError, match="ECOSERVE_CHUNK_FLOOR"):
        EngineBudget(2048)


def test_finished_requests_are_forgotten():
    b = EngineBudget(2048, tpot_s=0.1)
    live = {}
    for i in range(200):
        b.note_outputs({f"r{i}": Req(f"r{i}", 10, 1)}, [f"r{i}"], now=float(i))
    b.note_outputs(live, [], now=300.0)
    assert len(b._first) <= 2 * len(live) + 64


def test_the_predictor_learns_from_the_engines_steps():
    b = EngineBudget(2048, tpot_s=0.1)
    before = b.steps.decode.correction
    b.observe(StepRecord(step=1, start=0.0, duration_s=0.2, kind="decode", prefill_tokens=0, prefill_reqs=0,
                         decode_batch=4, decode_context_tokens=400))  # fmt: skip
    assert b.steps.decode.correction != before


def test_a_profile_starts_the_predictor(tmp_path):
    from ecoserve.workload import EngineProfile

    prof = EngineProfile(prefill=[(1, 0.01), (512, 0.3), (2048, 1.5)], batch_sizes=[1, 8, 32],
                         context_lengths=[128, 1024], decode_seconds=[[0.02, 0.022], [0.03, 0.04], [0.06, 0.1]],
                         kv_capacity_tokens=100_000)  # fmt: skip
    path = tmp_path / "p.json"
    prof.save(path)
    steps = predictor_from(str(path))
    assert steps.prefill.predict(512) == pytest.approx(0.3)
    assert steps.decode.predict(8, 8 * 1024) == pytest.approx(0.04, rel=0.3)  # a plane through the grid


def test_a_step_budget_counts_the_decodes_as_sarathi_does():
    b = EngineBudget(2048, tpot_s=0.1)
    b.command(None, None, step_budget=48)  # a fixed budget wins over the rule
    reqs = [Req(f"d{i}", 100, 5) for i in range(10)] + [Req("p", 30, 0, is_prefill_chunk=True)]
    assert b.prompt_budget(reqs, now=0.0) == 38 and b.last == 38  # 48 less 10 decodes
    assert b.prompt_budget([Req(f"d{i}", 100, 5) for i in range(60)], now=0.0) == 0  # the decodes take it all
    b.command(96, None, step_budget=48)
    assert b.prompt_budget(reqs, now=0.0) == 96  # prompt tokens, fixed, win over tokens per step
    b.command(None, 0.1)  # an SLO alone: back to the rule
    assert b.commanded_step is None and b.prompt_budget([], now=0.0) == 2048


def test_the_chunked_phase_command_round_trips_and_is_checked():
    cmd = PhaseCommand(phase="chunked", prompt_budget=128, tpot_s=0.1)
    assert decode_command(encode(cmd)) == cmd
    cmd = PhaseCommand(phase="chunked", step_budget=128)
    assert decode_command(encode(cmd)) == cmd and b"prompt_budget" not in encode(cmd)
    for bad in (b'{"type":"set_phase","phase":"chunked","prompt_budget":0}',
                b'{"type":"set_phase","phase":"chunked","step_budget":0}',
                b'{"type":"set_phase","phase":"chunked","tpot_s":0}'):  # fmt: skip
        with pytest.raises(Exception, match="Expected"):
            decode_command(bad)
