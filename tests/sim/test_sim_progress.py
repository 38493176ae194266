"""The simulator's progress callbacks (``on_progress(done, total, detail)``):
what ``ecoserve simulate run`` draws on stderr for a long run."""

from __future__ import annotations

from dataclasses import replace

from ecoserve.sim import SimConfig, run_best, simulate
from ecoserve.sim.cluster import candidates
from ecoserve.workload import WorkloadTemplate


def _setup(policy: str, n: int = 300):
    cfg = SimConfig(policy=policy, instances=4, slo_ttft=5.0, slo_tpot=0.1)
    return cfg, WorkloadTemplate("alpaca", num_requests=n, seed=0).at_rate(4.0)


def test_a_run_reports_every_percent_of_requests_done_and_its_end():
    cfg, reqs = _setup("ecoserve")
    calls = []
    res = simulate(cfg, reqs, 4.0, on_progress=lambda *a: calls.append(a))
    done = [c[0] for c in calls]
    assert all(c[1] == len(reqs) for c in calls) and done == sorted(done)
    assert calls[0][0] == 3 and len(calls) == 101  # every 3rd of 300 requests, then the end
    assert calls[-1][0] == len(reqs) == res.summary["num_requests"]
    assert calls[-1][2].endswith(" s simulated")
    quiet = simulate(cfg, reqs, 4.0)  # the callback changes nothing
    assert quiet.summary == res.summary and quiet.stats["events"] == res.stats["events"]


def test_best_of_candidates_reports_over_all_of_them():
    cfg, reqs = _setup("mooncake", 100)
    k = len(candidates(cfg))
    assert k == 3  # P:D splits of 4 instances
    calls = []
    run_best(cfg, reqs, 4.0, on_progress=lambda *a: calls.append(a))
    assert all(c[1] == k * len(reqs) for c in calls)
    assert calls[-1][0] == k * len(reqs) and [c[0] for c in calls] == sorted(c[0] for c in calls)
    assert calls[0][2].startswith("pd_ratio=") and "(1/3)" in calls[0][2] and "(3/3)" in calls[-1][2]


def test_one_candidate_passes_the_callback_through():
    cfg, reqs = _setup("vllm", 100)
    calls = []
    run_best(replace(cfg), reqs, 4.0, on_progress=lambda *a: calls.append(a))
    assert calls[-1][:2] == (100, 100) and "(1/" not in calls[-1][2]
