"""The simulator's observer hook (ecoserve/sim/observer.py): what observers are
told matches what the run did, and watching changes nothing."""

from __future__ import annotations

from collections import defaultdict

import pytest

from ecoserve.policy import CheckResult, Constraint, ConstraintChecker, Phase, Queued, Routed, SetPhase
from ecoserve.sim import SimConfig, build, simulate
from ecoserve.sim.observer import SimObserver, StepRecord
from ecoserve.sim.runner import step_requests
from ecoserve.workload import WorkloadTemplate

POLICIES = ("ecoserve", "vllm", "sarathi", "distserve", "mooncake", "round-robin")


EXTRA = {"mooncake": {"instances": 3, "pd_ratio": (1, 2)}, "sarathi": {"chunk_size": 512}}


def cfg(policy, **kw):
    return SimConfig(policy=policy, **{"instances": 2, **EXTRA.get(policy, {}), **kw})


class Recorder(SimObserver):
    def __init__(self):
        self.steps: list[StepRecord] = []
        self.enqueued: list[tuple[float, str, str]] = []
        self.phases: list[tuple[float, str, Phase, Phase]] = []
        self.actions: list[tuple[float, object]] = []
        self.checks: list[tuple[float, str, str, CheckResult]] = []
        self.first: dict[str, list[float]] = defaultdict(list)
        self.finish: dict[str, list[float]] = defaultdict(list)

    def on_step(self, step):
        self.steps.append(step)

    def on_enqueue(self, engine_id, req, now):
        self.enqueued.append((now, req.id, engine_id))

    def on_phase(self, engine_id, old, new, now):
        self.phases.append((now, engine_id, old, new))

    def on_action(self, action, now):
        self.actions.append((now, action))

    def on_check(self, inst, req, result, now):
        self.checks.append((now, req.id, inst.id, result))

    def on_first_token(self, req, now):
        self.first[req.id].append(now)

    def on_finish(self, req, now):
        self.finish[req.id].append(now)


def watched(c, reqs):
    cluster = build(c)
    rec = Recorder()
    cluster.sim.observers.append(rec)
    return cluster, cluster.sim.run(reqs), rec


@pytest.fixture(scope="module")
def workload():
    return WorkloadTemplate("sharegpt", num_requests=120, seed=5).at_rate(6.0)


@pytest.fixture(scope="module")
def overload():  # EcoServe queues and re-offers under it
    return WorkloadTemplate("sharegpt", num_requests=150, seed=1).at_rate(60.0)


@pytest.mark.parametrize("policy", POLICIES)
def test_step_records_account_for_every_token(policy, workload):
    cluster, states, rec = watched(cfg(policy), workload)
    assert rec.steps
    prefilled = defaultdict(int)
    tokens = defaultdict(int)
    for s in rec.steps:
        assert s.steps >= 1 and s.end > s.start
        assert s.steps == 1 or not s.prefill  # only decode stretches are fast-forwarded
        assert s.prefill_tokens == sum(n for _, n in s.prefill)
        for rid, n in s.prefill:
            prefilled[rid] += n
        for rid in s.decode:
            tokens[rid] += s.steps
    for r in states:
        assert r.preempted == 0  # light load: the sums below are exact
        assert prefilled[r.id] == r.prompt, r.id
        assert tokens[r.id] + 1 == r.output, r.id  # the prefill yields the first token
        assert rec.first[r.id] == [r.first_token] and rec.finish[r.id] == [r.finish]


@pytest.mark.parametrize("policy", POLICIES)
def test_one_engine_runs_one_step_at_a_time(policy, workload):
    cluster, _, rec = watched(cfg(policy), workload)
    by_engine = defaultdict(list)
    for s in rec.steps:
        by_engine[s.engine].append(s)
    assert set(by_engine) == {e.id for e in cluster.engines}
    for e in cluster.engines:
        steps = by_engine[e.id]
        assert steps == sorted(steps, key=lambda s: s.start)  # reported in order
        for a, b in zip(steps, steps[1:]):
            assert b.start >= a.end, (e.id, a, b)
        assert sum(s.duration for s in steps) == pytest.approx(e.stats.busy_s, rel=1e-9)
        assert sum(s.steps for s in steps if not s.prefill) == e.stats.decode_steps


def test_step_kinds(workload):
    _, _, sar = watched(cfg("sarathi"), workload)
    _, _, vll = watched(cfg("vllm"), workload)
    assert {s.kind for s in sar.steps} >= {"mixed", "decode"}
    assert {s.kind for s in vll.steps} == {"prefill", "decode"}


@pytest.mark.parametrize("policy", ["ecoserve", "vllm", "sarathi", "round-robin"])
def test_routes_match_the_requests_instances(policy, workload):
    _, states, rec = watched(cfg(policy), workload)
    where = {r.id: r.engine.id for r in states}
    routed = [(t, a.request_id, a.instance_id) for t, a in rec.actions if isinstance(a, Routed)]
    assert sorted((rid, iid) for _, rid, iid in routed) == sorted(where.items())  # each once, where it ran
    assert sorted(rec.enqueued) == sorted(routed)  # the engine took it when the router said
    arrival = {r.id: r.arrival for r in states}
    assert all(t >= arrival[rid] for t, rid, _ in routed)


def test_fudg_requests_join_a_prefill_then_a_decode_engine(workload):
    _, states, rec = watched(cfg("mooncake"), workload)
    joins = defaultdict(list)
    for _, rid, eid in sorted(rec.enqueued):
        joins[rid].append(eid)
    assert not rec.actions and not rec.checks  # no policy router here
    for r in states:
        want = [r.prefill_engine.id] + ([r.decode_engine.id] if r.output > 1 else [])
        assert joins[r.id] == want


