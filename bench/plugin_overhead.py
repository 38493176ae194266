"""Per-step cost of the EcoServe scheduler plugin vs vLLM's stock scheduler.

Same engine, same model, same workload: one vLLM engine (CPU build, EngineCore
in-process so its steps can be timed) holds a stock ``Scheduler`` and an
``EcoServeScheduler`` built with the same arguments over the same KV cache, and
swaps them between repetitions of the workload (A B C A B C ...), so bursts of
load from other processes hit all configs alike. Prefix caching is off, so
every repetition does the same work. Measured per engine step:
- step: wall time of EngineCore.step (schedule + forward + output processing);
- sched: time inside schedule + update_from_output, where the plugin works
  (planning, step records, one status push per step).
Reported as ratios of medians against stock. ``eco-mixed`` makes exactly
stock's batches, so its ratio is the plugin's pure overhead; ``eco-temporal``
batches differently (never mixes phases) and is shown for reference. The noise
level is the ratio between the medians of stock's odd and even repetitions.

A second, scheduler-only measurement isolates the plugin's own cost: the same
scheduler classes driven step by step without a model (real requests, KV
manager and outputs; the sampled token is supplied).

With ``--latency`` it also measures phase-command round trips over ZeroMQ to
an engine in its own process (vLLM's default), idle and busy.

    .venv/bin/python bench/plugin_overhead.py [--model DIR] [--reps 20] [--latency]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from ecoserve.engine.process import SCHEDULER_CLS, EngineProcess, stop_engines

CONFIGS = {
    "stock": {},
    "eco-mixed": {"scheduler_cls": SCHEDULER_CLS, "phase": "mixed"},
    "eco-temporal": {"scheduler_cls": SCHEDULER_CLS, "phase": "temporal"},
    # the slack rule's budget before every step (issue 14's plugin-only phase), with the TTFT term
    "eco-chunked": {"scheduler_cls": SCHEDULER_CLS, "phase": "chunked", "tpot_s": 0.106, "ttft_s": 3.47},
}
ENGINE_KW = dict(max_model_len=512, enforce_eager=True, dtype="bfloat16", seed=0)


def _workload(num: int, vocab: int, seed: int = 0):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    rng = random.Random(seed)
    prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(5, vocab) for _ in range(rng.randint(32, 256))]) for _ in range(num)]
    return prompts, SamplingParams(max_tokens=64, ignore_eos=True, temperature=0.0)


def _timed(fn, sinks: dict[str, list[float]], key):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            sinks[key()].append(time.perf_counter() - t)

    return wrapper


def run_engine(model: str, num_requests: int, reps: int) -> dict:
    """All configs on one in-process engine, schedulers swapped between reps."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM
    from vllm.v1.core.sched.scheduler import Scheduler

    llm = LLM(model=model, scheduler_cls=CONFIGS["eco-mixed"]["scheduler_cls"], enable_prefix_caching=False, **ENGINE_KW)
    core = llm.llm_engine.engine_core.engine_core  # InprocClient -> EngineCore
    eco = core.scheduler
    stock = Scheduler(
        vllm_config=core.vllm_config,
        kv_cache_config=eco.kv_cache_config,
        structured_output_manager=core.structured_output_manager,
        block_size=eco.block_size,
        hash_block_size=eco.hash_block_size,
        log_stats=core.log_stats,
    )
    prompts, params = _workload(num_requests, llm.get_tokenizer().vocab_size)

    current = "stock"
    steps = {c: [] for c in CONFIGS}
    sched = {c: [] for c in CONFIGS}
    step_fn = core.step_fn

    def timed_step():
        t = time.perf_counter()
        try:
            return step_fn()
        finally:
            steps[current].append(time.perf_counter() - t)

    core.step_fn = timed_step
    for obj in (eco, stock):  # schedule + update_from_output of each step
        for name in ("schedule", "update_from_output"):
            fn = getattr(obj, name)
            setattr(obj, name, _timed(fn, sched, lambda: current))

    per_rep: dict[str, list[float]] = {c: [] for c in CONFIGS}
    for rep in range(reps + 1):  # rep 0 warms every config up
        for config in CONFIGS if rep % 2 else reversed(CONFIGS):
            current = config
            core.scheduler = stock if config == "stock" else eco
            if config != "stock":
                spec = CONFIGS[config]
                eco.eco_budget.tpot_s, eco.eco_budget.ttft_s = spec.get("tpot_s"), spec.get("ttft_s")
                eco.eco_set_phase(spec["phase"])
            first = len(steps[config])
            llm.generate(prompts, params, use_tqdm=False)
            if rep == 0:
                del steps[config][first:]
                sched[config].clear()
            else:
                per_rep[config].append(statistics.median(steps[config][first:]))
    sched_steps = {c: [a + b for a, b in zip(v[0::2], v[1::2])] for c, v in sched.items()}
    stock_reps = per_rep["stock"]
    return {
        "steps_per_rep": len(steps["stock"]) // reps,
        "step_median_ms": {c: statistics.median(v) * 1e3 for c, v in steps.items()},
        "sched_median_us": {c: statistics.median(v) * 1e6 for c, v in sched_steps.items()},
        "noise_odd_even": statistics.median(stock_reps[0::2]) / statistics.median(stock_reps[1::2]),
    }


