"""Mitosis scaling in the simulator: the policy's planner grows, splits, drains
and merges a simulated fleet under stepped loads, and no request is lost or
cut short on the way. Plus the stepped-rate arrivals and the CLI."""

from __future__ import annotations

import json
import math
import random

import pytest
from click.testing import CliRunner

from ecoserve.policy import Routed
from ecoserve.sim import SimConfig, build
from ecoserve.sim.runner import simulate, step_requests
from ecoserve.cli.simulate import simulate as simulate_cli
from ecoserve.workload import WorkloadTemplate
from ecoserve.workload.arrivals import (
    expected_arrivals,
    parse_rate_steps,
    times_from_gaps,
    unit_gaps,
    warp_to_steps,
)

# Small macro instances (N_l = 2, N_u = 3) so a few instances exercise split and
# merge; short delays so the runs stay short. One CodeLlama-34B instance on L20
# carries about 4-5 ShareGPT req/s in this simulator.
FAST = dict(policy="ecoserve", macro_min=2, macro_size=3, max_instances=6, launch_delay_s=5.0,
            scale_cooldown_s=5.0, ttft_window_s=10.0, scale_in_hold_s=10.0)
UP = [(2.0, 40.0), (8.0, 40.0), (16.0, 60.0)]
DOWN = [(16.0, 40.0), (2.0, 120.0)]


def requests(steps, seed=1):
    return step_requests(WorkloadTemplate("sharegpt", seed=seed, max_context=16384), steps)


def run_spied(cfg, reqs):
    """Run, recording every Routed action with its time (an observer: the driver
    still carries each action out itself)."""
    cluster = build(cfg)
    cluster.sim.slo_ttft, cluster.sim.slo_tpot = cfg.slo_ttft, cfg.slo_tpot
    routed: list[tuple[float, str, str]] = []
    apply = cluster.driver._apply

    def spy(actions, now):
        routed.extend((now, a.request_id, a.instance_id) for a in actions if isinstance(a, Routed))
        apply(actions, now)

    cluster.driver._apply = spy
    states = cluster.sim.run(reqs)
    return cluster, states, routed


def actions(cluster, kind):
    return [e for e in cluster.autoscaler.events if e["action"] == kind]


def assert_none_lost_or_cut(cluster, states, routed):
    # Every submitted request finished, with its whole output.
    assert all(s.finish is not None and not s.rejected for s in states)
    assert all(s.generated == s.output for s in states)
    # Each was routed exactly once: nothing re-routed off a draining engine.
    assert sorted(rid for _, rid, _ in routed) == sorted(s.id for s in states)
    scaler = cluster.autoscaler
    scale_in_at = {e["instance"]: e["t"] for e in actions(cluster, "scale_in")}
    assert set(scaler.drained_at) == set(scale_in_at)
    for iid, t_in in scale_in_at.items():
        # A draining instance takes nothing new ...
        assert all(t <= t_in for t, _, i in routed if i == iid), f"{iid} got a request while draining"
        # ... and leaves only once its last request finished.
        mine = [s for s in states if s.engine is not None and s.engine.id == iid]
        assert all(s.finish <= scaler.drained_at[iid] for s in mine), f"{iid} left with a request running"


def test_a_ramp_grows_the_fleet_and_splits_past_nu():
    cfg = SimConfig(instances=1, min_instances=1, autoscale=True, **FAST)
    cluster, states, routed = run_spied(cfg, requests(UP))
    scaler = cluster.autoscaler
    outs, joins, splits = actions(cluster, "scale_out"), actions(cluster, "join"), actions(cluster, "split")
    assert len(outs) >= 3 and len(joins) == len(outs)
    for o, j in zip(outs, joins):  # each joins one launch delay after it was asked for
        assert o["instance"] == j["instance"] and j["t"] == pytest.approx(o["t"] + cfg.launch_delay_s)
    # Growing past N_u = 3 split the macro instance: 4 -> 2 + 2.
    assert splits and splits[0]["before"] == [4] and splits[0]["layout"] == [2, 2]
    assert max(s["instances"] for s in scaler.samples) >= 4
    assert all(len(g) <= cfg.macro_size for g in cluster.driver.router.layout())
    assert_none_lost_or_cut(cluster, states, routed)


def test_a_falling_load_shrinks_the_fleet_and_merges():
    cfg = SimConfig(instances=6, min_instances=1, autoscale=True, **FAST)
    cluster, states, routed = run_spied(cfg, requests(DOWN))
    scaler = cluster.autoscaler
    assert scaler.samples[0]["layout"] == [3, 3]
    assert len(actions(cluster, "scale_in")) >= 2 and actions(cluster, "merge")
    end = scaler.samples[-1]
    assert end["instances"] < 6 and len(end["layout"]) == 1  # merged back into one macro instance
    assert_none_lost_or_cut(cluster, states, routed)


def test_runner_reports_the_timeline_and_the_whole_run_finishes():
    cfg = SimConfig(instances=1, min_instances=1, autoscale=True, timeline_window_s=10.0, **FAST)
    reqs = requests(UP)
    res = simulate(cfg, reqs)
    assert res.stats["unfinished"] == 0 and res.summary["finished"] == len(reqs)
    a = res.stats["autoscale"]
    assert a["instances"]["start"] == 1 and a["instances"]["max"] >= 4 and a["actions"]["split"] >= 1
    wins = res.timeline["windows"]
    assert sum(w["arrivals"] for w in wins) == len(reqs)
    assert sum(w["finished"] for w in wins) == len(reqs)
    assert wins[0]["instances"] == 1 and max(w["instances"] for w in wins) == a["instances"]["max"]
    # Windows before the load rises meet the SLO; the fleet grows only after it rises.
    assert wins[1]["attainment"] > 0.9
    first_out = next(e["t"] for e in res.timeline["events"] if e["action"] == "scale_out")
    assert first_out > UP[0][1]
    # Deterministic: the same inputs give the same decisions.
    again = simulate(cfg, reqs)
    assert again.timeline["events"] == res.timeline["events"]


