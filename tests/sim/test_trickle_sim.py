"""ecoserve-trickle in the simulator: phased engines resting in CHUNKED (as
Sarathi at the trickle budget), prefill windows only when chunking would miss
the TTFT SLO."""

from __future__ import annotations

from ecoserve.policy import Phase
from ecoserve.sim import SimConfig, build
from ecoserve.sim.observer import SimObserver
from ecoserve.workload import WorkloadTemplate


class Watch(SimObserver):
    def __init__(self):
        self.steps, self.phases = [], []

    def on_step(self, step):
        self.steps.append(step)

    def on_phase(self, engine_id, old, new, now):
        self.phases.append((now, engine_id, new))


def run(rate, **kw):
    cluster = build(SimConfig(policy="ecoserve-trickle", instances=2, chunk_size=128, **kw))
    w = Watch()
    cluster.sim.observers.append(w)
    reqs = WorkloadTemplate("sharegpt", num_requests=200, seed=4).at_rate(rate)
    return cluster, cluster.sim.run(reqs), w


def test_light_load_only_trickles_and_everyone_finishes():
    cluster, states, w = run(2.0)
    assert all(r.finish is not None and r.generated == r.output for r in states)
    assert w.phases == [] and all(e.phase is Phase.CHUNKED for e in cluster.engines)
    assert any(s.prefill and s.decode for s in w.steps)  # chunks beside decodes
    assert max(sum(n for _, n in s.prefill) + len(s.decode) for s in w.steps if s.decode) <= 128


def test_heavy_load_opens_windows_that_prefill_only_and_close_back_to_chunked():
    cluster, states, w = run(40.0, slo_ttft=2.0)
    assert all(r.finish is not None and r.generated == r.output for r in states)
    assert {p for _, _, p in w.phases} == {Phase.PREFILL, Phase.CHUNKED}
    assert all(e.stats.phase_violations == 0 for e in cluster.engines)
