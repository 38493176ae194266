"""What the client's max_tokens costs EcoServe: its P90 goodput when the
policy reserves KV for each request's true output (what the simulator did
before) against the client's bound (``workload.lengths.client_max_tokens``).

    .venv/bin/python bench/analysis/max_tokens_effect.py [--cost-model measured|constant]

Prints one JSON line per cell. Same search settings as bench/reproduce_paper.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ecoserve.sim import MODELS, SimConfig, sweep_policy  # noqa: E402
from ecoserve.workload import WorkloadTemplate, default_slo  # noqa: E402

CELLS = (("llama-30b", "alpaca"), ("codellama-34b", "sharegpt"), ("codellama-34b", "longbench"), ("qwen2-72b", "sharegpt"))


class ExactOutput(WorkloadTemplate):
    """The same requests, with max_tokens equal to the true output (an oracle client)."""

    def at_rate(self, rate, n=None):
        return [replace(r, max_tokens=0) for r in super().at_rate(rate, n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cost-model", default="measured", choices=("measured", "constant"))
    a = ap.parse_args()
    for model, ds in CELLS:
        ttft, tpot = default_slo(ds)
        cfg = SimConfig(policy="ecoserve", model=model, hardware="l20", slo_ttft=ttft, slo_tpot=tpot,
                        cost_model=a.cost_model)
        out = {"model": model, "dataset": ds, "cost_model": a.cost_model}
        for name, cls in (("client_max_tokens", WorkloadTemplate), ("exact_output", ExactOutput)):
            tpl = cls(ds, num_requests=500, max_context=MODELS[model].max_context)
            res = sweep_policy(cfg, tpl, {"p90": 0.9}, rel_tol=0.02, min_duration=120.0)
            out[name] = round(res.goodput["p90"], 2)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
