"""sarathi-dyn in the simulator: Sarathi's engine with each step's prompt
budget from the decoders' slack (policy.chunk_budget). It must reduce to
Sarathi when no decoder has slack to spend, and spend it when they do."""

from __future__ import annotations

from ecoserve.sim import SimConfig, build
from ecoserve.sim.observer import SimObserver
from ecoserve.workload import WorkloadTemplate


class Steps(SimObserver):
    def __init__(self):
        self.steps = []

    def on_step(self, step):
        self.steps.append(step)


def run(policy, reqs, **kw):
    cluster = build(SimConfig(policy=policy, instances=2, chunk_size=256, **kw))
    obs = Steps()
    cluster.sim.observers.append(obs)
    return cluster.sim.run(reqs), obs.steps


def reqs():
    return WorkloadTemplate("sharegpt", num_requests=150, seed=3).at_rate(8.0)


def test_with_no_slack_to_spend_every_step_with_decodes_gets_sarathis_budget():
    # a 1 ms TPOT SLO: every decoder is always late, so a step that decodes gets Sarathi's own
    # budget (256 less one token per decode); with nothing decoding, the engine's limit
    states, steps = run("sarathi-dyn", reqs(), slo_tpot=0.001)
    mixed = [s for s in steps if s.prefill and s.decode]
    assert mixed and all(sum(n for _, n in s.prefill) <= 256 - len(s.decode) for s in mixed)
    assert any(sum(n for _, n in s.prefill) == 256 - len(s.decode) for s in mixed)  # and it is used
    assert all(r.finish is not None and r.generated == r.output for r in states)


def test_banked_slack_buys_chunks_beyond_the_static_budget_and_every_request_finishes():
    states, steps = run("sarathi-dyn", reqs(), slo_tpot=1.0)  # decoders bank most of a second per token
    mixed = [s for s in steps if s.prefill and s.decode]
    assert mixed and max(sum(n for _, n in s.prefill) + len(s.decode) for s in mixed) > 256
    assert all(r.finish is not None and r.generated == r.output for r in states)
    # and the static engine never does
    _, static = run("sarathi", reqs(), slo_tpot=1.0)
    assert max(sum(n for _, n in s.prefill) + len(s.decode) for s in static if s.prefill and s.decode) <= 256
