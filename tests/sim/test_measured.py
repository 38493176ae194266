"""The measured cost model against the points it was taken from, the client's
max_tokens rule, and the capacity bound."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ecoserve.sim import SimConfig, build
from ecoserve.sim.bound import capacity_bound
from ecoserve.sim.engine_model import RooflineModel
from ecoserve.sim.measured import MeasuredCosts
from ecoserve.sim.observer import SimObserver
from ecoserve.sim.specs import HARDWARE, MODELS
from ecoserve.workload import WorkloadTemplate
from ecoserve.workload.lengths import client_max_tokens

# Vidur's measured medians, ms per layer per GPU, of CodeLlama-34B's QKV, O,
# gate+up and down projections plus the layer's element-wise operators
# (microsoft/vidur data/profiling/compute/<gpu>/codellama/CodeLlama-34b-Instruct-hf/mlp.csv,
# commit 7d47513).
VIDUR_LINEAR_MS = {
    ("a40", 4): {1: 0.666, 64: 0.7225, 160: 1.1045, 512: 2.0415, 2048: 7.096},
    ("a100", 2): {1: 0.465, 64: 0.5005, 160: 0.818, 512: 1.7525, 2048: 6.4535},
}
# The profiled GPUs' data-sheet peaks the shares were taken against.
PROFILED = {"a40": (149.7, 696.0), "a100": (312.0, 2039.0)}


def linear_ms_per_layer(model: RooflineModel, tokens: int) -> float:
    """Our model's linear-layer time of one step, per layer (no LM head, attention or overhead)."""
    m, tp = model.spec, model.tp
    flops = 2.0 * m.linear_params * tokens / (tp * model.hw.bf16_tflops * 1e12)
    weights = m.linear_params * m.dtype_bytes / (tp * model.hw.hbm_gbps * 1e9)
    return max(flops, weights) / model.measured.linear_share(tokens) / m.layers * 1e3


@pytest.mark.parametrize("gpu, tp", list(VIDUR_LINEAR_MS))
def test_linear_layers_match_vidur_where_it_measured(gpu, tp):
    peak, bw = PROFILED[gpu]
    hw = replace(HARDWARE["a800"], name=gpu, bf16_tflops=peak, hbm_gbps=bw, profile_gpu=gpu)
    model = RooflineModel("codellama-34b", hw, tp)
    for tokens, measured in VIDUR_LINEAR_MS[(gpu, tp)].items():
        assert linear_ms_per_layer(model, tokens) == pytest.approx(measured, rel=0.01), tokens


def test_the_curve_is_not_a_constant():
    # The step where cuBLAS changes tiles: 160 tokens cost more than 128 in total,
    # and big steps are more efficient than mid-sized ones.
    mc = MeasuredCosts("a40", "codellama-34b", 4)
    assert mc.linear_share(160) < 0.8 * mc.linear_share(128)
    assert mc.linear_share(2048) > mc.linear_share(256) + 0.1


def test_prefill_and_decode_attention_follow_the_a100_table():
    mc = MeasuredCosts("a100", "codellama-34b", 2)
    assert mc.prefill_attention_share(4096, 0) == pytest.approx(0.187, abs=0.002)
    assert mc.prefill_attention_share(512, 1024) > mc.prefill_attention_share(512, 0)  # prior context helps
    assert mc.prefill_attention_share(64, 0) < 0.01
    assert mc.kv_bandwidth_fraction == pytest.approx(0.80, abs=0.01)
    assert 1e-5 < mc.decode_fixed_s < 3e-5


def test_cpu_overhead_is_vidurs_fit():
    constant = RooflineModel("codellama-34b", "l20", 4, "constant")
    measured = RooflineModel("codellama-34b", "l20", 4)
    # A decode step of one short sequence is dominated by weights and overhead;
    # the difference between the models' overheads is all that separates them
    # beyond the linear share.
    assert measured.measured.step_overhead_s == pytest.approx(13.69e-3)
    assert measured.measured.per_seq_overhead_s == pytest.approx(107.8e-6)
    assert measured.decode_step(1, 16) > constant.decode_step(1, 16) + 0.010


def test_mixed_step_attention_is_two_kernels():
    m = RooflineModel("codellama-34b", "l20", 4)
    chunk, batch, ctx = ((2048, 0),), 64, 64 * 4096
    both = m._measured_compute(chunk, batch, ctx, 2048 + batch, batch + 1)
    no_decode = m._measured_compute(chunk, 0, 0, 2048 + batch, batch + 1)  # same linear work, no decode attention
    decode_attn = m.spec.layers * m.measured.decode_fixed_s + (ctx + batch) * m._kv_b * m._peak_bw / m.measured.kv_bandwidth_fraction
    assert both == pytest.approx(no_decode + decode_attn)


def test_clients_send_the_datasets_cap_as_max_tokens():
    t = WorkloadTemplate("sharegpt", num_requests=300, max_context=4096)
    reqs = t.at_rate(1.0)
    assert all(r.max_tokens == max(r.output_tokens, min(2048, 4096 - r.prompt_tokens)) for r in reqs)
    assert any(r.max_tokens > r.output_tokens for r in reqs)
    azure = WorkloadTemplate("azure", num_requests=50)
    cap = max(o for _, o in azure.trace.pairs())
    assert all(r.max_tokens == max(r.output_tokens, cap) for r in azure.at_rate(None))
    assert client_max_tokens(4000, 10, 2048, 4096) == 96 and client_max_tokens(4090, 10, 2048, 4096) == 10


def test_the_policy_reserves_the_clients_bound_and_the_request_ends_at_its_true_length():
    cluster = build(SimConfig(policy="ecoserve", instances=1))
    req = WorkloadTemplate("longbench", num_requests=1, max_context=MODELS["codellama-34b"].max_context).at_rate(1.0)[0]
    assert req.max_tokens > req.output_tokens
    seen = []
    router = cluster.driver.router

    class Reserved(SimObserver):
        def on_enqueue(self, engine_id, r, now):  # routed and carried out: the reservation stands
            seen.append(router.instances()[0].kv_reserved)

    cluster.sim.observers.append(Reserved())
    [done] = cluster.sim.run([req])
    assert seen and seen[0] == req.prompt_tokens + req.max_tokens
    assert done.generated == req.output_tokens


def test_capacity_bound_scales_with_instances_and_shrinks_with_work():
    model = RooflineModel("codellama-34b", "l20", 4)
    short = WorkloadTemplate("alpaca", num_requests=500).at_rate(1.0)
    long = WorkloadTemplate("longbench", num_requests=500, max_context=16384).at_rate(1.0)
    assert capacity_bound(model, short, 16) == pytest.approx(2 * capacity_bound(model, short, 8))
    assert capacity_bound(model, long, 8) < capacity_bound(model, short, 8) / 5
