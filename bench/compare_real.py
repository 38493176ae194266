"""EcoServe against stock-vLLM baselines on real CPU engines of this machine,
side by side in one run, plus the engine profile the simulator needs.

    nice -n 0 .venv/bin/python bench/compare_real.py            # ~40 min on 2 cores
    .venv/bin/python bench/compare_real.py --quick               # smoke run, ~10 min

Systems, all on 2 engines of the `small` generated model (one core each,
VLLM_CPU_OMP_THREADS_BIND=0 / 1), same workloads and SLOs:
- ecoserve:      `ecoserve serve --policy ecoserve` attached to 2 plugin engines;
- round-robin,
  least-loaded:  `ecoserve serve --policy round-robin|least-loaded` attached to the
                 same engines, which the coordinator puts in phase `mixed`: the
                 stock vLLM V1 scheduler (chunked prefill, 2048-token budget);
- fudg-1p1d:     1 prefill + 1 decode stock vLLM engine with ExampleConnector KV
                 transfer through a temporary directory, behind
                 `python -m ecoserve.bench.disagg_proxy`;
- ecoserve-noprefix: EcoServe with --no-prefix-routing, the prefix-routing ablation;
  ecoserve-estimated: with --no-kv-events, each engine's cache estimated from the
  prompts routed there;
- ecoserve-trickle: `serve --policy ecoserve-trickle` (policy/trickle.py): the engines
  rest in chunked prefill at 2048 tokens a step, the budget `ecoserve simulate sweep
  --policies ecoserve-trickle` picks on these engines' profile for all three
  workloads; a prompt opens a prefill window only where chunking would miss TTFT.
  ecoserve-trickle-64: the same at 64 tokens a step (the sweep's runner-up);
- router-rr, router-cache, router-rr-256: what a user would run instead: vllm-router
                 (PyPI) with its round_robin or cache_aware policy over 2 stock vLLM
                 engines, at vLLM's default token budget (2048) or at 256
                 (``ecoserve.bench.peers``); router-kv: its kv_aware policy, fed by
                 the stock engines' KV-cache events;
- router-rr-plugin: vllm-router round_robin over 2 engines running the EcoServe plugin
                 alone (no coordinator): the plugin's SLO-aware chunk budget on every
                 engine (ECOSERVE_TPOT_SLO and ECOSERVE_TTFT_SLO, the workload's SLOs),
                 the real-engine counterpart of the simulator's sarathi-dyn.
Every engine except fudg-1p1d's publishes its KV-cache events (ipc://, sha256_cbor
block hashes), as `ecoserve serve` starts its own; prefix caching is on everywhere
(vLLM's default).
Every measurement is `ecoserve bench sweep` (the exact command lines are logged
to OUT/commands.txt); the engines' prefix caches are reset before each run so
no system profits from prompts another one sent.

Workloads (files under OUT/workloads, replayed time-scaled to each rate, so
`ecoserve simulate` can take the very same requests):
- sharegpt-half: the ShareGPT-like synthetic lengths of ecoserve.workload
  (means 344 / 237 tokens), both lengths x0.5, Poisson arrivals;
- azure-quarter: the Azure conversation trace's first requests, both lengths
  x0.25, its own arrival times (burstiness kept);
- longbench-quarter: long documents, short answers (LongBench-like lengths x0.25);
- chat-small: multi-turn chat sessions (ecoserve.workload.sessions) whose prompts
  really share system prompts and histories (the trace's block hashes become
  shared tokens in `ecoserve bench`).
SLOs are derived from the profile of engine 0 (see `slos_from_profile`).
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import math
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from ecoserve.bench.peers import VllmRouter
from ecoserve.engine.kv_events import local_endpoint, publishing_args
from ecoserve.engine.process import EngineProcess, engine_env, stop_engines, vllm_command

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
MODEL = ROOT / ".cache/models/small"
ENGINE_ARGS = ["--max-model-len", "2048", "--enforce-eager", "--dtype", "bfloat16"]
KV_GIB = "2"
HARDWARE = "1 core (VLLM_CPU_OMP_THREADS_BIND=0) of the 2-core host, bf16, vllm-cpu 0.32, small model"
# vllm-router peers: system -> (its policy, the stock engines' max_num_batched_tokens; None: vLLM's default,
# 2048 for this engine: "max_num_batched_tokens=2048" in the engines' config log). The round-robin rows
# sweep the budget (the stock-vLLM tuning a user would do); cache_aware and power_of_two run at the
# default and at 256 (the budget the short-prompt screens favoured).
ROUTER_PEERS = {"router-rr-256": ("round_robin", 256), "router-rr-512": ("round_robin", 512),
                "router-rr-1024": ("round_robin", 1024), "router-rr": ("round_robin", None),
                "router-cache": ("cache_aware", None), "router-cache-256": ("cache_aware", 256),
                "router-p2c": ("power_of_two", None), "router-p2c-256": ("power_of_two", 256),
                "router-kv": ("kv_aware", None)}
WORKLOADS = ("sharegpt-half", "azure-quarter", "longbench-quarter", "chat-small")
# EcoServe variants, each `serve` with these flags: the prefix-routing ablation, the cache
# estimate from routed prompts alone (no KV events), and trickle-first scheduling.
ECOSERVE_VARIANTS = {"ecoserve-noprefix": ["--policy", "ecoserve", "--no-prefix-routing"],
                     "ecoserve-estimated": ["--policy", "ecoserve", "--no-kv-events"],
                     "ecoserve-trickle": ["--policy", "ecoserve-trickle", "--chunk-size", "2048"],
                     "ecoserve-trickle-64": ["--policy", "ecoserve-trickle", "--chunk-size", "64"],
                     # the same flags as ecoserve-trickle: its label for runs after the last-chunk fix (41ecc97)
                     "ecoserve-trickle-2048": ["--policy", "ecoserve-trickle", "--chunk-size", "2048"],
                     # issue 15's no-reuse check: trickle-64 without prefix routing, side by side with it
                     "ecoserve-trickle-64-noprefix": ["--policy", "ecoserve-trickle", "--chunk-size", "64",
                                                      "--no-prefix-routing"],
                     # queued requests whose TTFT is lost wait behind the savable ones (MacroInstance.lost_yield)
                     "ecoserve-trickle-64-yield": ["--policy", "ecoserve-trickle", "--chunk-size", "64", "--lost-yield"],
                     "ecoserve-trickle-2048-yield": ["--policy", "ecoserve-trickle", "--chunk-size", "2048",
                                                     "--lost-yield"]}
# vllm-router over engines that run the plugin alone: system -> the router's policy. The engines'
# env comes from each workload's SLOs, so they restart per workload (plugin_engine_env).
PLUGIN_PEERS = {"router-rr-plugin": "round_robin"}
SYSTEMS = ("ecoserve", *ECOSERVE_VARIANTS, "round-robin", "least-loaded", "fudg-1p1d", *ROUTER_PEERS,
           *PLUGIN_PEERS)
DEFAULT_SYSTEMS = ("ecoserve", "router-rr-256", "router-rr-512", "router-rr-1024", "router-rr", "router-cache",
                   "router-p2c")
LONG_CONTEXT = 2000  # prompt + output of longbench-quarter; the engines' --max-model-len is 2048
ENGINE_START_S = 600.0
STOP_GRACE_S = 20.0
MIN_REQUESTS = 60


# -- processes (ecoserve.engine.process: own group, parent-death signal, atexit sweep) ---


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)  # so atexit stops the engines (started with & SIGINT is ignored)


def _spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> EngineProcess:
    # Our session: one scheduler autogroup for every process of the run, so an engine
    # worker's spin-wait (sched_yield) really yields to the API servers, the coordinator
    # and the client (see ecoserve/engine/process.py).
    p = EngineProcess(cmd, env if env is not None else dict(os.environ), log, cwd=ROOT)
    p.start()
    return p


def start_engine(port: int, core: int, log: Path, *, plugin: bool, kv_dir: str | None = None,
                 budget: int | None = None, env_extra: dict[str, str] | None = None) -> EngineProcess:  # fmt: skip
    # host None: vLLM's default; plugin False: stock vLLM, no EcoServe plugin loaded at all
    extra = ["--max-num-batched-tokens", str(budget)] if budget else []
    # KV-cache events, as `ecoserve serve` starts its engines with: for the coordinator's prefix
    # index, and for vllm-router's kv_aware policy over stock engines (the other peers ignore them).
    if not kv_dir:
        extra += publishing_args(ENGINE_ARGS, kv_events_endpoint(core, port, plugin=plugin))
    cmd = vllm_command(MODEL, port, ENGINE_ARGS + extra, host=None, plugin=plugin)
    env = engine_env({"VLLM_CPU_OMP_THREADS_BIND": str(core), "VLLM_CPU_KVCACHE_SPACE": KV_GIB,
                      "VLLM_SERVER_DEV_MODE": "1", **(env_extra or {})}, plugin=plugin)  # fmt: skip
    if kv_dir:
        cfg = {"kv_connector": "ExampleConnector", "kv_role": "kv_both",
               "kv_connector_extra_config": {"shared_storage_path": kv_dir}}  # fmt: skip
        cmd += ["--kv-transfer-config", json.dumps(cfg)]
        if core == 0:
            # The prefill engine must compute each prompt in one step: ExampleConnector saves
            # only the chunk of a chunked prefill, and the decode engine then dies loading
            # it ("shape mismatch: [1280, 4, 128] ... [1920, 4, 128]", seen at 1.75 req/s).
            cmd += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", "2048"]
    return _spawn(cmd, log, env)


def plugin_engine_env(slo: dict, profile_path: Path | None) -> dict[str, str]:
    """The env of an engine running the plugin alone, SLO-aware: chunked prefill at the
    budget the plugin derives from its own requests' slack (vllm_plugin/README.md)."""
    env = {"ECOSERVE_PHASE": "chunked", "ECOSERVE_TPOT_SLO": str(slo["slo_tpot"]),
           "ECOSERVE_TTFT_SLO": str(slo["slo_ttft"])}  # fmt: skip
    if profile_path is not None:
        env["ECOSERVE_PROFILE"] = str(profile_path)
    return env


