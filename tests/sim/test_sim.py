"""Simulator sanity: exact timings on tiny cases, invariants on real workloads,
determinism, and the equivalence of fast-forwarding with step-by-step runs."""

from __future__ import annotations

import pytest

from ecoserve.policy import OverallScheduler
from ecoserve.sim import RooflineModel, SimConfig, build, candidates, simulate
from ecoserve.workload import Request, WorkloadTemplate

ALL = ("ecoserve", "vllm", "sarathi", "distserve", "mooncake", "round-robin", "least-loaded")


def cfg(policy, **kw):
    kw.setdefault("instances", 2 if policy != "mooncake" else 3)
    if policy == "mooncake":
        kw.setdefault("pd_ratio", (1, 2))
    if policy == "sarathi":
        kw.setdefault("chunk_size", 512)
    return SimConfig(policy=policy, **kw)


def run_states(c, requests):
    cluster = build(c)
    return cluster, cluster.sim.run(requests)


@pytest.fixture(scope="module")
def workload():
    return WorkloadTemplate("sharegpt", num_requests=120, seed=5).at_rate(6.0)


@pytest.mark.parametrize("policy", ["ecoserve", "vllm", "sarathi", "round-robin"])
def test_one_request_ttft_is_the_modelled_prefill(policy):
    c = SimConfig(policy=policy, instances=1, chunk_size=4096 if policy == "sarathi" else None)
    model = RooflineModel("codellama-34b", "l20", 4)
    _, (r,) = run_states(c, [Request("a", 1.0, 700, 5)])
    assert r.first_token - r.arrival == pytest.approx(model.prefill_time(700), rel=1e-12)
    # then four decode steps of a batch of one at growing context
    t = r.first_token
    for k in range(4):
        t += model.decode_step(1, 700 + k + 1)
    assert r.finish == pytest.approx(t, rel=1e-12)
    assert r.generated == 5


def test_sarathi_chunks_a_long_prompt():
    model = RooflineModel("codellama-34b", "l20", 4)
    c = SimConfig(policy="sarathi", instances=1, chunk_size=512)
    _, (r,) = run_states(c, [Request("a", 0.0, 1000, 2)])
    expect = model.step_time([(512, 0)], 0, 0) + model.step_time([(488, 512)], 0, 0)
    assert r.first_token == pytest.approx(expect, rel=1e-12)


@pytest.mark.parametrize("policy", ALL)
def test_every_request_finishes_with_its_exact_length(policy, workload):
    cluster, states = run_states(cfg(policy), workload)
    assert all(s.finish is not None and s.generated == s.output for s in states)
    assert all(s.first_token >= s.arrival and s.finish >= s.first_token for s in states)
    assert all(e.kv_used == 0 and not e.running and not e.waiting for e in cluster.engines)


def test_ecoserve_never_mixes_phases_and_follows_set_phase(workload):
    cluster, states = run_states(cfg("ecoserve", instances=3), workload)
    assert isinstance(cluster.driver.router, OverallScheduler)  # the policy object itself
    st = [e.stats for e in cluster.engines]
    assert sum(s.mixed_steps for s in st) == 0
    assert sum(s.phase_violations for s in st) == 0
    assert sum(s.phase_switches for s in st) > 0
    assert cluster.driver.counts["set_phase"] == sum(s.phase_switches for s in st)


def test_ecoserve_queues_and_still_serves_everyone_under_overload():
    reqs = WorkloadTemplate("sharegpt", num_requests=150, seed=1).at_rate(60.0)
    cluster, states = run_states(cfg("ecoserve", instances=2, slo_ttft=1.0), reqs)
    assert cluster.driver.counts["queued"] > 0 and cluster.driver.counts["ticks"] > 0
    assert all(s.generated == s.output for s in states)


def test_sarathi_mixes_and_vllm_does_not(workload):
    sar, _ = run_states(cfg("sarathi"), workload)
    vll, _ = run_states(cfg("vllm"), workload)
    assert sum(e.stats.mixed_steps for e in sar.engines) > 0
    assert sum(e.stats.mixed_steps for e in vll.engines) == 0


def test_round_robin_and_least_loaded_run_stock_v1_engines(workload):
    # What `ecoserve serve --policy round-robin|least-loaded` runs: stock vLLM V1
    # engines, chunking prompts into decode steps within vLLM's default budget.
    for policy in ("round-robin", "least-loaded"):
        cluster, _ = run_states(cfg(policy), workload)
        assert (cluster.info["engine"], cluster.info["chunk_size"]) == ("sarathi", 2048)  # L20: 48 GB
        assert sum(e.stats.mixed_steps for e in cluster.engines) > 0
    assert build(SimConfig(policy="round-robin", hardware="h100", instances=1)).info["chunk_size"] == 8192
    assert build(SimConfig(policy="least-loaded", hardware="h100", instances=1, chunk_size=512)).info["chunk_size"] == 512
    assert SimConfig(policy="least-loaded").describe()["chunk_size"] == 2048


