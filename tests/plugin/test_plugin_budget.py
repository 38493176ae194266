"""The chunked phase's in-engine budget (vllm_plugin/budget.py), without an
engine: requests are stand-ins with the fields vLLM's Request has."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ecoserve.protocol import PhaseCommand, StepRecord, decode_command, encode
from ecoserve.policy.chunk_budget import prefill_seconds
from vllm_plugin.budget import EngineBudget, predictor_from


@dataclass
class Req:  # the fields of vllm.v1.request.Request that the budget reads
    request_id: str
    num_computed_tokens: int
    num_output_tokens: int
    is_prefill_chunk: bool = False
    num_prompt_tokens: int = 0
    arrival_time: float = 0.0


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    for k in ("ECOSERVE_TPOT_SLO", "ECOSERVE_TTFT_SLO", "ECOSERVE_LOST_YIELD", "ECOSERVE_FLOOR_WITHIN_TPOT",
              "ECOSERVE_CHUNK_FLOOR", "ECOSERVE_PROFILE"):
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


def _decoder_and_prompts(b: EngineBudget, now: float):
    """A decoder that just got its first token (one TPOT of slack: the floor) and
    a 2,000-token prompt half prefilled, arrived 1 s ago; a 200-token one waits."""
    reqs = {"a": Req("a", 200, 1),
            "p": Req("p", 1000, 0, is_prefill_chunk=True, num_prompt_tokens=2000, arrival_time=now - 1.0)}  # fmt: skip
    b.note_outputs(reqs, ["a"], now=now)
    return list(reqs.values()), [Req("w", 0, 0, num_prompt_tokens=200, arrival_time=now - 0.5)]


def test_the_waiting_prompts_ttft_raises_the_budget_above_the_floor():
    slack_only = EngineBudget(2048, tpot_s=0.1, floor=64)
    running, waiting = _decoder_and_prompts(slack_only, 10.0)
    assert slack_only.prompt_budget(running, now=10.0, waiting=waiting) == 63  # no TTFT SLO: the floor
    # TTFT 2.1 s: the 1,000 tokens left of p are due in 1.1 s, and w's 200 behind them in 1.6 s; the
    # defaults' predictor says 1.18 s for p at the floor (16 steps of 63), 1.01 s in one step of the limit
    b = EngineBudget(2048, tpot_s=0.1, ttft_s=2.1, floor=64)
    running, waiting = _decoder_and_prompts(b, 10.0)
    budget = b.prompt_budget(running, now=10.0, waiting=waiting)
    assert budget > 63 and b.yielding == frozenset()
    assert prefill_seconds(1000, budget, 1, 200, b.steps) <= 1.1 - 0.02 < prefill_seconds(1000, 63, 1, 200, b.steps)
    # far from due (a 100 s TTFT): the floor again
    b.ttft_s = 100.0
    assert b.prompt_budget(running, now=10.0, waiting=waiting) == 63


@pytest.mark.parametrize("flag, yielding", [("1", {"p"}), ("0", set())])  # 0, the default: p keeps its place
def test_a_lost_prompt_yields_to_one_that_can_still_meet_its_ttft(monkeypatch, flag, yielding):
    monkeypatch.setenv("ECOSERVE_LOST_YIELD", flag)
    # TTFT 1.2 s: p is due in 0.2 s with 1,000 tokens left (lost), w in 0.7 s with 200 (saved if it goes first)
    b = EngineBudget(2048, tpot_s=0.1, ttft_s=1.2, floor=64)
    running, waiting = _decoder_and_prompts(b, 10.0)
    b.prompt_budget(running, now=10.0, waiting=waiting)
    assert b.yielding == yielding


def test_with_a_ttft_slo_both_protections_are_on_by_default(monkeypatch):
    assert not EngineBudget(2048, tpot_s=0.1).lost_yield and not EngineBudget(2048, tpot_s=0.1).floor_within_tpot
    b = EngineBudget(2048, tpot_s=0.1, ttft_s=2.0)
    assert b.lost_yield and b.floor_within_tpot
    assert b.rule().lost_yield and b.rule().floor_within_tpot
    monkeypatch.setenv("ECOSERVE_FLOOR_WITHIN_TPOT", "0")
    assert not EngineBudget(2048, tpot_s=0.1, ttft_s=2.0).floor_within_tpot
    b = EngineBudget(2048, tpot_s=0.1)
    b.command(None, None, ttft_s=2.0)  # a TTFT SLO commanded later switches the default on too
    assert b.lost_yield


def test_when_every_prompt_is_lost_none_yields(monkeypatch):
    monkeypatch.setenv("ECOSERVE_LOST_YIELD", "1")
    b = EngineBudget(2048, tpot_s=0.1, ttft_s=0.1, floor=64)  # all past due
    running, waiting = _decoder_and_prompts(b, 10.0)
    assert b.prompt_budget(running, now=10.0, waiting=waiting) == 63 and b.yielding == frozenset()


@pytest.mark.parametrize("settings, named", [
    ({"ECOSERVE_TPOT_SLO": "0"}, "ECOSERVE_TPOT_SLO"),
    ({"ECOSERVE_TPOT_SLO": "0.1", "ECOSERVE_CHUNK_FLOOR": "0"}, "ECOSERVE_CHUNK_FLOOR"),
    ({"ECOSERVE_TPOT_SLO": "0.1", "ECOSERVE_TTFT_SLO": "-1"}, "ECOSERVE_TTFT_SLO"),
    ({"ECOSERVE_TPOT_SLO": "0.1", "ECOSERVE_TTFT_SLO": "2", "ECOSERVE_LOST_YIELD": "yes"}, "ECOSERVE_LOST_YIELD"),
    ({"ECOSERVE_TPOT_SLO": "0.1", "ECOSERVE_FLOOR_WITHIN_TPOT": "2"}, "ECOSERVE_FLOOR_WITHIN_TPOT"),
])  # fmt: skip
def test_bad_settings_are_refused_at_start(monkeypatch, settings, named):
    for k, v in settings.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=named):
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
    cmd = PhaseCommand(phase="chunked", tpot_s=0.1, ttft_s=2.0)
    assert decode_command(encode(cmd)) == cmd
    cmd = PhaseCommand(phase="chunked", step_budget=128)
    assert decode_command(encode(cmd)) == cmd and b"prompt_budget" not in encode(cmd)
    for bad in (b'{"type":"set_phase","phase":"chunked","prompt_budget":0}',
                b'{"type":"set_phase","phase":"chunked","step_budget":0}',
                b'{"type":"set_phase","phase":"chunked","tpot_s":0}',
                b'{"type":"set_phase","phase":"chunked","ttft_s":0}'):  # fmt: skip
        with pytest.raises(Exception, match="Expected"):
            decode_command(bad)