def prefix_counters(urls: list[str]) -> tuple[float, float]:
    """Prompt tokens the engines found in their prefix caches, and looked up, so far
    (their vllm:prefix_cache_hits_total and _queries_total, summed)."""
    hits = queries = 0.0
    for key, value in metric_samples(urls, "vllm:prefix_cache_"):
        if key.startswith("vllm:prefix_cache_hits_total{"):
            hits += value
        elif key.startswith("vllm:prefix_cache_queries_total{"):
            queries += value
    return hits, queries


def metric_samples(urls: list[str], prefix: str):
    """(sample name with labels, value) of every engine's /metrics line starting with ``prefix``."""
    for u in urls:
        for line in httpx.get(u + "/metrics", timeout=30).text.splitlines():
            if line.startswith(prefix):
                key, value = line.rsplit(" ", 1)
                yield key, float(value)


def predicted_hits(url: str) -> int | None:
    """Prompt tokens an EcoServe coordinator predicted its engines' prefix caches
    would serve, so far (its /ecoserve/status); None for servers without one."""
    try:
        r = httpx.get(url + "/ecoserve/status", timeout=30)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    caches = [i.get("prefix_cache") or {} for i in r.json().get("instances", [])]
    return sum(int(c.get("predicted_hit_tokens", 0)) for c in caches)


def kv_events_endpoint(core: int, port: int, *, plugin: bool) -> str:
    """Plugin engines publish on ipc:// as `serve` has them do. Stock engines publish on
    tcp://*:PORT+100, because vllm-router takes only tcp://HOST:PORT and vLLM 0.32 binds its
    PUB only for a wildcard host (a benchmark host's engines, not a deployment's)."""
    return local_endpoint(f"bench{core}", port) if plugin else f"tcp://*:{port + 100}"


def kv_aware_args(urls: list[str], ports: tuple[int, ...]) -> list[str]:
    """vllm-router's kv_aware policy: each stock engine's KV-event endpoint, its block size
    (128 on the CPU backend) and the tokenizer it hashes prompts with."""
    args: list[str] = []
    for u, port in zip(urls, ports):
        args += ["--kv-event-source", f"{u}=tcp://127.0.0.1:{port + 100}"]
    return [*args, "--kv-event-block-size", "128", "--kv-event-model", str(MODEL)]


