"""A simulated run's timeline (ecoserve/sim/timeline.py): what it draws is what
the run did, for every kind of policy, and `simulate run --timeline` writes it."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from click.testing import CliRunner

from ecoserve.cli.simulate import simulate as simulate_cli
from ecoserve.sim import SimConfig, simulate
from ecoserve.sim.timeline import TimelineObserver
from ecoserve.timeline import decode

EXTRA = {"mooncake": {"instances": 3, "pd_ratio": (1, 2)}, "sarathi": {"chunk_size": 512}}


@pytest.fixture(scope="module")
def workload():
    from ecoserve.workload import WorkloadTemplate

    return WorkloadTemplate("sharegpt", num_requests=120, seed=5).at_rate(6.0)


@pytest.mark.parametrize("policy", ["ecoserve", "sarathi", "distserve", "mooncake", "round-robin"])
def test_the_timeline_accounts_for_every_step_request_and_phase(policy, workload):
    cfg = SimConfig(policy=policy, **{"instances": 2, **EXTRA.get(policy, {})})
    obs = TimelineObserver()
    plain = simulate(cfg, workload, 6.0)
    watched = simulate(cfg, workload, 6.0, setup=obs.attach)
    assert watched.summary == plain.summary  # watching changes nothing
    doc = obs.document(title=policy)
    assert doc.source == "simulated" and (doc.slo_ttft, doc.slo_tpot) == (cfg.slo_ttft, cfg.slo_tpot)
    engines = {e for m in doc.macros for e in m.engines}
    assert {s.engine for s in doc.segments} <= engines and engines == {e.id for e in obs.cluster.engines}

    prompt = sum(r.prompt_tokens for r in watched.records)
    assert sum(s.prefill_tokens for s in doc.segments) == prompt  # light load: no preemption, no recompute
    by_engine = defaultdict(list)
    for s in doc.segments:
        by_engine[s.engine].append(s)
    for segs in by_engine.values():  # one engine, one thing at a time
        segs.sort(key=lambda s: s.start)
        assert all(a.end <= b.start + 1e-9 for a, b in zip(segs, segs[1:]))
    assert len(doc.marks) == len(workload)  # every request routed once (a decode pool's receipt is no routing)
    finished = [r for r in watched.records if r.finished]
    assert len(doc.latencies) == len(finished)
    assert sorted(lat.ttft for lat in doc.latencies) == pytest.approx(sorted(r.ttft for r in finished))
    assert doc.samples and all(s.pending >= 0 and s.in_flight >= 0 for s in doc.samples)
    assert max(s.in_flight for s in doc.samples) > 0
    assert all(0.0 <= kv <= 1.0 for s in doc.samples for kv, _ in s.engines.values())
    if policy == "ecoserve":
        assert {p.phase for p in doc.phases} >= {"prefill", "decode"}
    else:
        assert doc.phases == []


def invoke(*args, code=0):
    res = CliRunner().invoke(simulate_cli, list(args), catch_exceptions=False)
    assert res.exit_code == code, res.output
    return res.output


FAST = ["--num-requests", "60", "--instances", "2", "--rate", "3"]


def test_simulate_run_writes_the_timeline_by_suffix(tmp_path):
    out = json.loads(invoke("run", "--policy", "ecoserve", "--json", "--timeline", str(tmp_path / "t.html"), *FAST))
    html = (tmp_path / "t.html").read_text()
    assert out["timeline"] == str(tmp_path / "t.html") and '"source":"simulated"' in html
    invoke("run", "--timeline", str(tmp_path / "t.png"), *FAST)
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    invoke("run", "--timeline", str(tmp_path / "t.json"), *FAST)  # without --autoscale: the document
    doc = decode((tmp_path / "t.json").read_bytes())
    assert len(doc.marks) == 60 and doc.segments


def test_simulate_run_timeline_with_autoscaling_keeps_both_forms(tmp_path):
    auto = ["--autoscale", "--min-instances", "1", "--max-instances", "3", "--launch-delay", "5"]
    invoke("run", "--timeline", str(tmp_path / "a.json"), *auto, *FAST)
    series = json.loads((tmp_path / "a.json").read_text())
    assert "windows" in series and "events" in series  # the autoscaling time series, as before
    invoke("run", "--timeline", str(tmp_path / "a.html"), *auto, *FAST)
    assert "ecoserve-timeline/v1" in (tmp_path / "a.html").read_text()


def test_simulate_run_timeline_refuses_other_files(tmp_path):
    assert "FILE.html, FILE.png or FILE.json" in invoke("run", "--timeline", str(tmp_path / "t.svg"), *FAST, code=2)
    assert "--autoscale" in invoke("run", "--plot", str(tmp_path / "p.png"), *FAST, code=2)