def test_phase_switches_bracket_ecoserve_steps(workload):
    cluster, _, rec = watched(cfg("ecoserve", instances=3), workload)
    switches = defaultdict(list)
    for t, eid, old, new in rec.phases:
        assert old is not new
        switches[eid].append((t, old, new))
    assert sum(len(v) for v in switches.values()) == sum(e.stats.phase_switches for e in cluster.engines)
    set_phase = [(t, a.instance_id, a.phase) for t, a in rec.actions if isinstance(a, SetPhase)]
    assert [(t, eid, new) for t, eid, _, new in rec.phases] == set_phase
    for s in rec.steps:
        want = Phase.PREFILL if s.prefill else Phase.DECODE
        # The phase at the step's start: switches at that same instant may come
        # just before or just after it began.
        before = [new for t, _, new in switches[s.engine] if t < s.start]
        upto = [new for t, _, new in switches[s.engine] if t <= s.start]
        phases = {(before or [Phase.DECODE])[-1], (upto or [Phase.DECODE])[-1]}
        assert want in phases, s


def test_checks_explain_routes_and_queueing(overload):
    _, states, rec = watched(cfg("ecoserve", slo_ttft=1.0), overload)
    assert rec.checks and any(r.failed is not None for *_, r in rec.checks)
    passed = {(t, rid, iid) for t, rid, iid, r in rec.checks if r.failed is None}
    routed = [(t, a.request_id, a.instance_id) for t, a in rec.actions if isinstance(a, Routed)]
    assert len(routed) == len(states)
    assert all(x in passed for x in routed)  # each placement passed its check there, then
    queued = [(t, a) for t, a in rec.actions if isinstance(a, Queued)]
    assert queued
    for t, a in queued:
        if a.reason is Constraint.QUEUE:
            continue  # FIFO behind others: no check made
        mine = [r for tc, rid, _, r in rec.checks if tc == t and rid == a.request_id]
        assert mine and all(r.failed is not None for r in mine)
        assert mine[0].failed is a.reason  # the first constraint that failed


def test_baselines_check_nothing(workload):
    cluster, _, rec = watched(cfg("vllm"), workload)
    assert rec.checks == [] and cluster.driver.router.constraint_checker() is None


def test_watching_changes_nothing(overload):
    c = cfg("ecoserve", slo_ttft=1.0)
    plain = build(c)
    assert plain.driver.router.constraint_checker().on_check is None
    a = plain.sim.run(overload)
    assert plain.driver.router.constraint_checker().on_check is None  # no observer: no tap
    watched_cluster, b, _ = watched(c, overload)
    tapped = watched_cluster.driver.router.constraint_checker()
    assert tapped.on_check is not None and all(m.checker is tapped for m in watched_cluster.driver.router.macros)
    assert [(r.first_token, r.finish, r.engine.id) for r in a] == [(r.first_token, r.finish, r.engine.id) for r in b]


class OnlyFirst(ConstraintChecker):
    """A what-if checker: every instance but i0 is out of seats."""

    def check(self, inst, req, now):
        res = super().check(inst, req, now)
        if res.failed is None and inst.id != "i0":
            return CheckResult(Constraint.SEATS, res.t_total, res.stall)
        return res


def test_setup_can_swap_the_checker(workload):
    def setup(cluster):
        new = cluster.driver.wrap_checker(
            lambda c: OnlyFirst(c.slo, c.predictor, slack_mode=c.slack_mode))
        assert isinstance(new, OnlyFirst)
        cluster.sim.observers.append(rec)

    rec = Recorder()
    res = simulate(cfg("ecoserve", instances=3, slo_ttft=30.0), workload[:40], setup=setup)
    assert res.summary["finished"] == 40
    routed = {a.instance_id for _, a in rec.actions if isinstance(a, Routed)}
    assert routed == {"i0"}
    # The observers' tap sits on top of the swapped checker: they see its verdicts.
    assert any(r.failed is Constraint.SEATS and iid != "i0" for _, _, iid, r in rec.checks)
    assert build(cfg("vllm")).driver.wrap_checker(lambda c: c) is None


def test_new_macro_instances_are_watched_too():
    # Mitosis with small macro instances (N_u = 3): a ramp launches instances and splits.
    c = SimConfig(instances=1, min_instances=1, autoscale=True, macro_min=2, macro_size=3, max_instances=6,
                  launch_delay_s=5.0, scale_cooldown_s=5.0, ttft_window_s=10.0, scale_in_hold_s=10.0)
    ramp = [(2.0, 40.0), (8.0, 40.0), (16.0, 60.0)]
    reqs = step_requests(WorkloadTemplate("sharegpt", seed=1, max_context=16384), ramp)
    cluster = build(c)
    rec = Recorder()
    cluster.sim.observers.append(rec)
    cluster.sim.run(reqs)
    splits = [e["t"] for e in cluster.autoscaler.events if e["action"] == "split"]
    assert splits
    # The macro instances a split makes share the tapped checker: every route,
    # before and after the split, shows its passing check.
    passed = {(t, rid, iid) for t, rid, iid, r in rec.checks if r.failed is None}
    routed = [(t, a.request_id, a.instance_id) for t, a in rec.actions if isinstance(a, Routed)]
    assert len(routed) == len(reqs) and all(x in passed for x in routed)
    assert sum(1 for t, _, _ in routed if t > splits[0]) > 100
    assert {iid for _, _, iid in routed} == {e.id for e in cluster.engines}  # launched instances too