def reset_prefix_cache(urls: list[str]) -> None:
    for u in urls:
        r = httpx.post(u + "/reset_prefix_cache", timeout=30)
        if r.status_code != 200:
            print(f"warning: {u}/reset_prefix_cache -> {r.status_code}", file=sys.stderr)


class StepCapture:
    """Every step the plugin engines run during a measurement, from their
    status pushes (ZeroMQ SUB; nothing is asked of the engines). Shows how fast
    the engines really stepped under the run's load (the host is shared), and
    what the simulator's profile should have predicted."""

    def __init__(self, urls: list[str]) -> None:
        import threading

        import zmq

        self.records: dict[tuple[str, int], dict] = {}
        self._stop = threading.Event()
        self._ctx = zmq.Context.instance()
        self._socks = []
        for u in urls:
            addr = httpx.get(u + "/ecoserve/status", timeout=30).json()["addresses"]["status"]
            sock = self._ctx.socket(zmq.SUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, 100_000)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.connect(addr)
            self._socks.append((u, sock))
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        import zmq

        from ecoserve.protocol import decode_status

        poller = zmq.Poller()
        for _, sock in self._socks:
            poller.register(sock, zmq.POLLIN)
        names = {sock: u for u, sock in self._socks}
        while not self._stop.is_set():
            for sock, _ in poller.poll(200):
                st = decode_status(sock.recv())
                for r in st.steps:
                    self.records[(names[sock], r.step)] = {
                        "engine": names[sock], "step": r.step, "start": r.start, "kind": r.kind,
                        "duration_s": r.duration_s, "prefill_tokens": r.prefill_tokens, "prefill_reqs": r.prefill_reqs,
                        "decode_batch": r.decode_batch, "decode_context_tokens": r.decode_context_tokens}

    def stop(self) -> list[dict]:
        self._stop.set()
        self._thread.join(5)
        for _, sock in self._socks:
            sock.close(0)
        return sorted(self.records.values(), key=lambda r: (r["engine"], r["step"]))


# -- workloads and SLOs -----------------------------------------------------------------


def write_workloads(out: Path, n: int) -> dict[str, Path]:
    """Scaled copies of the two workloads as Mooncake-style JSONL traces."""
    from ecoserve.workload import WorkloadTemplate, default_azure_path, load_trace
    from ecoserve.workload.arrivals import times_from_gaps, unit_gaps
    from ecoserve.workload.sessions import ChatSessions, chat_trace

    d = out / "workloads"
    d.mkdir(parents=True, exist_ok=True)
    paths = {}
    tpl = WorkloadTemplate("sharegpt", num_requests=n, seed=0)
    times = times_from_gaps(unit_gaps(n, 1.0, random.Random("0:arrivals")), 1.0)
    rows = [(t, max(4, round(p * 0.5)), max(1, round(o * 0.5))) for t, (p, o) in zip(times, tpl.pairs)]
    paths["sharegpt-half"] = _write_jsonl(d / "sharegpt-half.jsonl", rows)
    az = load_trace(default_azure_path()).head(n)
    rows = [(t, max(4, round(p * 0.25)), max(1, round(o * 0.25))) for t, p, o in zip(az.times, az.prompts, az.outputs)]
    paths["azure-quarter"] = _write_jsonl(d / "azure-quarter.jsonl", rows)
    # Long documents, short answers: LongBench-like lengths (ecoserve.workload.lengths) x0.25, so a
    # prompt is ~3.4x sharegpt-half's (LongBench/ShareGPT is 7.8x in the paper); prompt + output
    # clipped to the engines' 2048-token context. Prefill/decode interference is largest here.
    tpl = WorkloadTemplate("longbench", num_requests=n, seed=0)
    times = times_from_gaps(unit_gaps(n, 1.0, random.Random("0:arrivals-long")), 1.0)
    rows = []
    for t, (p, o) in zip(times, tpl.pairs):
        o = max(1, round(o * 0.25))
        rows.append((t, min(max(4, round(p * 0.25)), LONG_CONTEXT - o), o))
    paths["longbench-quarter"] = _write_jsonl(d / "longbench-quarter.jsonl", rows)
    # Multi-turn chat (ecoserve.workload.sessions) sized for these slow engines (a 1,000-token prefill
    # takes ~2 s on one core): 4 shared system prompts of 512 tokens, turns re-sending their history up
    # to 1,500 tokens; the block hashes go with the trace, so `ecoserve bench` sends prompts that really
    # share those prefixes.
    chat = chat_trace(ChatSessions(sessions=max(20, n // 3), system_prompts=4, system_tokens=512,
                                   user_tokens=(30, 150), answer_tokens=(30, 120), max_prompt_tokens=1500,
                                   think_s=10.0, seed=0)).head(n)  # fmt: skip
    rows = list(zip(chat.times, chat.prompts, chat.outputs, chat.blocks))
    paths["chat-small"] = _write_jsonl(d / "chat-small.jsonl", rows)
    return paths


def _write_jsonl(path: Path, rows) -> Path:
    with open(path, "w") as f:
        for t, p, o, *blocks in rows:
            row = {"timestamp": round(t * 1000, 3), "input_length": p, "output_length": o}
            if blocks:
                row["hash_ids"] = list(blocks[0])
            f.write(json.dumps(row) + "\n")
    return path


def slos_from_profile(profile_path: Path, workloads: dict[str, Path]) -> dict[str, dict]:
    """TTFT SLO = 10 x the lone prefill of the workload's mean prompt (queueing
    and phase waits get 9x the compute); TPOT SLO = 2.5 x a decode step at
    batch 8 and context 512 (a moderately loaded engine). Ratios like the
    paper's ShareGPT/Llama-30B setup on GPUs (5 s vs ~0.1-0.5 s prefill; 100 ms
    vs ~30-40 ms decode steps)."""
    from ecoserve.workload import EngineProfile, load_trace

    prof = EngineProfile.load(profile_path)
    tpot = round(2.5 * prof.decode_time(8, 512), 3)
    out = {}
    for name, path in workloads.items():
        tr = load_trace(path)
        mean_p = sum(tr.prompts) / len(tr.prompts)
        ttft = round(10 * prof.prefill_time(round(mean_p)), 2)
        out[name] = {"slo_ttft": ttft, "slo_tpot": tpot, "mean_prompt": round(mean_p, 1),
                     "mean_output": round(sum(tr.outputs) / len(tr.outputs), 1),
                     "prefill_mean_prompt_s": round(prof.prefill_time(round(mean_p)), 4),
                     "decode_b8_c512_s": round(prof.decode_time(8, 512), 5)}  # fmt: skip
    return out


# -- measuring ---------------------------------------------------------------------------


class Recorder:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.cmds = out / "commands.txt"

    def log(self, cmd: list[str]) -> None:
        with open(self.cmds, "a") as f:
            f.write(shlex.join(str(c) for c in cmd) + "\n")

    def run_json(self, cmd: list[str], dest: Path, timeout: float = 3600) -> dict:
        self.log(cmd)
        t0 = time.time()
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"failed ({r.returncode}): {shlex.join(cmd)}\n{r.stderr[-3000:]}")
        if r.stderr.strip():
            sys.stderr.write(r.stderr[-800:])
        obj = json.loads(r.stdout)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(obj, indent=1) + "\n")
        print(f"  [{time.time() - t0:.0f} s] {dest.name}", flush=True)
        return obj


