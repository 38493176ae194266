"""``ecoserve simulate`` through click's CliRunner: the JSON contracts of docs/ARCHITECTURE.md."""

from __future__ import annotations

import json

from click.testing import CliRunner

from ecoserve.cli.simulate import simulate

FAST = ["--num-requests", "60", "--instances", "2"]


def invoke(*args):
    res = CliRunner().invoke(simulate, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.stdout  # results only: progress goes to stderr


def test_run_json_shape():
    out = json.loads(invoke("run", "--policy", "ecoserve", "--rate", "3", "--json", *FAST))
    assert out["policy"] == "ecoserve" and out["rate"] == 3.0 and out["num_requests"] == 60
    assert 0.0 <= out["attainment"] <= 1.0
    for key in ("ttft", "tpot"):
        assert set(out[key]) >= {"p50", "p90", "p99"} and all(isinstance(out[key][p], float) for p in ("p50", "p90", "p99"))


def test_run_every_policy_and_human_output():
    for policy in ("vllm", "sarathi", "distserve", "mooncake", "round-robin", "least-loaded"):
        out = json.loads(invoke("run", "--policy", policy, "--rate", "2", "--json", "--dataset", "alpaca", *FAST))
        assert out["policy"] == policy and out["finished"] == 60
    text = invoke("run", "--policy", "vllm", "--rate", "2", *FAST)
    assert "SLO attainment" in text and "TTFT" in text


def test_sweep_json_shape_and_plot(tmp_path):
    png = tmp_path / "a.png"
    out = json.loads(invoke("sweep", "--policies", "ecoserve,vllm", "--json", "--min-duration", "5",
                            "--tolerance", "0.25", "--plot", str(png), "--dataset", "alpaca", *FAST))
    assert [r["policy"] for r in out["results"]] == ["ecoserve", "vllm"]
    for r in out["results"]:
        assert set(r["goodput_rps"]) == {"p50", "p90", "p99"}
        assert r["goodput_rps"]["p50"] >= r["goodput_rps"]["p90"] >= r["goodput_rps"]["p99"] >= 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_errors_are_usage_errors():
    res = CliRunner().invoke(simulate, ["run", "--policy", "vllm"])
    assert res.exit_code != 0 and "--rate is required" in res.output
    res = CliRunner().invoke(simulate, ["run", "--rate", "1", "--dataset", "nope"])
    assert res.exit_code != 0 and "unknown dataset" in res.output
    res = CliRunner().invoke(simulate, ["sweep", "--policies", "ecoserve,foo"])
    assert res.exit_code != 0 and "unknown policies" in res.output


def test_export_profile_then_simulate_with_it(tmp_path):
    path = tmp_path / "p.json"
    invoke("export-profile", "--model", "qwen2-72b", str(path))
    out = json.loads(invoke("run", "--policy", "ecoserve", "--rate", "1", "--model", str(path), "--json", *FAST))
    assert out["finished"] == 60
    assert "l20" in invoke("presets")
