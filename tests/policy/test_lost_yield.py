"""Lost requests wait behind the savable ones (MacroInstance.lost_yield), pinned
at exact times: TTFT SLO 1 s, prefill 1 ms a token, one instance of 1,000 KV tokens."""

from __future__ import annotations

import pytest

from ecoserve.policy import InstanceState, MacroInstance, PolicyConfig, Routed
from tests.policy.helpers import checker, req


def _queued_behind_a_lost_one(lost_yield: bool) -> tuple[MacroInstance, list]:
    m = MacroInstance(checker(ttft=1.0), lost_yield=lost_yield)
    m.add_instance(InstanceState("i0", 1_000), 0.0)
    assert isinstance(m.submit(req("r0", 500, 400, at=0.0), 0.0)[0], Routed)  # 900 KV tokens reserved
    m.submit(req("r1", 500, 400, at=0.0), 0.0)  # queued: no memory
    m.submit(req("r2", 100, 10, at=0.8), 0.8)  # queued behind it (FIFO)
    # at 0.9 r0 leaves: r1 would get its first token at 0.9 + 0.5 s > 1 s (lost), r2 at 0.9 + 0.1 s (saved)
    return m, m.on_finish("r0", 0.9)


def test_a_lost_request_lets_a_savable_one_go_first():
    m, actions = _queued_behind_a_lost_one(lost_yield=True)
    assert [a.request_id for a in actions if isinstance(a, Routed)] == ["r2"]
    assert [r.id for r in m.pending()] == ["r1"]  # still served later, never dropped


def test_without_it_the_queue_stays_fifo():
    m, actions = _queued_behind_a_lost_one(lost_yield=False)
    assert [a.request_id for a in actions if isinstance(a, Routed)] == ["r1"]
    assert [r.id for r in m.pending()] == ["r2"]  # and r2 (110 tokens) no longer fits beside r1 (900)


def test_when_every_queued_request_is_lost_the_order_is_kept():
    m = MacroInstance(checker(ttft=1.0), lost_yield=True)
    m.add_instance(InstanceState("i0", 1_000), 0.0)
    m.submit(req("r0", 500, 400, at=0.0), 0.0)
    for rid in ("r1", "r2"):
        m.submit(req(rid, 500, 400, at=0.0), 0.0)
    m.tick(5.0)  # both lost
    assert [r.id for r in m.pending()] == ["r1", "r2"]
    assert [a.request_id for a in m.on_finish("r0", 5.0) if isinstance(a, Routed)] == ["r1"]


@pytest.mark.parametrize("policy", ["ecoserve", "ecoserve-trickle"])
def test_the_policy_config_builds_it_into_every_macro_instance(policy):
    router = PolicyConfig(policy, lost_yield=True).build_router()
    router.add_instance(InstanceState("i0", 1_000), 0.0)
    assert all(m.lost_yield for m in router.macros)


def test_the_simulator_runs_the_same_rule_and_says_so():
    """The simulator's routers come from the same PolicyConfig: past the knee (one
    instance, ShareGPT past its knee) yielding saves requests that
    FIFO loses (measured: 0.378 -> 0.458 attainment at 3 req/s, the knee being
    about 2.2), and the run's config names the setting."""
    from ecoserve.sim import SimConfig, simulate
    from ecoserve.workload import WorkloadTemplate

    reqs = WorkloadTemplate("sharegpt", num_requests=400, seed=1).at_rate(3.0)
    fifo = simulate(SimConfig(policy="ecoserve-trickle", instances=1), reqs, 3.0)
    yielding = simulate(SimConfig(policy="ecoserve-trickle", instances=1, lost_yield=True), reqs, 3.0)
    assert SimConfig(policy="ecoserve-trickle", lost_yield=True).describe()["lost_yield"] is True
    assert "lost_yield" not in SimConfig(policy="sarathi", lost_yield=True).describe()
    assert yielding.summary["ttft_attainment"] > fifo.summary["ttft_attainment"]


def _lost_one_waited(max_wait: float | None) -> tuple[MacroInstance, list]:
    """r1 lost since 0.5 s; at 2.0 it has waited 2.0 s, 1.0 s past its 1 s SLO; r2 (arrived 1.8) is savable."""
    m = MacroInstance(checker(ttft=1.0), lost_yield=True, lost_yield_max_wait=max_wait)
    m.add_instance(InstanceState("i0", 1_000), 0.0)
    m.submit(req("r0", 500, 400, at=0.0), 0.0)
    m.submit(req("r1", 500, 400, at=0.0), 0.0)
    m.submit(req("r2", 100, 10, at=1.8), 1.8)
    return m, m.on_finish("r0", 2.0)


@pytest.mark.parametrize(("max_wait", "first"), [(None, "r2"), (1.5, "r2"), (0.99, "r1"), (0.0, "r1")])
def test_a_bound_on_the_wait_gives_a_lost_request_its_place_back(max_wait, first):
    """Past ``lost_yield_max_wait`` beyond its SLO a lost request stops yielding: FIFO again for it."""
    m, actions = _lost_one_waited(max_wait)
    assert [a.request_id for a in actions if isinstance(a, Routed)] == [first]
    assert [r.id for r in m.pending()] == [{"r1": "r2", "r2": "r1"}[first]]


def test_the_bound_is_validated_where_the_config_is_built():
    with pytest.raises(ValueError, match="set lost_yield too"):
        PolicyConfig("ecoserve", lost_yield_max_wait=5.0)
    with pytest.raises(ValueError, match=">= 0"):
        PolicyConfig("ecoserve", lost_yield=True, lost_yield_max_wait=-1.0)
    router = PolicyConfig("ecoserve-trickle", lost_yield=True, lost_yield_max_wait=5.0).build_router()
    router.add_instance(InstanceState("i0", 1_000), 0.0)
    assert all(m.lost_yield_max_wait == 5.0 for m in router.macros)


@pytest.mark.parametrize("cmd", [["simulate", "run", "--rate", "1"], ["serve", "--engine-url", "http://127.0.0.1:9"]])
def test_the_cli_refuses_a_bound_without_the_yield(cmd):
    from click.testing import CliRunner

    from ecoserve.cli import main

    r = CliRunner().invoke(main, [*cmd, "--lost-yield-max-wait", "5"])
    assert r.exit_code == 2, r.output
    assert "give --lost-yield too" in r.output