def recorded(out: Path, label: str, wl: str, rate: float) -> dict | None:
    """The run of an earlier measurement, from its raw file (None: not measured)."""
    f = out / "raw" / f"{label}-{wl}-{rate:g}.json"
    if not f.is_file():
        return None
    run = json.loads(f.read_text())["results"][0]["runs"][0]
    steps = steps_path(out, label, wl, rate)
    if steps.is_file():
        run["engine_steps"] = len(read_steps(steps))
    return run


def steps_path(out: Path, label: str, wl: str, rate: float) -> Path:
    # gzip: a run's step records are ~0.5 MB of JSON, a tenth of that compressed
    return out / "raw" / f"{label}-{wl}-{rate:g}-steps.json.gz"


def read_steps(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return json.load(f)


def requests_at(rate: float, most: int, seconds: float) -> int:
    """Requests of one point: ``most`` or ``seconds`` of arrivals, whichever comes
    first, but never under MIN_REQUESTS (a P90 of fewer means little)."""
    return min(most, max(MIN_REQUESTS, math.ceil(seconds * rate)))


def sweep(rec: Recorder, label: str, url: str, wl: str, path: Path, rates: list[float], slo: dict,
          engines: list[str], capture: bool, counts: dict[float, int], resume: bool = False) -> dict:  # fmt: skip
    """One `ecoserve bench sweep` per rate (so caches can be reset between runs),
    of ``counts[rate]`` requests. ``resume``: a rate already measured (its raw
    file exists) is read, not run."""
    runs = []
    for rate in rates:
        if resume and (run := recorded(rec.out, label, wl, rate)) is not None:
            runs.append(run)
            continue
        reset_prefix_cache(engines)
        steps = StepCapture(engines) if capture else None
        cmd = [PY, "-m", "ecoserve.cli", "bench", "sweep", "--base-url", url, "--model", str(MODEL),
               "--dataset", str(path), "--num-requests", str(counts[rate]), "--rates", f"{rate:g}", "--slo-ttft", str(slo["slo_ttft"]),
               "--slo-tpot", str(slo["slo_tpot"]), "--label", label, "--timeout", "900", "--no-progress", "--json"]
        load_before = os.getloadavg()[0]
        cache_before = prefix_counters(engines)
        predicted_before = predicted_hits(url)
        try:
            obj = rec.run_json(cmd, rec.out / "raw" / f"{label}-{wl}-{rate:g}.json")
        except RuntimeError as e:  # the server died: say so, do not sweep on against it
            print(f"  {label} / {wl} @ {rate:g}: {str(e)[-400:]}", file=sys.stderr, flush=True)
            if steps is not None:
                steps.stop()
            break
        run = obj["results"][0]["runs"][0]
        hits, queries = (a - b for a, b in zip(prefix_counters(engines), cache_before))
        # The engines' own account of their prefix caches during the run (vllm:prefix_cache_*).
        run["engine_prefix_hit_rate"] = round(hits / queries, 4) if queries else None
        run["engine_prefix_hit_tokens"] = int(hits)
        if predicted_before is not None:  # what the coordinator expected of those caches (EcoServe only)
            run["predicted_prefix_hit_tokens"] = predicted_hits(url) - predicted_before
        # the machine is shared: the 1-minute load average says how busy it was
        run["host_load_1min"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
        if steps is not None:
            recs = steps.stop()
            with gzip.open(steps_path(rec.out, label, wl, rate), "wt") as f:
                json.dump(recs, f)
            run["engine_steps"] = len(recs)
        raw = rec.out / "raw" / f"{label}-{wl}-{rate:g}.json"  # with what was measured beside the run
        raw.write_text(json.dumps(obj, indent=1) + "\n")
        runs.append(run)
    return {"policy": label, "workload": wl, "runs": runs}


CROSS_WORKLOAD = "sharegpt-half"  # its SLOs judge the cross-check
CROSS_IN, CROSS_OUT = 200, 110  # the issue's `vllm bench serve` setup: random 200-in / 110-out


def cross_check(rec: Recorder, label: str, url: str, slo: dict, rate: float, engines: list[str], n: int) -> dict:
    """One rate measured by vLLM's client (`vllm bench serve`, random prompts) and
    by ours (`ecoserve bench run`, the same lengths), one after the other, on the
    same arrivals: ours replays vLLM's send schedule (``send_times``), since two
    Poisson samples of 60 requests differ in their bursts far more than two
    clients differ in how they time a stream (measured: the 2026-12-01 run gave
    ours its own seed-0 sample, whose in-flight p90 under a fixed 10.5 s service
    is 18 requests against vLLM's 11). Each run also keeps the engines' own
    account of its TPOT (vllm:request_time_per_output_token_seconds), a referee
    neither client computes."""
    from ecoserve.bench.vllm_bench import read_summary, send_times

    raw = rec.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    name = f"{label}-vllm-bench-{rate:g}.json"
    reset_prefix_cache(engines)
    cmd = [PY, "-m", "ecoserve.bench.vllm_bench", "--backend", "openai", "--base-url", url, "--endpoint",
           "/v1/completions", "--model", str(MODEL), "--dataset-name", "random", "--random-input-len", str(CROSS_IN),
           "--random-output-len", str(CROSS_OUT), "--random-range-ratio", "0", "--num-prompts", str(n),
           "--request-rate", f"{rate:g}", "--ignore-eos", "--seed", "0", "--percentile-metrics", "ttft,tpot",
           "--metric-percentiles", "50,90,99", "--goodput", f"ttft:{slo['slo_ttft'] * 1e3:g}",
           f"tpot:{slo['slo_tpot'] * 1e3:g}", "--save-result", "--result-dir", str(raw), "--result-filename", name,
           "--disable-tqdm"]  # fmt: skip
    rec.log(cmd)
    t0 = time.time()
    before = engine_tpot(engines)
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False)
    if r.returncode != 0:
        print(f"  {label}: vllm bench serve failed ({r.returncode}): {r.stderr[-1500:]}", file=sys.stderr, flush=True)
        return {}
    print(f"  [{time.time() - t0:.0f} s] {name}", flush=True)
    theirs = {**read_summary(raw / name, n), "engine_tpot": engine_tpot_delta(before, engine_tpot(engines), slo)}
    times = send_times(n, rate, seed=0)
    fixed = _write_jsonl(rec.out / "workloads" / f"fixed-{CROSS_IN}-{CROSS_OUT}-vllm-arrivals-{rate:g}.jsonl",
                         [(t, CROSS_IN, CROSS_OUT) for t in times])  # fmt: skip
    reset_prefix_cache(engines)
    # --replay without --rate: the schedule as written (shifted to start at the first send)
    cmd = [PY, "-m", "ecoserve.cli", "bench", "run", "--base-url", url, "--model", str(MODEL), "--dataset", str(fixed),
           "--replay", "--num-requests", str(n), "--slo-ttft", str(slo["slo_ttft"]),
           "--slo-tpot", str(slo["slo_tpot"]), "--label", label, "--timeout", "900", "--no-progress", "--json"]  # fmt: skip
    before = engine_tpot(engines)
    try:
        obj = rec.run_json(cmd, raw / f"{label}-ours-vllm-arrivals-{rate:g}.json")
    except RuntimeError as e:
        print(f"  {label}: ecoserve bench run failed: {str(e)[-400:]}", file=sys.stderr, flush=True)
        return {"vllm_bench": theirs}
    run = obj["results"][0]["runs"][0] if "results" in obj else obj
    ours = {"attainment": run["attainment"], "ttft": run["ttft"], "tpot": run["tpot"],
            "failed": run.get("stats", {}).get("failed", 0),
            "engine_tpot": engine_tpot_delta(before, engine_tpot(engines), slo)}  # fmt: skip
    return {"rate": rate, "arrivals": "vllm bench serve's (seed 0), both clients", "vllm_bench": theirs,
            "ecoserve_bench": ours}


TPOT_METRIC = "vllm:request_time_per_output_token_seconds"


def engine_tpot(urls: list[str]) -> dict:
    """The engines' per-request TPOT histogram so far, summed over engines:
    {"sum": s, "count": n, "le": {bucket bound: requests at or under it}}."""
    acc: dict = {"sum": 0.0, "count": 0.0, "le": {}}
    for key, value in metric_samples(urls, TPOT_METRIC):
        if key.startswith(TPOT_METRIC + "_sum"):
            acc["sum"] += value
        elif key.startswith(TPOT_METRIC + "_count"):
            acc["count"] += value
        elif key.startswith(TPOT_METRIC + "_bucket") and 'le="' in key:
            le = key.split('le="', 1)[1].split('"', 1)[0]
            if le != "+Inf":
                acc["le"][float(le)] = acc["le"].get(float(le), 0.0) + value
    return acc


def engine_tpot_delta(before: dict, after: dict, slo: dict) -> dict:
    """One run's share of the engines' TPOT histogram: its mean, and the share of
    its requests at or under the largest bucket bound within the TPOT SLO."""
    n = after["count"] - before["count"]
    if n <= 0:
        return {}
    bounds = [b for b in after["le"] if b <= slo["slo_tpot"]]
    out = {"requests": int(n), "mean": round((after["sum"] - before["sum"]) / n, 5)}
    if bounds:
        b = max(bounds)
        out[f"share_le_{b:g}"] = round((after["le"][b] - before["le"].get(b, 0.0)) / n, 4)
    return out


def earlier_runs(out: Path, workloads: dict, rates: dict) -> list[dict]:
    found = []
    for system in SYSTEMS:
        for wl in workloads:
            runs = [run for rate in rates[wl] if (run := recorded(out, system, wl, rate)) is not None]
            if runs:
                found.append({"policy": system, "workload": wl, "runs": runs})
    return found


def interp_goodput(points: list[tuple[float, float]], level: float) -> float:
    """Rate where the measured attainment curve first drops below ``level``,
    linearly interpolated between measured rates (0 if the lowest fails)."""
    pts = sorted(points)
    if not pts or pts[0][1] < level:
        return 0.0
    for (r0, a0), (r1, a1) in itertools.pairwise(pts):
        if a1 < level:
            return r0 + (r1 - r0) * (a0 - level) / (a0 - a1)
    return pts[-1][0]


# -- main ----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/real")
    ap.add_argument("--num-requests", type=int, default=200,
                    help="requests per point at most (see --seconds)")
    ap.add_argument("--seconds", type=float, default=120.0,
                    help=f"a point stops at this many seconds of arrivals if --num-requests takes longer, "
                         f"but has at least {MIN_REQUESTS} requests")
    ap.add_argument("--rates-sharegpt-half", default="1.25,1.75,2.5")
    ap.add_argument("--rates-azure-quarter", default="2,3,4")
    ap.add_argument("--rates-longbench-quarter", default="0.3,0.6,0.9")
    ap.add_argument("--rates-chat-small", default="0.5,1,1.5")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help=f"of {', '.join(WORKLOADS)}")
    ap.add_argument("--cross-check-rate", type=float, default=1.0,
                    help="rate of the vllm bench serve cross-check (0: none): random prompts of 200 tokens "
                         "and 110 output tokens, per system, measured by vLLM's client and then by ours")
    ap.add_argument("--cross-check-requests", type=int, default=100, help="requests of each cross-check run")
    ap.add_argument("--cross-check-only", action="store_true",
                    help="run only the systems' cross-checks, no sweeps (implies --keep-others: the sweeps "
                         "stand as OUT/results.json and raw/ have them)")
    ap.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS), help=f"of {', '.join(SYSTEMS)}")
    ap.add_argument("--profile", type=Path, default=None, help="reuse this profile instead of measuring one")
    ap.add_argument("--quick", action="store_true", help="smoke run: 20 requests, 2 rates, quick profile")
    ap.add_argument("--keep-others", action="store_true",
                    help="keep the results of systems not run now from an earlier OUT/results.json")
    ap.add_argument("--resume", action="store_true",
                    help="keep OUT's earlier measurements and run only the (system, workload, rate) points "
                         "not measured yet, e.g. to add rates")
    ap.add_argument("--table-only", action="store_true",
                    help="only rewrite OUT/RESULTS-table.md and the plots from OUT/results.json")
    a = ap.parse_args()
    if a.table_only:
        summary = json.loads((a.out / "results.json").read_text())
        (a.out / "RESULTS-table.md").write_text(table(summary))
        plot(summary, a.out)
        return
    if a.cross_check_only:
        if a.cross_check_rate <= 0:
            ap.error("--cross-check-only needs a --cross-check-rate above 0")
        a.keep_others, a.workloads = True, CROSS_WORKLOAD
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    out: Path = a.out
    out.mkdir(parents=True, exist_ok=True)
    if a.quick:
        a.num_requests = 20
        a.rates_sharegpt_half = a.rates_azure_quarter = "0.5,1.5"
        a.rates_longbench_quarter = "0.2,0.5"
    systems = [s for s in a.systems.split(",") if s]
    if bad := [s for s in systems if s not in SYSTEMS]:
        ap.error(f"unknown system(s) {', '.join(bad)}; choose from {', '.join(SYSTEMS)}")
    chosen = [w for w in a.workloads.split(",") if w]
    if bad := [w for w in chosen if w not in WORKLOADS]:
        ap.error(f"unknown workload(s) {', '.join(bad)}; choose from {', '.join(WORKLOADS)}")
    rates = {w: [float(x) for x in getattr(a, "rates_" + w.replace("-", "_")).split(",")] for w in chosen}
    counts = {w: {r: requests_at(r, a.num_requests, a.seconds) for r in rs} for w, rs in rates.items()}
    rec = Recorder(out)
    with open(rec.cmds, "a" if a.keep_others or a.resume else "w") as f:
        f.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  {shlex.join([PY, *sys.argv])}\n")
    if not (MODEL / "config.json").is_file():
        subprocess.run([PY, "-m", "ecoserve.cli", "make-model", str(MODEL), "--size", "small"], check=True)
    workloads = {w: p for w, p in write_workloads(out, a.num_requests).items() if w in rates}
    logs = out / "logs"
    if logs.exists() and not (a.keep_others or a.resume):
        shutil.rmtree(logs)
    t_start = time.time()
    results: list[dict] = []
    cross: dict[str, dict] = {}
    ports = (18201, 18202)
    e_urls = [f"http://127.0.0.1:{p}" for p in ports]

    # Phase A: two plugin engines, shared by EcoServe and the NoDG baselines.
    nodg = [s for s in systems if s != "fudg-1p1d" and s not in ROUTER_PEERS and s not in PLUGIN_PEERS]
    profile_path = a.profile
    if nodg or profile_path is None:
        print("starting 2 plugin engines ...", flush=True)
        engines = [start_engine(p, i, logs / f"engine{i}.log", plugin=True) for i, p in enumerate(ports)]
        for u, e in zip(e_urls, engines):
            e.wait_healthy(u, ENGINE_START_S)
        if profile_path is None:
            profile_path = out / "profile-small-1core.json"
            cmd = [PY, "-m", "ecoserve.cli", "profile", "--engine-url", e_urls[0], "--model", str(MODEL), "--out",
                   str(profile_path), "--no-progress", "--hardware", HARDWARE] + (["--quick"] if a.quick else [])
            rec.log(cmd)
            print("profiling engine 0 ...", flush=True)
            subprocess.run(cmd, cwd=ROOT, check=True)
        slos = slos_from_profile(profile_path, workloads)
        (out / "slos.json").write_text(json.dumps(slos, indent=1) + "\n")
        print(f"SLOs: {json.dumps(slos)}", flush=True)
        for i, system in enumerate(nodg):
            for wl, path in workloads.items():
                # one front door per workload: EcoServe routes by the workload's SLOs
                port = 18210 + i
                url = f"http://127.0.0.1:{port}"
                policy = ECOSERVE_VARIANTS.get(system, ["--policy", system])
                cmd = [PY, "-m", "ecoserve.cli", "serve", *policy, "--port", str(port),
                       "--slo-ttft", str(slos[wl]["slo_ttft"]), "--slo-tpot", str(slos[wl]["slo_tpot"]),
                       "--profile", str(profile_path), "--tokenizer", str(MODEL),
                       "--engine-url", e_urls[0], "--engine-url", e_urls[1]]  # fmt: skip
                rec.log(cmd)
                log = logs / f"serve-{system}-{wl}.log"
                serve = _spawn(cmd, log)
                serve.wait_healthy(url, 120)
                print(f"{system} / {wl} ...", flush=True)
                if not a.cross_check_only:
                    results.append(sweep(rec, system, url, wl, path, rates[wl], slos[wl], e_urls, capture=True,
                                         counts=counts[wl], resume=a.resume))
                if wl == CROSS_WORKLOAD and a.cross_check_rate > 0:
                    cross[system] = cross_check(rec, system, url, slos[wl], a.cross_check_rate, e_urls,
                                                 a.cross_check_requests)
                serve.stop(STOP_GRACE_S, signal.SIGINT)
        stop_engines(engines, STOP_GRACE_S)
    else:
        slos = slos_from_profile(profile_path, workloads)

    # Phase B: fully disaggregated, 1 prefill + 1 decode stock engine.
    if "fudg-1p1d" in systems:
        kv_dir = tempfile.mkdtemp(prefix="ecoserve-fudg-kv-")
        try:
            print("starting prefill + decode engines (ExampleConnector) ...", flush=True)
            engines = [start_engine(p, i, logs / f"fudg-engine{i}.log", plugin=False, kv_dir=kv_dir)
                       for i, p in enumerate(ports)]  # fmt: skip
            for u, e in zip(e_urls, engines):
                e.wait_healthy(u, ENGINE_START_S)
            port = 18220
            url = f"http://127.0.0.1:{port}"
            cmd = [PY, "-m", "ecoserve.bench.disagg_proxy", "--prefill", e_urls[0], "--decode", e_urls[1],
                   "--port", str(port)]  # fmt: skip
            rec.log(cmd)
            proxy = _spawn(cmd, logs / "disagg-proxy.log")
            proxy.wait_healthy(url, 60)
            for wl, path in workloads.items():
                print(f"fudg-1p1d / {wl} ...", flush=True)
                results.append(sweep(rec, "fudg-1p1d", url, wl, path, rates[wl], slos[wl], e_urls, capture=False,
                                     counts=counts[wl], resume=a.resume))
                kv_bytes = sum(f.stat().st_size for f in Path(kv_dir).rglob("*") if f.is_file())
                print(f"  KV files written so far: {kv_bytes / 1e9:.2f} GB", flush=True)
            stop_engines([proxy, *engines], STOP_GRACE_S)
        finally:
            shutil.rmtree(kv_dir, ignore_errors=True)

    # Phase C: the real peer, vllm-router over 2 stock engines, per engine budget.
    for budget in sorted({ROUTER_PEERS[s][1] or 0 for s in systems if s in ROUTER_PEERS}):
        peers = [s for s in systems if s in ROUTER_PEERS and (ROUTER_PEERS[s][1] or 0) == budget]
        print(f"starting 2 stock engines (budget {budget or 'default'}) for {', '.join(peers)} ...", flush=True)
        engines = [start_engine(p, i, logs / f"stock{budget}-engine{i}.log", plugin=False, budget=budget or None)
                   for i, p in enumerate(ports)]  # fmt: skip
        for u, e in zip(e_urls, engines):
            e.wait_healthy(u, ENGINE_START_S)
        for system in peers:
            policy = ROUTER_PEERS[system][0]
            extra = kv_aware_args(e_urls, ports) if policy == "kv_aware" else []
            router = VllmRouter(e_urls, policy=policy, log_path=logs / f"{system}.log", extra_args=extra).start()
            rec.log(router.process.cmd)
            for wl, path in workloads.items():
                if a.cross_check_only:
                    break
                print(f"{system} / {wl} ...", flush=True)
                results.append(sweep(rec, system, router.url, wl, path, rates[wl], slos[wl], e_urls,
                                     capture=False, counts=counts[wl], resume=a.resume))
            if CROSS_WORKLOAD in workloads and a.cross_check_rate > 0:
                cross[system] = cross_check(rec, system, router.url, slos[CROSS_WORKLOAD], a.cross_check_rate,
                                            e_urls, a.cross_check_requests)  # fmt: skip
            router.stop()
        stop_engines(engines, STOP_GRACE_S)

    # Phase D: vllm-router over 2 engines running the plugin alone, restarted per workload.
    for system in [s for s in systems if s in PLUGIN_PEERS]:
        for wl, path in workloads.items():
            if a.cross_check_only:
                break
            print(f"starting 2 plugin-only engines for {system} / {wl} ...", flush=True)
            env = plugin_engine_env(slos[wl], profile_path)
            engines = [start_engine(p, i, logs / f"{system}-{wl}-engine{i}.log", plugin=True, env_extra=env)
                       for i, p in enumerate(ports)]  # fmt: skip
            for u, e in zip(e_urls, engines):
                e.wait_healthy(u, ENGINE_START_S)
            router = VllmRouter(e_urls, policy=PLUGIN_PEERS[system], log_path=logs / f"{system}-{wl}.log").start()
            rec.log(router.process.cmd)
            results.append(sweep(rec, system, router.url, wl, path, rates[wl], slos[wl], e_urls, capture=True,
                                 counts=counts[wl], resume=a.resume))
            router.stop()
            stop_engines(engines, STOP_GRACE_S)

    earlier = out / "results.json"
    if a.keep_others:  # the other systems' runs, from their raw files
        done = {r["policy"] for r in results}
        results = [r for r in earlier_runs(out, workloads, rates) if r["policy"] not in done] + results
        if earlier.is_file():  # and the workloads not run now, as the last summary had them
            results, slos = other_workloads(json.loads(earlier.read_text()), results, slos, workloads)
            (out / "slos.json").write_text(json.dumps(slos, indent=1) + "\n")
    summary = summarize(results, slos, profile_path, time.time() - t_start, a)
    summary["requests_per_point"] = {w: {f"{r:g}": n for r, n in c.items()} for w, c in counts.items()}
    if (a.keep_others or a.resume) and earlier.is_file():  # cross-checks not rerun now stand
        cross = {**json.loads(earlier.read_text()).get("cross_check", {}), **cross}
    summary["cross_check"] = cross
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "RESULTS-table.md").write_text(table(summary))
    plot(summary, out)
    print(json.dumps(summary["goodput"], indent=1))


