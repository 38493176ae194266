"""How well the profile predicts the steps the real engines ran during the
comparison (step records captured by bench/compare_real.py), and the time
between steps that no step record covers.

    .venv/bin/python bench/step_analysis.py [--results bench/results/real/results.json]

Per run: median ratio actual / predicted for decode, prefill and mixed steps
(prediction: the simulator's ProfileModel on the step's batch), and the
median gap between consecutive steps of a busy engine (the engine loop's
work outside ``schedule() .. update_from_output()``: output serialization,
input handling, waiting for the CPU). Writes OUT/steps.json.

    .venv/bin/python bench/step_analysis.py --calibrate OUT.json [--from-workload W]

writes the profile scaled to the speed the engines really had in the runs
(``calibrated``), for bench/fidelity_real.py --profile.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

from ecoserve.sim.engine_model import ProfileModel
from ecoserve.workload import EngineProfile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_real import read_steps, steps_path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUSY_GAP_S = 0.05  # a larger gap means the engine was idle, not overhead


def predict(model: ProfileModel, r: dict) -> float:
    n, k = r["prefill_tokens"], max(1, r.get("prefill_reqs", 1))  # chunks: equal shares, from scratch
    chunks = [(n // k, 0)] * k if n else []
    # a step record's duration leaves out the loop's gap to the next step
    return model.step_time(chunks, r["decode_batch"], r["decode_context_tokens"]) - model.step_gap


def analyse(model: ProfileModel, steps: list[dict]) -> dict:
    ratios: dict[str, list[float]] = {}
    gaps: list[float] = []
    by_engine: dict[str, list[dict]] = {}
    for r in steps:
        by_engine.setdefault(r["engine"], []).append(r)
        if r["kind"] == "empty":
            continue
        p = predict(model, r)
        if p > 0:
            ratios.setdefault(r["kind"], []).append(r["duration_s"] / p)
    for recs in by_engine.values():
        recs.sort(key=lambda r: r["step"])
        for a, b in itertools.pairwise(recs):
            if b["step"] == a["step"] + 1:
                g = b["start"] - (a["start"] + a["duration_s"])
                if 0 <= g < BUSY_GAP_S:
                    gaps.append(g)
    out = {k: {"n": len(v), "median_ratio": round(statistics.median(v), 3), "mean_ratio": round(statistics.fmean(v), 3)}
           for k, v in sorted(ratios.items())}  # fmt: skip
    out["gap"] = {"n": len(gaps), "median_s": round(statistics.median(gaps), 5) if gaps else None,
                  "mean_s": round(statistics.fmean(gaps), 5) if gaps else None}  # fmt: skip
    return out


def calibrated(profile: EngineProfile, steps: list[dict], source: str) -> EngineProfile:
    """The profile with prefill and decode times scaled by the time the steps
    the engines really ran took over what the profile predicted for them (one
    factor each, a ratio of sums: latencies add step times up, so the mean
    matters, tail included): the engines' speed in the deployment, not alone."""
    model = ProfileModel(profile)
    ratios: dict[str, list[float]] = {"prefill": [], "decode": []}
    sums = {k: [0.0, 0.0] for k in ratios}
    for r in steps:
        if r["kind"] in ratios and (p := predict(model, r)) > 0:
            ratios[r["kind"]].append(r["duration_s"] / p)
            sums[r["kind"]][0] += r["duration_s"]
            sums[r["kind"]][1] += p
    kp, kd = (sums[k][0] / sums[k][1] for k in ("prefill", "decode"))
    meta = {**profile.meta, "calibration": {"prefill_scale": round(kp, 4), "decode_scale": round(kd, 4),
                                            "steps": {k: len(v) for k, v in ratios.items()}, "from": source}}
    return EngineProfile(prefill=[(n, t * kp) for n, t in profile.prefill], batch_sizes=profile.batch_sizes,
                         context_lengths=profile.context_lengths,
                         decode_seconds=[[t * kd for t in row] for row in profile.decode_seconds],
                         kv_capacity_tokens=profile.kv_capacity_tokens, kv_bytes_per_token=profile.kv_bytes_per_token,
                         max_context=profile.max_context, meta=meta)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=ROOT / "bench/results/real/results.json")
    ap.add_argument("--calibrate", type=Path, default=None,
                    help="write a profile calibrated on the captured steps (of --from-workload's runs) here")
    ap.add_argument("--from-workload", default=None, help="calibrate on this workload's runs only")
    ap.add_argument("--profile", type=Path, default=None,
                    help="the profile to compare with and calibrate (default: the one the runs used)")
    a = ap.parse_args()
    res = json.loads(a.results.read_text())
    out_dir = a.results.parent
    model = ProfileModel.load(a.profile or ROOT / res["profile"])
    rows, pool = [], []
    for r in res["results"]:
        for run in r["runs"]:
            f = steps_path(out_dir, r["policy"], r["workload"], run["rate"])
            if not f.is_file():
                continue
            steps = read_steps(f)
            if a.from_workload in (None, r["workload"]):
                pool += steps
            rows.append({"system": r["policy"], "workload": r["workload"], "rate": run["rate"],
                         "host_load_1min": run.get("host_load_1min"), **analyse(model, steps)})  # fmt: skip
    if a.calibrate:
        src = f"step records of the {a.from_workload or 'all'} runs in {a.results.name}"
        calibrated(model.profile, pool, src).save(a.calibrate)
        print(f"wrote {a.calibrate}")
        return
    (out_dir / "steps.json").write_text(json.dumps(rows, indent=1) + "\n")
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