def test_vllm_preempts_when_kv_runs_out_and_still_finishes():
    c = SimConfig(policy="vllm", model="llama-30b", instances=1)  # MHA: ~62k KV tokens
    reqs = [Request(f"r{k}", 0.02 * k, 1000, 900) for k in range(80)]  # 80 x 1,900 tokens at full length
    cluster, states = run_states(c, reqs)
    assert sum(e.stats.preemptions for e in cluster.engines) > 0
    assert all(s.generated == s.output for s in states)


def test_fudg_transfers_kv_and_counts_it_in_tpot():
    c = SimConfig(policy="mooncake", instances=2, pd_ratio=(1, 1))
    model = RooflineModel("codellama-34b", "l20", 4)
    cluster, (r,) = run_states(c, [Request("a", 0.0, 1000, 3)])
    link = cluster.driver.node_links[0][0]
    xfer = link.latency + 1000 * model.kv_bytes_per_token / link.bytes_per_s
    assert r.transfer_s == pytest.approx(xfer)
    assert r.first_token == pytest.approx(model.prefill_time(1000))
    assert r.finish == pytest.approx(r.first_token + xfer + model.decode_step(1, 1001) + model.decode_step(1, 1002))


def test_distserve_keeps_kv_inside_the_node():
    c = SimConfig(policy="distserve", instances=2)
    cluster, states = run_states(c, WorkloadTemplate("alpaca", num_requests=40, seed=0).at_rate(5.0))
    assert all(s.prefill_engine.node == s.decode_engine.node for s in states if s.output > 1)
    assert [x.distserve_layout for x in candidates(c)] == [(1, 2, 1, 2)]


@pytest.mark.parametrize("policy", ["ecoserve", "vllm", "sarathi", "mooncake", "least-loaded"])
def test_fast_forward_is_step_for_step_exact(policy):
    reqs = WorkloadTemplate("sharegpt", num_requests=100, seed=9).at_rate(12.0)
    a = simulate(cfg(policy), reqs)
    b = simulate(cfg(policy, fast_forward=False), reqs)
    assert [(r.first_token, r.finish) for r in a.records] == [(r.first_token, r.finish) for r in b.records]
    assert a.stats["events"] < b.stats["events"]


def test_runs_are_deterministic(workload):
    a = simulate(cfg("ecoserve"), workload)
    b = simulate(cfg("ecoserve"), workload)
    assert [(r.first_token, r.finish) for r in a.records] == [(r.first_token, r.finish) for r in b.records]
    assert a.summary == b.summary


def test_early_stop_only_when_below_the_level():
    reqs = WorkloadTemplate("sharegpt", num_requests=400, seed=0).at_rate(80.0)
    full = simulate(cfg("vllm"), reqs)
    cut = simulate(cfg("vllm"), reqs, stop_below=0.5)
    assert full.attainment < 0.5 and cut.attainment < 0.5 and cut.stats["stopped_early"]
    light = WorkloadTemplate("sharegpt", num_requests=50, seed=0).at_rate(1.0)
    assert simulate(cfg("vllm"), light, stop_below=0.5).stats["stopped_early"] is False


def test_profile_model_runs_and_matches_the_roofline(tmp_path):
    path = tmp_path / "prof.json"
    RooflineModel("codellama-34b", "l20", 4).to_profile().save(path)
    reqs = WorkloadTemplate("alpaca", num_requests=60, seed=0).at_rate(4.0)
    a = simulate(SimConfig(policy="vllm", instances=2), reqs)
    b = simulate(SimConfig(policy="vllm", instances=2, model=str(path)), reqs)
    assert b.summary["ttft"]["p50"] == pytest.approx(a.summary["ttft"]["p50"], rel=0.1)
    assert b.summary["tpot"]["p50"] == pytest.approx(a.summary["tpot"]["p50"], rel=0.1)


def test_presets_are_sane():
    for model, tp in (("llama-30b", 4), ("codellama-34b", 4), ("qwen2-72b", 8)):
        m = RooflineModel(model, "l20", tp)
        assert m.kv_capacity_tokens > 20_000
        assert 0.01 < m.decode_step(1, 512) < 0.1  # tens of ms per token
        assert m.prefill_time(2048) > 10 * m.prefill_time(64) / 2  # compute-bound prefill grows
    assert RooflineModel("codellama-34b", "h100", 2).prefill_time(2048) < RooflineModel("codellama-34b", "l20", 4).prefill_time(2048)
