"""Attainment at evenly spaced rates, for ANALYSIS.md (not part of the reproduction).

The goodput search (``ecoserve.metrics.find_goodput``) raises the rate until
attainment first fails, then bisects: the paper's definition. A policy whose
attainment is not monotone in the rate gets the first dip as its goodput. This
scans the whole range with full runs (no early stop) so the curve's shape can
be seen: same workload template, seed and run length as the full reproduction
(500 requests, 120 s), baselines in the configuration that won their P90 search.

    .venv/bin/python bench/analysis/attainment_scan.py llama-30b alpaca 10,20,40,60,80,100
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # mechanisms.py

import mechanisms as mech  # noqa: E402
from ecoserve.sim import MODELS  # noqa: E402
from ecoserve.workload import WorkloadTemplate  # noqa: E402


def main():
    model, dataset, rates = sys.argv[1], sys.argv[2], [float(x) for x in sys.argv[3].split(",")]
    policies = sys.argv[4].split(",") if len(sys.argv) > 4 else ["ecoserve", "ecoserve-mean", "vllm", "sarathi"]
    best = {}
    for p in policies:  # the configuration that won the full run's P90 search (current code)
        cell = mech.full_cell(model, dataset, p)
        best[p] = cell["result"].get("best_config") if cell else None
    out_path = ROOT / "bench" / "results" / "attainment_scan.json"
    out = json.loads(out_path.read_text()) if out_path.exists() else {}
    tpl = WorkloadTemplate(dataset, num_requests=500, seed=0, max_context=MODELS[model].max_context)
    for p in policies:
        cfg = mech.config_for(p, model, dataset, best[p])
        for r in rates:
            key = f"{model}|{dataset}|{p}|{r:g}"
            if key in out:
                continue
            res = mech.measure(cfg, tpl, r, 120.0)
            keep = ("attainment", "ttft_miss", "tpot_only_miss", "busy_min", "busy_max", "window_reqs_mean",
                    "queued_share")
            out[key] = {k: res.get(k) for k in keep}
            print(key, out[key], file=sys.stderr, flush=True)
            out_path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
