"""`ecoserve bench run --timeline`: a benchmarked run's engine timelines, as the
EcoServe server under test recorded them; refused up front for a server that
keeps none (stock vLLM, a router)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from ecoserve.cli import main
from ecoserve.timeline import decode

KEY = "bench-key"


def _bench(url: str, tiny_model, *extra: str):
    args = ["bench", "run", "--base-url", url, "--tokenizer", str(tiny_model), "--prompt-form", "ids",
            "--dataset", "alpaca", "--rate", "20", "--num-requests", "10", "--slo-ttft", "2", "--slo-tpot", "0.5",
            "--max-context", "300", "--json", "--quiet", *extra]  # fmt: skip
    return CliRunner().invoke(main, args)


def test_bench_run_writes_the_servers_timeline_of_the_run(start_fake_engine, start_serve, tmp_path, tiny_model):
    fakes = [start_fake_engine(token_interval=0.01, prefill_delay=0.05, decode_steps=True) for _ in range(2)]
    serve = start_serve([a for f in fakes for a in ("--engine-url", f.url)] + ["--api-key", KEY], tmp_path)
    try:
        serve.wait_ready(60)
        before = _bench(serve.url, tiny_model, "--api-key", KEY)  # an earlier run: not in the next one's timeline
        assert before.exit_code == 0, before.output
        r = _bench(serve.url, tiny_model, "--api-key", KEY, "--timeline", str(tmp_path / "t.json"))
        assert r.exit_code == 0, r.output
        out = json.loads(r.stdout)
        doc = decode((tmp_path / "t.json").read_bytes())
        assert out["timeline"] == str(tmp_path / "t.json")
        assert doc.source == "benchmark" and "20 req/s" in doc.title
        assert len(doc.marks) == 10 and len(doc.latencies) == 10  # this run's requests, not the earlier run's
        assert {s.kind for s in doc.segments} == {"prefill", "decode"}
        assert {e for m in doc.macros for e in m.engines} == {"engine-0", "engine-1"}
        r = _bench(serve.url, tiny_model, "--api-key", KEY, "--timeline", str(tmp_path / "t.html"))
        assert r.exit_code == 0 and "ecoserve-timeline/v1" in (tmp_path / "t.html").read_text()
        r = _bench(serve.url, tiny_model, "--api-key", KEY, "--timeline", str(tmp_path / "t.txt"))
        assert r.exit_code == 2 and "FILE.html, FILE.png or FILE.json" in r.output
    finally:
        serve.kill()
        for f in fakes:
            f.stop()


def test_bench_run_timeline_needs_an_ecoserve_server(start_fake_engine, tmp_path, tiny_model):
    with start_fake_engine() as stock:  # a stand-in vLLM: no /ecoserve/timeline
        r = _bench(stock.url, tiny_model, "--timeline", str(tmp_path / "t.html"))
    assert r.exit_code == 2
    assert "needs an EcoServe server" in r.output and "404" in r.output
    assert not (tmp_path / "t.html").exists()