def other_workloads(prev: dict, results: list[dict], slos: dict, workloads) -> tuple[list[dict], dict]:
    """``results`` and ``slos`` with the earlier summary's workloads that this run
    did not measure: a run over fewer ``--workloads`` must not drop the others."""
    kept = [r for r in prev.get("results", []) if r["workload"] not in workloads]
    return kept + results, {**{w: v for w, v in prev.get("slos", {}).items() if w not in workloads}, **slos}


def summarize(results: list[dict], slos: dict, profile_path: Path, wall: float, a) -> dict:
    goodput: dict[str, dict] = {}
    for r in results:
        pts = [(x["rate"], x["attainment"]) for x in r["runs"]]
        goodput.setdefault(r["workload"], {})[r["policy"]] = {
            lvl: round(interp_goodput(pts, v), 3) for lvl, v in (("p50", 0.5), ("p90", 0.9))
        }
    return {"profile": str(profile_path.relative_to(ROOT) if profile_path.is_relative_to(ROOT) else profile_path),
            "slos": slos, "num_requests": a.num_requests, "goodput": goodput, "results": results,
            "wall_seconds": round(wall, 1)}  # fmt: skip


LEVELS = (("p90", 0.9), ("p50", 0.5))


def censored(runs: list[dict], level: float) -> str | None:
    """">= R" if every measured rate held ``level``, "< R" if not even the lowest did, else None."""
    rates = sorted(x["rate"] for x in runs)
    if all(x["attainment"] >= level for x in runs):
        return f">= {rates[-1]:g}"
    if min(runs, key=lambda x: x["rate"])["attainment"] < level:
        return f"< {rates[0]:g}"
    return None


