"""What-if for ANALYSIS.md: protect window members that have not started yet.

Not part of the reproduction, and not the policy core's behaviour: the patch
proposed to the lead is a ``ConstraintChecker`` subclass here (ecoserve/policy
is not edited), put in place of each simulated router's checker
(``RouterDriver.wrap_checker``, through ``sweep_policy``'s ``setup``); this
reruns EcoServe's P90 goodput search on the main cells with the same settings
as ``reproduce_paper.py`` (``--quick`` or full).

The gap it closes: the TPOT check protects requests that have a first token.
A window member that has not started yet is not protected, but once its
prefill ends it waits, with one TPOT of slack, for every member routed after
it (the engine stays in PREFILL until the whole window has started). On
LongBench that wait is seconds. The patch: in ``min`` mode, a request may join
a window only if the earliest unstarted member could absorb the predicted
prefill of every member routed after it plus the newcomer's, with the slack a
request has right after its first token (one TPOT), less ``decode_margin_s``.

    .venv/bin/python bench/analysis/patch_experiment.py --quick [--models ..] [--datasets ..]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ecoserve.policy.actions import Constraint  # noqa: E402
from ecoserve.policy.constraints import CheckResult, ConstraintChecker  # noqa: E402
from ecoserve.sim import MODELS, SimConfig, sweep_policy  # noqa: E402
from ecoserve.workload import WorkloadTemplate, default_slo  # noqa: E402


class PatchedChecker(ConstraintChecker):
    """The policy's check, then the patch's extra TPOT test."""

    @classmethod
    def like(cls, c: ConstraintChecker) -> PatchedChecker:
        return cls(c.slo, c.predictor, slack_mode=c.slack_mode, output_reservation=c.output_reservation,
                   decode_margin_s=c.decode_margin_s)

    def check(self, inst, req, now):
        res = super().check(inst, req, now)
        if res.failed is not None or self.slack_mode != "min" or not inst.window_size or not inst.window_unstarted:
            return res
        mine = self.predictor.predict(req.prompt_tokens)
        after = mine
        earliest_unstarted_after = None
        for m in reversed(inst.window()):  # routing order, newest first; FIFO prefill
            if m.started:
                break
            earliest_unstarted_after = after
            after += m.predicted_prefill
        if earliest_unstarted_after is not None and self.slo.tpot < earliest_unstarted_after + self.decode_margin_s:
            return CheckResult(Constraint.TPOT, res.t_total, res.stall)
        return res


def patch(cluster) -> None:
    if cluster.driver.wrap_checker(PatchedChecker.like) is None:
        raise AssertionError("this router has no constraint checker to patch")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", default="llama-30b,codellama-34b,qwen2-72b")
    ap.add_argument("--datasets", default="alpaca,sharegpt,longbench")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "patch_experiment.json")
    a = ap.parse_args()
    n, dur, tol = (300, 60.0, 0.05) if a.quick else (500, 120.0, 0.02)
    out = json.loads(a.out.read_text()) if a.out.exists() else {}
    for m in a.models.split(","):
        for d in a.datasets.split(","):
            key = f"{m}|{d}|{'quick' if a.quick else 'full'}"
            if key in out:
                continue
            ttft, tpot = default_slo(d)
            cfg = SimConfig(policy="ecoserve", model=m, hardware="l20", instances=8, slo_ttft=ttft, slo_tpot=tpot,
                            slack_mode="min")
            tpl = WorkloadTemplate(d, num_requests=n, seed=0, max_context=MODELS[m].max_context)
            t0 = time.perf_counter()
            res = sweep_policy(cfg, tpl, {"p90": 0.9}, rel_tol=tol, min_duration=dur, setup=patch)
            out[key] = {"goodput_p90": res.goodput["p90"],
                        "points": [(round(r, 3), round(x, 4)) for r, x in res.curve],
                        "wall_s": round(time.perf_counter() - t0, 1)}
            print(key, out[key]["goodput_p90"], f"{out[key]['wall_s']} s", file=sys.stderr, flush=True)
            a.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
