"""Workloads: arrival statistics, length means, traces, determinism, profiles."""

from __future__ import annotations

import json
import random

import pytest

from ecoserve.policy import PrefillTimePredictor
from ecoserve.workload import (
    DATASETS,
    ClippedLogNormal,
    EngineProfile,
    WorkloadTemplate,
    default_azure_path,
    empirical_cv,
    fit_to_context,
    gamma_arrivals,
    load_mooncake_jsonl,
    load_profile,
    load_trace,
    poisson_arrivals,
    replay_times,
)

N = 20_000


def _gaps(times):
    return [b - a for a, b in zip([0.0] + times, times)]


def test_poisson_rate_and_cv():
    times = poisson_arrivals(N, 4.0, random.Random(1))
    assert len(times) / times[-1] == pytest.approx(4.0, rel=0.03)
    assert empirical_cv(times) == pytest.approx(1.0, abs=0.04)


@pytest.mark.parametrize("cv", [0.5, 1.2, 1.5, 2.0])
def test_gamma_rate_and_cv(cv):
    times = gamma_arrivals(N, 10.0, cv, random.Random(2))
    assert len(times) / times[-1] == pytest.approx(10.0, rel=0.05)
    assert empirical_cv(times) == pytest.approx(cv, rel=0.06)


def test_arrivals_reject_bad_parameters():
    with pytest.raises(ValueError):
        gamma_arrivals(10, 1.0, 0.0, random.Random(0))
    with pytest.raises(ValueError):
        poisson_arrivals(10, -1.0, random.Random(0))


def test_replay_time_scaling_hits_the_rate_and_keeps_shape():
    times = [0.0, 1.0, 1.5, 4.0, 5.0]  # native rate 4 / 5 s = 0.8 req/s
    assert replay_times(times) == times
    fast = replay_times(times, 8.0)
    assert (len(fast) - 1) / fast[-1] == pytest.approx(8.0)
    assert [b / fast[-1] for b in fast] == pytest.approx([t / 5.0 for t in times])


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_synthetic_length_means_match_the_paper(name):
    dist = DATASETS[name]
    pairs = dist.sample(N, random.Random(3))
    mp, mo = dist.expected_means()
    assert sum(p for p, _ in pairs) / N == pytest.approx(mp, rel=0.03)
    assert sum(o for _, o in pairs) / N == pytest.approx(mo, rel=0.03)
    assert all(dist.prompt.lo <= p <= dist.prompt.hi and dist.output.lo <= o <= dist.output.hi for p, o in pairs)


def test_paper_means_are_the_targets():
    assert DATASETS["alpaca"].expected_means() == (20.63, 163.80)
    assert DATASETS["sharegpt"].expected_means() == (343.76, 237.20)
    assert DATASETS["longbench"].expected_means() == (2686.89, 101.78)


def test_clipped_lognormal_mean_is_exact_in_closed_form():
    d = ClippedLogNormal(300.0, 1.2, 4, 2000)
    assert d.clipped_mean(d.mu, d.sigma, d.lo, d.hi) == pytest.approx(300.0, rel=1e-9)


def test_fit_to_context_truncates_the_prompt():
    assert fit_to_context(100, 50, 2048) == (100, 50)
    assert fit_to_context(3000, 100, 2048) == (1948, 100)
    assert fit_to_context(10, 5000, 2048) == (10, 1024)


def test_template_is_deterministic_and_rates_share_the_pattern():
    a = WorkloadTemplate("sharegpt", num_requests=200, seed=7)
    b = WorkloadTemplate("sharegpt", num_requests=200, seed=7)
    c = WorkloadTemplate("sharegpt", num_requests=200, seed=8)
    assert a.at_rate(2.0) == b.at_rate(2.0)
    assert a.at_rate(2.0) != c.at_rate(2.0)
    slow, fast = a.at_rate(1.0), a.at_rate(4.0)
    assert [r.arrival for r in slow] == pytest.approx([4 * r.arrival for r in fast])
    assert [(r.prompt_tokens, r.output_tokens) for r in slow] == [(r.prompt_tokens, r.output_tokens) for r in fast]


