"""vLLM's own client (`vllm bench serve`, through ecoserve.bench.vllm_bench)
against a stand-in engine, read back into our runs' shape: the cross-check of
bench/compare_real.py depends on both."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ecoserve.bench.vllm_bench import read_summary, send_times, summarize
from ecoserve.testing.fake_engine import FakeEngineThread


def _bench(url: str, tokenizer, out_dir, name: str, slo_ttft_ms: float, n: int = 8, rate: float = 20) -> dict:
    cmd = [sys.executable, "-m", "ecoserve.bench.vllm_bench", "--backend", "openai", "--base-url", url,
           "--endpoint", "/v1/completions", "--model", "fake-model", "--tokenizer", str(tokenizer),
           "--dataset-name", "random", "--random-input-len", "16", "--random-output-len", "6",
           "--random-range-ratio", "0", "--num-prompts", str(n), "--request-rate", f"{rate:g}", "--ignore-eos",
           "--seed", "0", "--percentile-metrics", "ttft,tpot", "--metric-percentiles", "50,90,99",
           "--goodput", f"ttft:{slo_ttft_ms:g}", "tpot:10000", "--save-result", "--result-dir", str(out_dir),
           "--result-filename", name, "--disable-tqdm"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return read_summary(out_dir / name, n)


def test_vllm_bench_serve_measures_a_server_and_its_goodput_reads_back(tmp_path, engine, tiny_model):
    loose = _bench(engine, tiny_model, tmp_path, "loose.json", slo_ttft_ms=60_000)
    assert loose["completed"] == 8 and loose["failed"] == 0
    assert loose["attainment"] == 1.0
    assert 0 < loose["ttft"]["p50"] <= loose["ttft"]["p90"] <= loose["ttft"]["p99"]
    # A TTFT SLO no request can meet: the same runs count as not good.
    tight = _bench(engine, tiny_model, tmp_path, "tight.json", slo_ttft_ms=0.001)
    assert tight["completed"] == 8 and tight["attainment"] == 0.0


def test_summarize_counts_good_requests_over_all_sent_and_needs_goodput():
    result = {"request_goodput": 1.5, "duration": 4.0, "completed": 9, "failed": 1,
              "p50_ttft_ms": 200.0, "p90_ttft_ms": 900.0, "p50_tpot_ms": 40.0, "p90_tpot_ms": 80.0}  # fmt: skip
    s = summarize(result, 10)
    assert s["attainment"] == 0.6  # 1.5 req/s x 4 s = 6 good of 10 sent
    assert s["ttft"] == {"p50": 0.2, "p90": 0.9} and s["tpot"] == {"p50": 0.04, "p90": 0.08}
    with pytest.raises(ValueError, match="--goodput"):
        summarize({**result, "request_goodput": None}, 10)


def test_send_times_are_vllm_bench_serves_own_schedule(tmp_path, tiny_model):
    """The schedule our client replays for the cross-check is the one vLLM's client
    really sends on: the gaps a stand-in engine sees match send_times' gaps."""
    n, rate = 12, 4.0
    fake = FakeEngineThread(honour_phases=False)
    try:
        _bench(fake.url, tiny_model, tmp_path, "sched.json", slo_ttft_ms=60_000, n=n, rate=rate)
        seen = fake.engine.arrivals[-n:]  # after vLLM's one-prompt test run
    finally:
        fake.close()
    want = send_times(n, rate, seed=0)
    got_gaps = [b - a for a, b in zip(seen, seen[1:])]
    want_gaps = [b - a for a, b in zip(want, want[1:])]
    # sends are sleeps on one event loop, late by a few ms on a quiet host (more on a
    # loaded CI box); another seed's sample is off by 0.45 s in its worst gap
    assert max(abs(g - w) for g, w in zip(got_gaps, want_gaps)) < 0.08, (got_gaps, want_gaps)
    other = send_times(n, rate, seed=1)
    other_gaps = [b - a for a, b in zip(other, other[1:])]
    assert max(abs(g - w) for g, w in zip(other_gaps, want_gaps)) > 0.3
    assert abs(want[-1] - n / rate) < 1e-9  # vLLM rescales the last send to n / rate


def test_send_times_rejects_what_vllm_bench_would_not_run():
    with pytest.raises(ValueError):
        send_times(0, 1.0)
    with pytest.raises(ValueError):
        send_times(5, 0.0)