def scheduler_only(model: str, rounds: int = 12, running: int = 64, steps: int = 60) -> dict:
    """Per-step scheduler time (has_requests + schedule + update_from_output)
    with `running` decoding requests, no model; fresh schedulers every round."""
    import torch
    from vllm import SamplingParams
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.outputs import ModelRunnerOutput
    from vllm.v1.request import Request
    from vllm.v1.structured_output import StructuredOutputManager

    from vllm_plugin.scheduler import EcoServeScheduler

    def make(config: str):
        spec = CONFIGS[config]
        os.environ["ECOSERVE_PHASE"] = spec.get("phase", "temporal")
        cfg = EngineArgs(model=model, enable_prefix_caching=False, **ENGINE_KW).create_engine_config()
        cfg.cache_config.num_gpu_blocks = blocks = 8192
        attn = FullAttentionSpec(block_size=16, num_kv_heads=2, head_size=64, dtype=torch.bfloat16)
        kv = KVCacheConfig(num_blocks=blocks, kv_cache_tensors=[], kv_cache_groups=[KVCacheGroupSpec(["l0"], attn)])
        cls = EcoServeScheduler if "scheduler_cls" in spec else Scheduler
        sched = cls(vllm_config=cfg, kv_cache_config=kv, structured_output_manager=StructuredOutputManager(cfg), block_size=16)
        if "tpot_s" in spec:
            sched.eco_budget.tpot_s, sched.eco_budget.ttft_s = spec["tpot_s"], spec.get("ttft_s")
        return sched

    params = SamplingParams(max_tokens=10_000, ignore_eos=True)
    times: dict[str, list[float]] = {c: [] for c in CONFIGS}
    for rnd in range(rounds):
        for config in CONFIGS if rnd % 2 == 0 else reversed(CONFIGS):
            sched = make(config)
            for i in range(running):
                sched.add_request(Request(f"{rnd}-{i}", list(range(1, 101 + i)), params, None))
            for k in range(steps):
                t = time.perf_counter()
                sched.has_requests()
                out = sched.schedule()
                ids = list(out.num_scheduled_tokens)
                runner = ModelRunnerOutput(req_ids=ids, req_id_to_index={r: j for j, r in enumerate(ids)}, sampled_token_ids=[[7]] * len(ids))
                sched.update_from_output(out, runner)
                if k >= 5:  # decode steps only
                    times[config].append(time.perf_counter() - t)
            sched.shutdown()
    med = {c: statistics.median(v) * 1e6 for c, v in times.items()}
    return {
        "running": running,
        "median_us": med,
        "ratio_vs_stock": {c: med[c] / med["stock"] for c in CONFIGS},
        "added_us": {c: med[c] - med["stock"] for c in CONFIGS},
    }


