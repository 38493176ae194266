"""Mechanism measurements for sections 2 and 3 (CodeLlama-34B, 8x A800, ShareGPT), for ANALYSIS.md.

Reruns a policy at a given rate, burstiness and SLO with the observers of
``mechanisms.py`` (which SLO fails, queueing, windows, stalls); Sarathi in the
token budget that won its cached full-run search. Output: one line per run.

    .venv/bin/python bench/analysis/mechanisms_a800.py burst ecoserve:1.2:5:0.1:75.57 ...
    (exp policy:cv:ttft_slo:tpot_slo:rate ...)
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # mechanisms.py

import mechanisms as mech  # noqa: E402
from ecoserve.sim import MODELS, SimConfig  # noqa: E402
from ecoserve.workload import WorkloadTemplate  # noqa: E402

KEEP = ("attainment", "ttft_miss", "tpot_only_miss", "ttft_p90", "tpot_p90", "busy_fraction", "window_reqs_mean",
        "queued_share", "own_window_share_of_stall_tpot_miss", "stall_share_tpot_miss", "prefill_batch_mean")


def main():
    exp = sys.argv[1]
    for spec in sys.argv[2:]:
        p, cv, ttft, tpot, rate = spec.split(":")
        cv, ttft, tpot, rate = float(cv), float(ttft), float(tpot), float(rate)
        cell = mech.full_cell("codellama-34b", "sharegpt", p, exp=exp, slo=[ttft, tpot], cv=cv)
        sim_p, slack = mech.VARIANTS.get(p, (p, None))
        cfg = SimConfig(policy=sim_p, model="codellama-34b", hardware="a800", slo_ttft=ttft, slo_tpot=tpot)
        if slack:
            cfg = replace(cfg, slack_mode=slack)
        bc = ((cell or {}).get("result", {}).get("best_config") or {}).get("p99") or {}
        if "chunk_size" in bc:
            cfg = replace(cfg, chunk_size=int(bc["chunk_size"]))
        tpl = WorkloadTemplate("sharegpt", num_requests=500, burstiness=cv, seed=0,
                               max_context=MODELS["codellama-34b"].max_context)
        r = mech.measure(cfg, tpl, rate, 120.0)
        out = {k: (round(r[k], 4) if isinstance(r.get(k), float) else r.get(k)) for k in KEEP}
        gp = cell["result"]["goodput_rps"] if cell else None
        print(json.dumps({"exp": exp, "run": spec, "cell_goodput": gp, "config": bc, **out}), flush=True)


if __name__ == "__main__":
    main()
