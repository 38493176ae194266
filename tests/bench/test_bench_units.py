"""`ecoserve bench` pieces: exact prompt lengths, open-loop sending, failures
counted, and the CLI's JSON shapes (against the FakeEngine: plumbing only; the
real-engine test is tests/bench/test_bench_engine.py)."""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner

from ecoserve.bench.loadgen import run_load
from ecoserve.bench.prompts import PromptSynthesizer
from ecoserve.cli import main
from ecoserve.testing.fake_engine import FakeEngineThread
from ecoserve.workload.workload import Request


@pytest.fixture(scope="module")
def synth(tiny_model):
    return PromptSynthesizer.from_path(tiny_model, seed=1)


@pytest.mark.parametrize("n", [2, 3, 7, 64, 333, 1500])
def test_text_prompts_have_exact_token_counts(synth, n):
    text = synth.text(n)
    assert synth.count(text) == n
    assert synth.count(synth.text(n)) == n  # and the next one, different words
    assert len(synth.token_ids(n)) == n


def test_prompts_differ_from_the_first_token(synth):
    a, b = synth.text(200), synth.text(200)
    assert a.split()[:4] != b.split()[:4]  # no shared prefix for the prefix cache to reuse


@pytest.mark.parametrize("form", ["text", "ids"])
def test_prompts_share_exactly_the_blocks_their_hashes_share(synth, form):
    # Mooncake's and the chat generator's block hashes become real shared prefixes.
    tok = synth.tok
    ids = (lambda p: p) if form == "ids" else (lambda p: tok(p, add_special_tokens=True)["input_ids"])
    a = ids(synth.make(1100, form, blocks=(7, 8)))
    b = ids(synth.make(1300, form, blocks=(7, 8, 9)))
    c = ids(synth.make(1100, form, blocks=(7, 5)))
    assert (len(a), len(b), len(c)) == (1100, 1300, 1100)
    head = synth.special if form == "text" else 0
    assert a[: head + 1024] == b[: head + 1024] and a[head + 1024 :] != b[head + 1024 : head + 1100]
    assert a[: head + 512] == c[: head + 512] and a[head + 512 : head + 1024] != c[head + 512 : head + 1024]
    short = ids(synth.make(512 + head, form, blocks=(7,)))  # no room for the block and a fresh last token
    assert short[head : head + 8] != a[head : head + 8]
    again = PromptSynthesizer(tok, seed=1)  # another run: new salt, nothing shared with this one
    assert ids(again.make(1100, form, blocks=(7, 8)))[head : head + 64] != a[head : head + 64]


def test_too_short_text_prompt_is_a_clear_error(synth):
    with pytest.raises(ValueError, match="at least"):
        synth.text(synth.special)


@pytest.fixture
def fake():
    bg = FakeEngineThread(token_interval=0.005, prefill_delay=0.3)
    yield bg
    bg.close()


def test_requests_go_out_at_their_arrival_times_not_after_completions(fake):
    # Each request takes >= 0.3 s; arrivals 0.05 s apart. A closed loop would
    # send the second only after the first finished.
    reqs = [Request(f"r{i}", 0.05 * i, 8, 10) for i in range(6)]
    res = asyncio.run(run_load(fake.url, "fake-model", reqs, [list(range(8))] * 6))
    assert res.errors == {}
    assert res.max_send_lag_s < 0.05
    first_finish = min(o.finish for o in res.outcomes)
    assert all(o.sent < first_finish for o in res.outcomes)
    assert all(r.ttft >= 0.3 for r in res.records)
    assert all(r.finished and r.output_tokens == 10 for r in res.records)
    assert res.length_mismatches == 0
    body = fake.engine.requests[0]
    assert body["ignore_eos"] is True and body["max_tokens"] == 10 and body["stream"] is True


def test_failures_are_counted_not_dropped(fake):
    reqs = [Request(f"r{i}", 0.0, 4, 3) for i in range(4)]
    res = asyncio.run(run_load(fake.url, "no-such-model", reqs, [[1, 2, 3, 4]] * 4))
    assert res.errors == {"http 404": 4}
    assert "no-such-model" in res.first_error
    assert len(res.records) == 4 and not any(r.finished for r in res.records)


def test_length_mismatch_is_reported(fake):
    reqs = [Request("r0", 0.0, 5, 3)]  # asks for 5 prompt tokens, sends 4
    res = asyncio.run(run_load(fake.url, "fake-model", reqs, [[1, 2, 3, 4]]))
    assert res.errors == {} and res.length_mismatches == 1


def test_bench_run_json_has_the_simulate_run_shape(fake, tiny_model):
    args = ["bench", "run", "--base-url", fake.url, "--tokenizer", str(tiny_model), "--prompt-form", "ids",
            "--dataset", "alpaca", "--rate", "20", "--num-requests", "12", "--slo-ttft", "1", "--slo-tpot", "0.05",
            "--max-context", "300", "--json", "--no-progress"]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    for key in ("policy", "rate", "num_requests", "attainment", "ttft", "tpot", "finished", "config", "workload"):
        assert key in out
    assert set(out["ttft"]) >= {"p50", "p90", "p99"} and set(out["tpot"]) >= {"p50", "p90", "p99"}
    assert out["num_requests"] == 12 and out["finished"] == 12 and out["stats"]["failed"] == 0
    assert out["stats"]["length_mismatches"] == 0
    assert out["ttft"]["p50"] >= 0.3 and out["attainment"] == 1.0
    assert out["workload"]["dataset"] == "alpaca"
    assert out["workload"]["truncated_to_context"] > 0 and "clipped" in out["workload"]["note"]


def test_bench_sweep_json_has_the_simulate_sweep_shape(fake, tiny_model):
    args = ["bench", "sweep", "--base-url", fake.url, "--tokenizer", str(tiny_model), "--prompt-form", "ids",
            "--dataset", "alpaca", "--rates", "10,20", "--num-requests", "6", "--slo-ttft", "0.2",
            "--slo-tpot", "0.05", "--max-context", "300", "--label", "fake", "--json", "--no-progress"]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    (res,) = out["results"]
    assert res["policy"] == "fake"
    assert set(res["goodput_rps"]) == {"p50", "p90"}
    # prefill_delay 0.3 s > TTFT SLO 0.2 s: nothing meets it, goodput is 0 at every level
    assert res["goodput_rps"] == {"p50": 0.0, "p90": 0.0}
    assert [p["rate"] for p in res["points"]] == [10.0, 20.0]


def test_bench_needs_a_rate_for_synthetic_data(fake, tiny_model):
    r = CliRunner().invoke(main, ["bench", "run", "--base-url", fake.url, "--tokenizer", str(tiny_model)])
    assert r.exit_code != 0 and "--rate is required" in r.output


def test_bench_reports_an_unreachable_server_clearly(tiny_model):
    r = CliRunner().invoke(main, ["bench", "run", "--base-url", "http://127.0.0.1:9", "--tokenizer",
                                  str(tiny_model), "--rate", "1"])  # fmt: skip
    assert r.exit_code != 0 and "cannot reach" in r.output