def ratios(summary: dict) -> str:
    """Each EcoServe system's goodput over the best peer and over each peer, per
    workload and level; a goodput outside the measured rates is shown as a bound,
    without a ratio. Peers: every system not named ``ecoserve*``."""
    out = ["| workload | level | EcoServe system (req/s) | best peer | over best | over each peer |",
           "|---|---|---|---|---|---|"]
    for wl, by in summary["goodput"].items():
        runs = {r["policy"]: r["runs"] for r in summary["results"] if r["workload"] == wl}
        ours_all = [k for k in by if k.startswith("ecoserve")]
        peers = [k for k in by if not k.startswith("ecoserve")]
        if not ours_all or not peers:
            continue
        for lvl, v in LEVELS:
            shown = {k: censored(runs[k], v) or f"{g[lvl]:.2f}" for k, g in by.items()}
            exact = {k: g[lvl] for k, g in by.items() if censored(runs[k], v) is None}
            best = max(peers, key=lambda k: by[k][lvl])
            for ours in ours_all:

                def over(k: str, ours: str = ours) -> str:
                    return f"{exact[ours] / exact[k]:.2f}x" if ours in exact and k in exact and exact[k] > 0 else "n/a"

                each = ", ".join(f"{k} {over(k)}" for k in peers)
                out.append(f"| {wl} | {lvl.upper()} | {ours} {shown[ours]} | {best} {shown[best]} | {over(best)} "
                           f"| {each} |")
    return "\n".join(out) + "\n"