def measure_latency(model: str, n: int = 50) -> dict:
    """Phase-command round trips over ZeroMQ, engine in its own process."""
    import zmq
    from vllm import LLM

    from ecoserve.protocol import GetStatus, PhaseCommand, decode_reply, decode_status, encode

    llm = LLM(model=model, scheduler_cls=CONFIGS["eco-temporal"]["scheduler_cls"], **ENGINE_KW)
    status = decode_status(llm.llm_engine.engine_core.call_utility("ecoserve_command", encode(GetStatus())))
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.connect(status.addresses.command)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(status.addresses.status)
    time.sleep(0.3)

    def call(phase: str):
        t = time.perf_counter()
        req.send(encode(PhaseCommand(phase=phase)))
        reply = decode_reply(req.recv())
        return time.perf_counter() - t, reply

    idle = [call("temporal")[0] for _ in range(n)]

    prompts, params = _workload(256, llm.get_tokenizer().vocab_size, seed=1)
    params.max_tokens = 200
    gen = threading.Thread(target=llm.generate, args=(prompts, params), kwargs={"use_tqdm": False})
    gen.start()
    busy, lag, step_ms = [], [], []
    last_step = 0
    while gen.is_alive() and len(busy) < n:
        while sub.poll(0):
            st = decode_status(sub.recv())
            if st.steps:
                last_step = st.steps[-1].step
                step_ms.append(st.steps[-1].duration_s * 1e3)
        if last_step == 0:
            time.sleep(0.01)
            continue
        rtt, reply = call("temporal")  # re-asserting the phase: same path, no effect
        if reply.num_decoding:  # engine busy at that moment
            busy.append(rtt)
            lag.append(reply.step - last_step)
        time.sleep(0.02)
    gen.join()
    q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")  # noqa: E731
    return {
        "idle_rtt_ms": {"median": statistics.median(idle) * 1e3, "p99": q(idle, 0.99) * 1e3},
        "busy_rtt_ms": {"median": statistics.median(busy) * 1e3 if busy else None, "p99": q(busy, 0.99) * 1e3, "n": len(busy)},
        "busy_step_ms_median": statistics.median(step_ms) if step_ms else None,
        "busy_steps_after_last_pushed": {"median": statistics.median(lag) if lag else None, "max": max(lag, default=None)},
    }


def _child(flag: str, args, env) -> dict:
    cmd = [sys.executable, __file__, flag, "--model", args.model, "--num-requests", str(args.num_requests), "--reps", str(args.reps)]
    with tempfile.TemporaryDirectory(prefix="ecoserve-bench-") as d:
        child = EngineProcess(cmd, env, Path(d) / "child.log", header=None)
        child.start()
        code = child.wait_exit()
        stop_engines([child])  # what it left in its group
        out = (Path(d) / "child.log").read_text(errors="replace")
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if code or not lines:
        sys.exit(f"{flag} failed:\n{out[-3000:]}")
    return json.loads(lines[-1][7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model directory (default: generate the tiny model)")
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--reps", type=int, default=20, help="workload repetitions per config")
    ap.add_argument("--latency", action="store_true", help="also measure command round trips")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    for flag in ("--engine-child", "--sched-child", "--latency-child"):
        ap.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.model is None:
        from ecoserve.models import make_model, model_matches

        args.model = str(Path(tempfile.gettempdir()) / "ecoserve-bench-tiny")
        if not model_matches(args.model, "tiny", 0):
            make_model(args.model, size="tiny", seed=0, force=True)
    for flag, fn in (
        ("engine_child", lambda: run_engine(args.model, args.num_requests, args.reps)),
        ("sched_child", lambda: scheduler_only(args.model)),
        ("latency_child", lambda: measure_latency(args.model)),
    ):
        if getattr(args, flag):
            print("RESULT " + json.dumps(fn()), flush=True)
            return

    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0")  # one core: far less jitter than all
    engine = _child("--engine-child", args, env)
    report = {
        "model": args.model,
        "num_requests": args.num_requests,
        "reps": args.reps,
        "engine": engine,
        "step_ratio_vs_stock": {c: engine["step_median_ms"][c] / engine["step_median_ms"]["stock"] for c in CONFIGS},
        "sched_ratio_vs_stock": {c: engine["sched_median_us"][c] / engine["sched_median_us"]["stock"] for c in CONFIGS},
        "scheduler_only": _child("--sched-child", args, env),
    }
    if args.latency:
        report["command_latency"] = _child("--latency-child", args, env)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"model {args.model}: {args.num_requests} requests x {args.reps} reps per config, "
          f"{engine['steps_per_rep']} steps per rep, one engine")  # fmt: skip
    for c in CONFIGS:
        print(f"  {c:13s} step median {engine['step_median_ms'][c]:7.3f} ms (x{report['step_ratio_vs_stock'][c]:.3f})"
              f"   scheduler median {engine['sched_median_us'][c]:7.1f} us (x{report['sched_ratio_vs_stock'][c]:.3f})")  # fmt: skip
    print(f"  noise: stock odd/even repetitions x{engine['noise_odd_even']:.3f}")
    so = report["scheduler_only"]
    print(f"  scheduler only, {so['running']} decoding requests, no model:")
    for c in CONFIGS:
        print(f"  {c:13s} {so['median_us'][c]:7.1f} us per step (x{so['ratio_vs_stock'][c]:.3f}, {so['added_us'][c]:+.1f} us)")
    if "command_latency" in report:
        print("  command latency:", json.dumps(report["command_latency"]))


if __name__ == "__main__":
    main()