def test_fixed_fleet_runs_are_unchanged_by_the_option():
    reqs = WorkloadTemplate("sharegpt", num_requests=150, seed=3).at_rate(6.0)
    plain = simulate(SimConfig(instances=2), reqs)
    assert plain.timeline is None and "autoscale" not in plain.stats
    # An autoscaler held to exactly the same fleet changes no request's timing.
    held = simulate(SimConfig(instances=2, autoscale=True, min_instances=2, max_instances=2), reqs)
    assert [(r.first_token, r.finish) for r in held.records] == [(r.first_token, r.finish) for r in plain.records]


def test_config_errors():
    with pytest.raises(ValueError, match="EcoServe"):
        SimConfig(policy="vllm", autoscale=True)
    with pytest.raises(ValueError, match="N_l"):
        SimConfig(autoscale=True, macro_min=6, macro_size=10)
    with pytest.raises(ValueError, match="within"):
        SimConfig(autoscale=True, instances=8, min_instances=1, max_instances=4)


# -- stepped-rate arrivals ----------------------------------------------------------------


def test_warp_to_steps_matches_each_steps_rate():
    rng = random.Random(7)
    steps = [(20.0, 120.0), (50.0, 60.0), (5.0, 200.0)]
    unit = times_from_gaps(unit_gaps(12_000, 1.0, rng), 1.0)
    times = warp_to_steps(unit, steps)
    assert times == sorted(times) and times[-1] <= 380.0
    bounds = [(0.0, 120.0), (120.0, 180.0), (180.0, 380.0)]
    for (rate, dur), (a, b) in zip(steps, bounds):
        n = sum(1 for t in times if a <= t < b)
        assert abs(n - rate * dur) < 5 * math.sqrt(rate * dur), (rate, n)
    assert len(times) == pytest.approx(expected_arrivals(steps), abs=5 * math.sqrt(expected_arrivals(steps)))
    # One step is the plain process at that rate (common random numbers).
    assert warp_to_steps(unit[:100], [(4.0, 1e9)]) == pytest.approx(times_from_gaps(unit_gaps(100, 1.0, random.Random(7)), 4.0))


def test_rate_steps_parse_and_errors():
    assert parse_rate_steps("20:120, 30:60") == [(20.0, 120.0), (30.0, 60.0)]
    for bad in ("", "20", "20:0", "-1:10", "a:b"):
        with pytest.raises(ValueError):
            parse_rate_steps(bad)
    replay = WorkloadTemplate("azure", num_requests=10)
    with pytest.raises(ValueError, match="replay"):
        step_requests(replay, [(1.0, 10.0)])


# -- the CLI ----------------------------------------------------------------------------------


ARGS = ["run", "--rate-steps", "2:40,8:40,16:60", "--autoscale", "--instances", "1", "--min-instances", "1",
        "--max-instances", "6", "--macro-min", "2", "--macro-max", "3", "--launch-delay", "5",
        "--scale-cooldown", "5", "--ttft-window", "10", "--scale-in-hold", "10", "--seed", "1"]


def test_cli_autoscale_prints_json_and_writes_the_timeline(tmp_path):
    tl, png = tmp_path / "t.json", tmp_path / "t.png"
    res = CliRunner().invoke(simulate_cli, [*ARGS, "--json", "--timeline", str(tl), "--plot", str(png)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # results only: progress (a run of seconds) goes to stderr
    assert out["policy"] == "ecoserve" and out["finished"] == out["num_requests"] > 0
    assert set(out["ttft"]) >= {"p50", "p90", "p99"} and 0 <= out["attainment"] <= 1
    assert out["rate_steps"] == [{"rate": 2.0, "seconds": 40.0}, {"rate": 8.0, "seconds": 40.0},
                                 {"rate": 16.0, "seconds": 60.0}]
    auto = out["stats"]["autoscale"]
    assert auto["actions"]["split"] >= 1 and auto["instances"]["max"] >= 4
    assert out["config"]["autoscale"]["macro_max"] == 3
    timeline = json.loads(tl.read_text())
    assert {"windows", "events", "samples", "window_s"} <= set(timeline)
    assert sum(w["arrivals"] for w in timeline["windows"]) == out["num_requests"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = CliRunner().invoke(simulate_cli, ARGS, catch_exceptions=False).stdout
    assert "autoscaling: 1 ->" in text and "split" in text


def test_cli_autoscale_errors():
    def err(*args):
        res = CliRunner().invoke(simulate_cli, list(args))
        assert res.exit_code != 0
        return res.output

    assert "EcoServe" in err("run", "--policy", "vllm", "--rate", "2", "--autoscale")
    assert "N_l" in err("run", "--rate", "2", "--autoscale", "--macro-min", "6", "--macro-max", "10")
    assert "not both" in err("run", "--rate", "2", "--rate-steps", "2:10")
    assert "RATE:SECONDS" in err("run", "--rate-steps", "2-10")
    assert "--autoscale" in err("run", "--rate", "2", "--plot", "x.png")  # --timeline goes with any run now