def cross_table(summary: dict) -> str:
    rows = ["| system | rate | client | attainment | TTFT p50 / p90 (s) | TPOT p50 / p90 (ms) | engines' TPOT mean (ms) "
            "| arrivals |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for system, c in summary.get("cross_check", {}).items():
        for client in ("vllm_bench", "ecoserve_bench"):
            if client not in c:
                continue
            x = c[client]
            rows.append(f"| {system} | {c.get('rate', '')} | {client.replace('_', ' ')} | {x['attainment']:.2f} | "
                        f"{x['ttft']['p50']:.2f} / {x['ttft']['p90']:.2f} | "
                        f"{x['tpot']['p50'] * 1e3:.0f} / {x['tpot']['p90'] * 1e3:.0f} | "
                        f"{_ms(x.get('engine_tpot', {}).get('mean'))} | {'shared' if c.get('arrivals') else 'own seed'} |")
    return "\n".join(rows) + "\n"


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.0f}"


def table(summary: dict) -> str:
    """EcoServe over the peers; the cross-check; then per workload each system's
    goodput and, per rate, attainment and latency percentiles."""
    out = ["## EcoServe over the peers (goodput ratios, one run)", "", ratios(summary)]
    if summary.get("cross_check"):
        out += ["## Cross-check: vLLM's client and ours at one rate (sharegpt-half SLOs)", "", cross_table(summary)]
    for wl, by_policy in summary["goodput"].items():
        s = summary["slos"][wl]
        out += [f"### {wl} (SLO TTFT {s['slo_ttft']:g} s, TPOT {s['slo_tpot'] * 1e3:g} ms)", "",
                "| system | P50 goodput (req/s) | P90 goodput (req/s) | rate | attainment | TTFT p50 / p90 / p99 (s) "
                "| TPOT p50 / p90 / p99 (ms) | failed |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in (x for x in summary["results"] if x["workload"] == wl):
            g = by_policy[r["policy"]]
            rates = sorted(x["rate"] for x in r["runs"])
            held = {lvl: all(x["attainment"] >= v for x in r["runs"]) for lvl, v in (("p50", 0.5), ("p90", 0.9))}
            cell = {lvl: (f">= {rates[-1]:g}" if held[lvl] else f"{g[lvl]:.2f}" if g[lvl] > 0 else f"< {rates[0]:g}")
                    for lvl in ("p50", "p90")}  # fmt: skip
            for i, x in enumerate(sorted(r["runs"], key=lambda x: x["rate"])):
                t, d = x["ttft"], x["tpot"]
                head = f"| {r['policy']} | {cell['p50']} | {cell['p90']} |" if i == 0 else "| | | |"
                out.append(f"{head} {x['rate']:g} | {x['attainment']:.2f} | {t['p50']:.2f} / {t['p90']:.2f} / "
                           f"{t['p99']:.2f} | {d['p50'] * 1e3:.0f} / {d['p90'] * 1e3:.0f} / {d['p99'] * 1e3:.0f} | "
                           f"{x.get('stats', {}).get('failed', 0)} |")  # fmt: skip
        out.append("")
    return "\n".join(out)


def plot(summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for wl in summary["goodput"]:
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        for r in (x for x in summary["results"] if x["workload"] == wl):
            xs = [p["rate"] for p in r["runs"]]
            axes[0].plot(xs, [p["attainment"] for p in r["runs"]], marker="o", label=r["policy"])
            axes[1].plot(xs, [p["ttft"]["p90"] for p in r["runs"]], marker="o", label=r["policy"])
            axes[2].plot(xs, [p["tpot"]["p90"] * 1e3 for p in r["runs"]], marker="o", label=r["policy"])
        s = summary["slos"][wl]
        for lvl in (0.5, 0.9):
            axes[0].axhline(lvl, ls="--", lw=0.8, color="grey")
        axes[1].axhline(s["slo_ttft"], ls="--", lw=0.8, color="grey")
        axes[2].axhline(s["slo_tpot"] * 1e3, ls="--", lw=0.8, color="grey")
        for ax, t in zip(axes, ("SLO attainment", "P90 TTFT (s)", "P90 TPOT (ms)")):
            ax.set_xlabel("request rate (req/s)")
            ax.set_title(t)
            ax.grid(alpha=0.3)
        axes[1].set_yscale("log")
        axes[0].legend()
        fig.suptitle(f"2 CPU engines (small model, 1 core each), {wl}; SLO {s['slo_ttft']:g} s / "
                     f"{s['slo_tpot'] * 1e3:g} ms")  # fmt: skip
        fig.tight_layout()
        fig.savefig(out / f"real-{wl}.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()
