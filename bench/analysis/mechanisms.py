"""Mechanism measurements behind ANALYSIS.md (not part of the reproduction itself).

For each main cell (model x dataset on 8 L20 instances) cached by
``bench/reproduce_paper.py --quick``, this reruns every policy at fixed rates
(EcoServe's P90 goodput, the best baseline's P90 goodput, and any given with
``--rates``) with the same workload template and seed as the goodput search,
each baseline in the configuration that won its P90 search, and records what
the goodput number alone does not show:

- which SLO fails: TTFT misses (incl. never started) vs TPOT-only misses;
- busy fraction (all engines, and its spread across instances);
- prefill stall: for each request, the seconds of prefill steps its own engine
  ran between its first token and its finish (the decode pauses it sat
  through), as a share of its decode time;
- EcoServe only: phase windows (PREFILL periods per instance): how many, how
  long, how many requests each took; why requests were queued (the first
  constraint that failed), and the constraint failures per check.

The simulator and the policy core are not modified: a ``SimObserver``
(``ecoserve/sim/observer.py``) watches each run: its steps, phase switches and
enqueues, the router's ``Queued`` actions and EcoServe's constraint checks.

    .venv/bin/python bench/analysis/mechanisms.py [--models m,..] [--datasets d,..] [--rates 10,20]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from bisect import bisect_left
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ecoserve.metrics import RequestRecord, summarize  # noqa: E402
from ecoserve.policy import Queued  # noqa: E402
from ecoserve.policy.phase import Phase  # noqa: E402
from ecoserve.sim import MODELS, SimConfig, build  # noqa: E402
from ecoserve.sim.observer import SimObserver  # noqa: E402
from ecoserve.workload import WorkloadTemplate, default_slo  # noqa: E402

VARIANTS = {"ecoserve": ("ecoserve", "min"), "ecoserve-mean": ("ecoserve", "mean")}
POLICIES = ("ecoserve", "ecoserve-mean", "vllm", "sarathi", "distserve", "mooncake")

class Watch(SimObserver):
    """What ``measure`` records of one run, per engine id."""

    def __init__(self) -> None:
        self.prefill_iv: dict[str, list[tuple[float, float]]] = defaultdict(list)  # steps that prefill
        self.prefill_reqs = 0  # prompt chunks in those steps
        self.windows: dict[str, list[tuple[float, float, int]]] = defaultdict(list)  # (open, close, routed)
        self._open: dict[str, float] = {}
        self._enq: dict[str, list[float]] = defaultdict(list)  # enqueue times
        self.queued: Counter = Counter()  # first reason of each Queued
        self.checks = 0
        self.check_fails: Counter = Counter()

    def on_step(self, step):
        if step.prefill:
            self.prefill_iv[step.engine].append((step.start, step.end))
            self.prefill_reqs += len(step.prefill)

    def on_enqueue(self, engine_id, req, now):
        self._enq[engine_id].append(now)

    def on_phase(self, engine_id, old, new, now):
        if new is Phase.PREFILL:
            self._open[engine_id] = now
        elif old is Phase.PREFILL and engine_id in self._open:
            # Requests routed in [open, close): the first one reaches the engine
            # just before its window's SetPhase, at the same instant.
            t0 = self._open.pop(engine_id)
            enq = self._enq[engine_id]
            self.windows[engine_id].append((t0, now, bisect_left(enq, now) - bisect_left(enq, t0)))

    def on_action(self, action, now):
        if isinstance(action, Queued):
            r = action.reason
            self.queued[r.name if hasattr(r, "name") else str(r)] += 1

    def on_check(self, inst, req, result, now):
        self.checks += 1
        if result.failed is not None:
            self.check_fails[result.failed.name] += 1


def _stall(ivs, a, b):
    """Seconds of the sorted disjoint intervals ``ivs`` that lie within [a, b]."""
    i = bisect_left(ivs, (a, -1.0))
    s = 0.0
    while i < len(ivs) and ivs[i][0] < b:
        s += min(ivs[i][1], b) - ivs[i][0]
        i += 1
    return s


def _q(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def config_for(policy, model, dataset, best_cfg, cost_model="measured"):
    sim_policy, slack = VARIANTS.get(policy, (policy, None))
    ttft, tpot = default_slo(dataset)
    cfg = SimConfig(policy=sim_policy, model=model, hardware="l20", instances=8, slo_ttft=ttft, slo_tpot=tpot,
                    cost_model=cost_model)
    if slack:
        cfg = replace(cfg, slack_mode=slack)
    b = (best_cfg or {}).get("p90") or {}
    if "chunk_size" in b:
        cfg = replace(cfg, chunk_size=int(b["chunk_size"]))
    if "pd_ratio" in b:
        p, d = b["pd_ratio"].split(":")
        cfg = replace(cfg, pd_ratio=(int(p), int(d)))
    if "distserve_layout" in b:
        m = re.match(r"(\d+)xP\(tp(\d+)\)\+(\d+)xD\(tp(\d+)\)", b["distserve_layout"])
        cfg = replace(cfg, distserve_layout=tuple(int(x) for x in m.groups()))
    return cfg


def measure(cfg, template, rate, min_duration):
    reqs = template.at_rate(rate, template.count_for(rate, min_duration))
    cluster = build(cfg)
    sim = cluster.sim
    w = Watch()
    sim.observers.append(w)
    t0 = time.perf_counter()
    states = sim.run(reqs)
    wall = time.perf_counter() - t0
    recs = [RequestRecord(s.arrival, s.prompt, s.output, s.first_token, s.finish, s.id) for s in states]
    summ = summarize(recs, cfg.slo_ttft, cfg.slo_tpot)
    end = max((s.finish for s in states if s.finish is not None), default=0.0)
    n = len(states)
    ttft_miss = sum(1 for r in recs if r.ttft is None or r.ttft > cfg.slo_ttft)
    tpot_only = sum(1 for r in recs if r.ttft is not None and r.ttft <= cfg.slo_ttft
                    and (r.tpot is None or r.tpot > cfg.slo_tpot))
    # Prefill stalls: only for engines that decode and prefill (NoDG, EcoServe).
    stall_share, stall_share_miss, miss_out = [], [], []
    if cfg.policy in ("ecoserve", "vllm"):
        for s in states:
            if s.finish is None or s.first_token is None or s.output <= 1 or s.engine is None:
                continue
            dec = s.finish - s.first_token
            st = _stall(w.prefill_iv[s.engine.id], s.first_token, s.finish)
            share = st / dec if dec > 0 else 0.0
            stall_share.append(share)
            if dec / (s.output - 1) > cfg.slo_tpot and s.first_token - s.arrival <= cfg.slo_ttft:
                stall_share_miss.append(share)
                miss_out.append(s.output)
    busy = [e.stats.busy_s / end for e in cluster.engines] if end else [0.0]
    out = {
        "policy_config": cfg.describe(), "rate": rate, "requests": n, "wall_s": round(wall, 1),
        "attainment": round(summ["attainment"], 4),
        "ttft_miss": round(ttft_miss / n, 4), "tpot_only_miss": round(tpot_only / n, 4),
        "ttft_p50": summ["ttft"].get("p50"), "ttft_p90": summ["ttft"].get("p90"),
        "tpot_p50": summ["tpot"].get("p50"), "tpot_p90": summ["tpot"].get("p90"),
        "busy_fraction": round(statistics.fmean(busy), 3),
        "busy_min": round(min(busy), 3), "busy_max": round(max(busy), 3),
        "preemptions": sum(e.stats.preemptions for e in cluster.engines),
    }
    steps = sum(len(iv) for iv in w.prefill_iv.values())
    if steps:
        # Steps that prefill (vLLM/phased/prefill pools; Sarathi's hybrid steps too).
        prefill_s = sum(b - a for iv in w.prefill_iv.values() for a, b in iv)
        out["prefill_batch_mean"] = round(w.prefill_reqs / steps, 2)
        out["prefill_step_s_mean"] = round(prefill_s / steps, 4)
        out["prefill_s_per_request"] = round(prefill_s / n, 4)
    if stall_share:
        out["stall_share_mean"] = round(statistics.fmean(stall_share), 3)
        out["stall_share_tpot_miss"] = round(statistics.fmean(stall_share_miss), 3) if stall_share_miss else None
        out["tpot_miss_output_median"] = _q(miss_out, 0.5) if miss_out else None
    if cfg.policy == "ecoserve":
        # Own-window wait: from a request's first token to the close of the window
        # it was prefilled in (the engine stays in PREFILL for the later members).
        own_all, own_miss, own_share_miss = [], [], []
        for s in states:
            if s.finish is None or s.first_token is None or s.output <= 1 or s.engine is None:
                continue
            ws = w.windows[s.engine.id]
            i = bisect_left(ws, (s.first_token + 1e-9,)) - 1
            own = 0.0
            if i >= 0 and ws[i][0] <= s.first_token <= ws[i][1]:
                own = ws[i][1] - s.first_token
            own_all.append(own)
            if (s.finish - s.first_token) / (s.output - 1) > cfg.slo_tpot and s.first_token - s.arrival <= cfg.slo_ttft:
                own_miss.append(own)
                st = _stall(w.prefill_iv[s.engine.id], s.first_token, s.finish)
                own_share_miss.append(min(1.0, own / st) if st > 0 else 0.0)
        out["own_window_wait_mean_s"] = round(statistics.fmean(own_all), 3) if own_all else None
        out["own_window_wait_p90_s"] = round(_q(own_all, 0.9), 3) if own_all else None
        out["own_window_wait_tpot_miss_mean_s"] = round(statistics.fmean(own_miss), 3) if own_miss else None
        out["own_window_share_of_stall_tpot_miss"] = (round(statistics.fmean(own_share_miss), 3)
                                                      if own_share_miss else None)
        wins = [win for e in cluster.engines for win in w.windows[e.id]]
        durs = [b - a for a, b, _ in wins]
        sizes = [k for _, _, k in wins]
        prefill_phase = sum(durs) / (end * len(cluster.engines)) if end else 0.0
        out.update({
            "windows": len(wins), "window_s_mean": round(statistics.fmean(durs), 3) if durs else None,
            "window_s_p90": round(_q(durs, 0.9), 3) if durs else None,
            "window_reqs_mean": round(statistics.fmean(sizes), 2) if sizes else None,
            "window_reqs_p90": _q(sizes, 0.9) if sizes else None,
            "prefill_phase_fraction": round(prefill_phase, 3),
            "queued_first_reason": dict(w.queued), "queued_share": round(sum(w.queued.values()) / n, 3),
            "check_fail_share": {k: round(v / max(1, w.checks), 3) for k, v in w.check_fails.items()},
            "checks": w.checks,
        })
    return out


def full_cell(model, dataset, policy, exp="main", slo=None, cv=1.0, code=None, cost_model="measured"):
    """The cached full-run cell of ``bench/reproduce_paper.py`` (current code), or None."""
    sys.path.insert(0, str(ROOT / "bench"))
    import reproduce_paper as rp

    rargs = argparse.Namespace(quick=False, num_requests=500, min_duration=120.0, tolerance=0.02, seed=0,
                               code=code or rp.code_fingerprint(), cost_model=cost_model)
    hw = "l20" if exp == "main" else "a800"
    cell = {"exp": exp, "model": model, "hardware": hw, "dataset": dataset, "policy": policy,
            "slo": list(slo or default_slo(dataset)), "cv": cv,
            "levels": {"p90": 0.9} if exp == "main" else {"p99": 0.99}}
    f = ROOT / "bench" / "results" / "raw" / f"{rp.cell_key(cell, rargs)}.json"
    return json.loads(f.read_text()) if f.exists() else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", type=Path, default=ROOT / "bench" / "results" / "raw")
    ap.add_argument("--models", default="llama-30b,codellama-34b,qwen2-72b")
    ap.add_argument("--datasets", default="alpaca,sharegpt,longbench")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--rates", default="", help="extra rates, req/s")
    ap.add_argument("--quick", action="store_true", help="use the --quick cells (and their run lengths)")
    ap.add_argument("--code", default=None, help="code fingerprint of the cells to read (default: the current code's)")
    ap.add_argument("--cost-model", choices=("measured", "constant"), default="measured")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mechanisms.json")
    a = ap.parse_args()
    # The cells of the current code and search settings, by reproduce_paper's own keys.
    sys.path.insert(0, str(ROOT / "bench"))
    import reproduce_paper as rp

    rargs = argparse.Namespace(quick=a.quick, num_requests=300 if a.quick else 500,
                               min_duration=60.0 if a.quick else 120.0, tolerance=0.05 if a.quick else 0.02,
                               seed=0, code=a.code or rp.code_fingerprint(), cost_model=a.cost_model, only=["main"], models=a.models.split(","),
                               datasets=a.datasets.split(","), policies=list(POLICIES))
    a.num_requests, a.min_duration = rargs.num_requests, rargs.min_duration
    cache = {}
    for c in rp.cells(rargs):
        f = a.raw / f"{rp.cell_key(c, rargs)}.json"
        if f.exists():
            cache[(c["model"], c["dataset"], c["policy"])] = json.loads(f.read_text())
    results = json.loads(a.out.read_text()) if a.out.exists() else {}
    for m in a.models.split(","):
        for d in a.datasets.split(","):
            have = {p: cache.get((m, d, p)) for p in POLICIES}
            if not all(have.values()):
                print(f"skip {m}/{d}: not all cells cached", file=sys.stderr)
                continue
            gp = {p: have[p]["result"]["goodput_rps"]["p90"] for p in POLICIES}

            def exact(p):
                # The goodput is stored rounded; the search evaluated the exact rate
                # (arrival times scale with it, so 4 digits change the run).
                pts = [pt["rate"] for pt in have[p]["result"]["points"]]
                return min(pts, key=lambda r: abs(r - gp[p])) if gp[p] > 0 else 0.0

            best = max(("vllm", "sarathi", "distserve", "mooncake"), key=lambda p: gp[p])
            rates = sorted({x for x in (exact("ecoserve"), exact(best)) if x > 0}
                           | {float(x) for x in a.rates.split(",") if x})
            template = WorkloadTemplate(d, num_requests=a.num_requests, seed=0, max_context=MODELS[m].max_context)
            for rate in rates:
                for p in a.policies.split(","):
                    key = f"{a.cost_model}|{m}|{d}|{rate:.4f}|{p}"
                    if key in results:
                        continue
                    cfg = config_for(p, m, d, have[p]["result"].get("best_config"), a.cost_model)
                    res = measure(cfg, template, rate, a.min_duration)
                    res["goodput_p90"] = gp
                    results[key] = res
                    print(key, {k: res[k] for k in ("attainment", "ttft_miss", "tpot_only_miss", "busy_fraction")},
                          f"{res['wall_s']} s", file=sys.stderr, flush=True)
                    a.out.write_text(json.dumps(results, indent=1))
    a.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
