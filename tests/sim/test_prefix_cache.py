"""Prefix caching in the simulator: every engine's LRU cache of prompt blocks
(every policy alike), the accounting the run reports, EcoServe's prefix routing
against the oracle that sees the real caches, and nothing changed for
workloads without block hashes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ecoserve.cli.simulate import simulate as simulate_cli
from ecoserve.sim import SimConfig, simulate
from ecoserve.workload import WorkloadTemplate
from ecoserve.workload.traces import BLOCK_TOKENS

SLICE = 600  # the trace's first 600 requests: sessions already repeat their prefixes


@pytest.fixture(scope="module")
def mooncake():
    t = WorkloadTemplate("mooncake", num_requests=SLICE, max_context=16384)
    return t.at_rate(0.5)


def run(policy, reqs, **kw):
    cfg = SimConfig(policy=policy, instances=4, slo_ttft=15.0, **kw)
    return simulate(cfg, reqs, 0.5)


def test_the_trace_carries_full_blocks_of_each_kept_prompt(mooncake):
    assert all(len(r.blocks) == r.prompt_tokens // BLOCK_TOKENS for r in mooncake)
    assert WorkloadTemplate("mooncake", num_requests=5).has_blocks
    assert not WorkloadTemplate("sharegpt", num_requests=5).has_blocks


@pytest.mark.parametrize("policy", ["ecoserve", "least-loaded", "sarathi", "prefix-oracle", "distserve"])
def test_every_policy_gets_the_cache_and_the_tokens_add_up(policy, mooncake):
    res = run(policy, mooncake, prefix_cache=True, chunk_size=512 if policy == "sarathi" else None)
    eng = res.stats["engine"]
    assert 0.0 < res.stats["prefix_hit_rate"] < 1.0
    assert res.stats["prefix_hit_rate"] == pytest.approx(eng["cached_tokens"] / eng["prompt_tokens_admitted"])
    # Computed = admitted less the cached (nothing preempted at this load).
    assert res.stats["preempted_requests"] == 0
    assert res.stats["prefill_tokens_computed"] == eng["prompt_tokens_admitted"] - eng["cached_tokens"]
    off = run(policy, mooncake, prefix_cache=False, chunk_size=512 if policy == "sarathi" else None)
    assert off.stats["prefix_hit_rate"] == 0.0
    assert off.stats["prefill_tokens_computed"] == sum(r.prompt_tokens for r in mooncake)


def test_prefix_routing_computes_far_less_and_stays_near_the_oracle(mooncake):
    aware = run("ecoserve", mooncake, prefix_cache=True)
    blind = run("ecoserve", mooncake, prefix_cache=True, prefix_routing=False)
    oracle = run("prefix-oracle", mooncake, prefix_cache=True)
    a, b, o = (r.stats["prefill_tokens_computed"] for r in (aware, blind, oracle))
    assert a < 0.98 * b  # blind routing leaves most reuse to chance (this slice reuses little: ~6% at best)
    assert a <= 1.1 * o, (a, o)
    assert aware.stats["driver"]  # routed through the policy


def test_without_block_hashes_nothing_changes():
    reqs = WorkloadTemplate("sharegpt", num_requests=150, seed=3).at_rate(6.0)
    base = simulate(SimConfig(policy="ecoserve", instances=2), reqs, 6.0)
    for kw in ({"prefix_cache": True}, {"prefix_cache": True, "prefix_routing": False}):
        again = simulate(SimConfig(policy="ecoserve", instances=2, **kw), reqs, 6.0)
        assert again.summary == base.summary and again.stats["events"] == base.stats["events"]
        assert again.stats["prefix_hit_rate"] == 0.0


def test_the_cli_defaults_the_cache_on_for_hashed_traces_and_reports_at_the_top_level():
    def out(*args):
        res = CliRunner().invoke(simulate_cli, ["run", "--dataset", "mooncake", "--num-requests", "200",
                                                "--instances", "2", "--rate", "0.3", "--slo-ttft", "15", "--json",
                                                "-q", *args], catch_exceptions=False)  # fmt: skip
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    on = out()
    assert on["config"]["prefix_cache"] is True and on["config"]["prefix_routing"] is True
    assert on["prefix_hit_rate"] > 0 and on["prefill_tokens_computed"] > 0
    off = out("--no-prefix-cache")
    assert off["prefix_hit_rate"] == 0 and "prefix_cache" not in off["config"]
    assert off["prefill_tokens_computed"] > on["prefill_tokens_computed"]
    blind = out("--no-prefix-routing")
    assert blind["config"]["prefix_routing"] is False


def test_running_requests_share_their_common_prompt_blocks_in_memory():
    """vLLM's block pool: 60 prompts of 16k tokens with the same first 31 blocks
    fit in one instance's KV (~495k tokens) at once only if those blocks are
    held once; without the cache each holds its own copy."""
    from ecoserve.workload.workload import Request

    reqs = [Request(f"r{i}", 0.001 * i, 16384, 200, blocks=tuple(range(1, 33))) for i in range(60)]
    seen = {}
    for cache in (True, False):
        cfg = SimConfig(policy="sarathi", instances=1, chunk_size=512, prefix_cache=cache)
        res = simulate(cfg, reqs, 1.0)
        seen[cache] = res.stats["engine"]["max_batch"]
        assert res.summary["finished"] == 60
    assert seen[True] == 60 and seen[False] <= 494_962 // (16384 + 200)


def test_instances_the_autoscaler_adds_get_a_prefix_index_too():
    from ecoserve.sim import build

    reqs = WorkloadTemplate("mooncake", num_requests=300, max_context=16384).at_rate(2.0)
    cfg = SimConfig(policy="ecoserve", instances=2, slo_ttft=15.0, prefix_cache=True, autoscale=True,
                    max_instances=6)  # fmt: skip
    cluster = build(cfg)
    cluster.sim.slo_ttft, cluster.sim.slo_tpot = cfg.slo_ttft, cfg.slo_tpot
    router = cluster.driver.router
    added, add = [], router.add_instance

    def spy(inst, now, macro=None):
        added.append(inst)
        return add(inst, now, macro=macro)

    router.add_instance = spy
    cluster.sim.run(reqs)
    assert added, "the load never made the autoscaler add an instance"
    assert all(i.prefix is not None for i in added)
    directory = added[0].prefix.directory
    assert all(i.prefix.directory is directory for i in added)  # one directory with the first instances'
    assert any(len(i.prefix) for i in added)  # and they were routed prompts through it
