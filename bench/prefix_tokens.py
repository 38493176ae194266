"""Prefill tokens each policy computes on Mooncake's trace, side by side: how close
EcoServe's estimated caches come to the oracle that sees the engines' real ones.

    python bench/prefix_tokens.py > bench/results/prefix/tokens-computed.json

CodeLlama-34B on 8 L20 instances (TP 4), TTFT SLO 15 s, every engine with prefix
caching; the whole trace (prompts cut to the 16k context) at 0.5 and 1 req/s.
"""

from __future__ import annotations

import json
import sys

from ecoserve.sim import SimConfig, simulate
from ecoserve.workload import WorkloadTemplate

POLICIES = (("ecoserve", "ecoserve", True), ("ecoserve (no prefix routing)", "ecoserve", False),
            ("ecoserve-trickle", "ecoserve-trickle", True),
            ("ecoserve-trickle (no prefix routing)", "ecoserve-trickle", False),
            ("prefix-oracle", "prefix-oracle", True), ("least-loaded", "least-loaded", True),
            ("round-robin", "round-robin", True))  # fmt: skip


def main() -> None:
    rows = []
    template = WorkloadTemplate("mooncake", max_context=16384)
    for rate in (0.5, 1.0):
        reqs = template.at_rate(rate)
        for label, policy, routing in POLICIES:
            cfg = SimConfig(policy=policy, instances=8, model="codellama-34b", hardware="l20", slo_ttft=15.0,
                            prefix_cache=True, prefix_routing=routing)  # fmt: skip
            res = simulate(cfg, reqs, rate)
            rows.append({"rate": rate, "policy": label, "attainment": round(res.attainment, 4),
                         "prefix_hit_rate": round(res.stats["prefix_hit_rate"], 4),
                         "prefill_tokens_computed": res.stats["prefill_tokens_computed"],
                         "ttft_p90": round(res.summary["ttft"]["p90"], 3),
                         "tpot_p90": round(res.summary["tpot"]["p90"], 4)})  # fmt: skip
            print(f"{rate} {label}: {rows[-1]}", file=sys.stderr, flush=True)
    json.dump(rows, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