def test_template_extends_without_changing_its_prefix():
    t = WorkloadTemplate("alpaca", num_requests=50, seed=1)
    first = t.at_rate(3.0)
    more = t.at_rate(3.0, 500)
    assert more[:50] == first and len(more) == 500
    assert t.count_for(10.0, min_duration=30) == 300
    assert t.count_for(0.5, min_duration=30) == 50


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown dataset"):
        WorkloadTemplate("no-such-dataset")


def test_mooncake_jsonl(tmp_path):
    p = tmp_path / "trace.jsonl"
    rows = [{"timestamp": 2000, "input_length": 10, "output_length": 3, "hash_ids": [1]},
            {"timestamp": 0, "input_length": 5, "output_length": 0}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    t = load_mooncake_jsonl(p)
    assert t.times == [0.0, 2.0] and t.prompts == [5, 10] and t.outputs == [1, 3]
    assert load_trace(p).times == t.times
    tpl = WorkloadTemplate(str(p))
    assert tpl.replay and [r.arrival for r in tpl.at_rate(None)] == [0.0, 2.0]


def test_azure_csv_parsing(tmp_path):
    p = tmp_path / "mini.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                 "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n")
    t = load_trace(p)
    assert t.times == pytest.approx([0.0, 4.314579]) and t.prompts == [374, 396] and t.outputs == [44, 109]


def test_the_azure_trace_matches_its_readme(tmp_path):
    import gzip

    path = default_azure_path()  # shipped gzipped in the package (ecoserve/workload/data/)
    t = load_trace(path)
    assert t.name == "azure_llm_conv_2023"
    plain = tmp_path / "azure.csv"  # a user's PATH, plain or gzipped, reads the same
    raw = path.read_bytes()
    plain.write_bytes(gzip.decompress(raw) if path.suffix == ".gz" else raw)
    assert load_trace(plain).times == t.times
    assert 19_000 < len(t) < 19_500
    assert sum(t.prompts) / len(t) == pytest.approx(1155, rel=0.01)
    assert sum(t.outputs) / len(t) == pytest.approx(211, rel=0.01)
    assert 3400 < t.duration < 3600
    emp = WorkloadTemplate("azure", replay=False, num_requests=5000, seed=0)
    assert emp.mean_lengths()[0] == pytest.approx(1155, rel=0.05)


def test_profile_round_trip_feeds_the_predictor(tmp_path):
    from ecoserve.sim import RooflineModel

    model = RooflineModel("codellama-34b", "l20", 4)
    path = tmp_path / "p.json"
    model.to_profile().save(path)
    points = load_profile(path)
    pred = PrefillTimePredictor(points=points)
    for n in (100, 512, 3000):
        assert pred.predict(n) == pytest.approx(model.prefill_time(n), rel=0.05)  # piecewise-linear between points
    prof = EngineProfile.load(path)
    assert prof.decode_time(32, 1024) == pytest.approx(model.decode_step(32, 32 * 1024), rel=1e-6)
    assert prof.decode_time(20, 700) == pytest.approx(model.decode_step(20, 20 * 700), rel=0.03)


def test_malformed_profiles_are_rejected(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"format": "ecoserve-profile/v1", "prefill": [[1, 0.1]], "kv_capacity_tokens": 10,
                             "decode": {"batch_sizes": [1, 1], "context_lengths": [1], "seconds": [[0.1], [0.1]]}}))
    with pytest.raises(ValueError, match="strictly increasing"):
        EngineProfile.load(p)
    p.write_text(json.dumps({"prefill": []}))
    with pytest.raises(ValueError, match="not an engine profile"):
        EngineProfile.load(p)
