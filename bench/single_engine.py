"""Issue 14's plugin-only target on one real CPU engine: stock vLLM at its default
token budget, stock at a small static budget, and the EcoServe plugin alone (no
coordinator) in `chunked` with a TPOT SLO, which sizes every step's prompt chunk
from its own decoders' slack. The same requests, one system after another.

    .venv/bin/python bench/single_engine.py --out bench/results/real/single-engine \
        --rates 0.3,0.45 --num-requests 40

One engine of the `small` generated model on core 0 (the settings of
bench/compare_real.py), the ShareGPT-half workload and SLOs of
bench/results/real/ (TTFT 3.47 s, TPOT 106 ms). Reported per system and rate:
attainment, TTFT p90, TPOT p90 (``ecoserve bench sweep``, one JSON per system
under OUT/raw, every command in OUT/commands.txt). Keep the host idle meanwhile.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from ecoserve.engine.process import engine_env, stop_engines, vllm_command

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_real import ENGINE_ARGS, ENGINE_START_S, KV_GIB, MODEL, PY, ROOT, _spawn  # noqa: E402

# system -> (plugin loaded, --max-num-batched-tokens or None for vLLM's default 2048, extra env)
SYSTEMS = {
    "stock-2048": (False, None, {}),
    "stock-256": (False, 256, {}),
    "stock-512": (False, 512, {}),
    "plugin-chunked": (True, None, {"ECOSERVE_PHASE": "chunked"}),  # ECOSERVE_TPOT_SLO added from the SLOs
    # the same, with the waiting prompts' TTFT in the rule (ECOSERVE_TTFT_SLO, from the SLOs)
    "plugin-chunked-ttft": (True, None, {"ECOSERVE_PHASE": "chunked", "ECOSERVE_TTFT_SLO": "",
                                         "ECOSERVE_LOST_YIELD": "0", "ECOSERVE_FLOOR_WITHIN_TPOT": "0"}),
    # ... and lost prompts (past their TTFT even in one step of the limit) let the others go first
    "plugin-chunked-yield": (True, None, {"ECOSERVE_PHASE": "chunked", "ECOSERVE_TTFT_SLO": "",
                                          "ECOSERVE_LOST_YIELD": "1", "ECOSERVE_FLOOR_WITHIN_TPOT": "0"}),
    # ... and the floor cut to a chunk whose step lasts at most one TPOT (both: the defaults with a TTFT SLO)
    "plugin-chunked-yield-tpotfloor": (True, None, {"ECOSERVE_PHASE": "chunked", "ECOSERVE_TTFT_SLO": "",
                                                    "ECOSERVE_LOST_YIELD": "1", "ECOSERVE_FLOOR_WITHIN_TPOT": "1"}),
    # stock vLLM's own scheduling with the plugin loaded: the default budget's step records, for diagnosis
    "plugin-mixed": (True, None, {"ECOSERVE_PHASE": "mixed"}),
}


class StepLog:
    """Polls a plugin engine's ``/ecoserve/status`` and keeps every step record
    (a reply carries the latest 64: polled twice a second, none is missed at
    this engine's >= 27 ms steps), with the ``chunked`` budget seen at each poll."""

    def __init__(self, url: str, path: Path) -> None:
        self.url, self.path, self.seen = f"{url}/ecoserve/status", path, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> StepLog:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        with open(self.path, "w") as f:
            while not self._stop.wait(0.5):
                try:
                    with urllib.request.urlopen(self.url, timeout=5) as r:
                        st = json.loads(r.read())
                except OSError:
                    continue
                for rec in st.get("steps", []):
                    if rec["step"] not in self.seen:
                        self.seen.add(rec["step"])
                        f.write(json.dumps(dict(rec, budget_at_poll=st.get("prompt_budget"))) + "\n")
                f.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="results folder")
    ap.add_argument("--systems", default="stock-2048,stock-256,stock-512,plugin-chunked", help=f"of {', '.join(SYSTEMS)}")
    ap.add_argument("--rates", default="0.3,0.45", help="requests per second, comma-separated")
    ap.add_argument("--num-requests", type=int, default=40, help="requests per rate")
    ap.add_argument("--workload", default="sharegpt-half", help="a workload of bench/results/real/workloads")
    ap.add_argument("--port", type=int, default=8301)
    ap.add_argument("--poisson-seed", type=int, default=None,
                    help="Poisson arrivals with this seed, the workload's lengths drawn at random (`--no-replay`), "
                         "so --num-requests may exceed the workload's 60; default: replay its timestamps")
    ap.add_argument("--profile", type=Path, default=ROOT / "bench/results/real/profile-small-1core.json",
                    help="the plugin's starting step-time predictor (ECOSERVE_PROFILE), an `ecoserve profile` JSON")
    args = ap.parse_args()
    systems = args.systems.split(",")
    if bad := [s for s in systems if s not in SYSTEMS]:
        ap.error(f"unknown system(s) {', '.join(bad)}; choose from {', '.join(SYSTEMS)}")
    if not MODEL.exists():
        ap.error(f"no model at {MODEL}: run `python -m ecoserve.devenv setup` first")
    slo = json.loads((ROOT / "bench/results/real/slos.json").read_text())[args.workload]
    dataset = ROOT / f"bench/results/real/workloads/{args.workload}.jsonl"
    (args.out / "raw").mkdir(parents=True, exist_ok=True)
    (args.out / "logs").mkdir(exist_ok=True)
    url = f"http://127.0.0.1:{args.port}"
    rows = []
    for system in systems:
        plugin, budget, extra = SYSTEMS[system]
        env = dict(extra, VLLM_CPU_OMP_THREADS_BIND="0", VLLM_CPU_KVCACHE_SPACE=KV_GIB)
        if plugin:  # the SLO it keeps, and the engine's measured profile as its starting step-time predictor
            env["ECOSERVE_TPOT_SLO"] = str(slo["slo_tpot"])
            if "ECOSERVE_TTFT_SLO" in env:
                env["ECOSERVE_TTFT_SLO"] = str(slo["slo_ttft"])
            env["ECOSERVE_PROFILE"] = str(args.profile)
        eargs = ENGINE_ARGS + (["--max-num-batched-tokens", str(budget)] if budget else [])
        cmd = vllm_command(MODEL, args.port, eargs, host="127.0.0.1", plugin=plugin)
        engine = _spawn(cmd, args.out / "logs" / f"{system}.log", engine_env(env, plugin=plugin))
        try:
            print(f"{system}: starting the engine", flush=True)
            engine.wait_healthy(url, ENGINE_START_S)
            t0 = time.time()
            for rate in args.rates.split(","):
                tag = f"{system}-{rate}"
                bench = [PY, "-m", "ecoserve.cli", "bench", "run", "--base-url", url, "--model", str(MODEL),
                         "--dataset", str(dataset), "--num-requests", str(args.num_requests), "--rate", rate,
                         "--slo-ttft", str(slo["slo_ttft"]), "--slo-tpot", str(slo["slo_tpot"]), "--label", system,
                         "--records", str(args.out / "raw" / f"{tag}.csv"), "--timeout", "900", "--no-progress",
                         "--json"]  # fmt: skip
                if args.poisson_seed is not None:
                    bench += ["--no-replay", "--seed", str(args.poisson_seed)]
                with open(args.out / "commands.txt", "a") as f:
                    f.write(f"{' '.join(f'{k}={v}' for k, v in env.items())} {' '.join(map(str, cmd))}\n")
                    f.write(" ".join(map(str, bench)) + "\n")
                with StepLog(url, args.out / "raw" / f"{tag}-steps.jsonl") if plugin else contextlib.nullcontext():
                    out = subprocess.run(bench, capture_output=True, text=True, check=True, cwd=ROOT).stdout
                (args.out / "raw" / f"{tag}.json").write_text(out)
                run = json.loads(out)
                row = {"system": system, "rate": run["rate"], "attainment": run["attainment"],
                       "ttft_attainment": run["ttft_attainment"], "tpot_attainment": run["tpot_attainment"],
                       "ttft_p90": run["ttft"]["p90"], "tpot_p90": run["tpot"]["p90"], "finished": run["finished"]}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
            print(f"{system}: {time.time() - t0:.0f} s", flush=True)
        finally:
            stop_engines([engine])
    (args.out / "results.json").write_text(json.dumps({"slo": slo, "workload": args.workload, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
