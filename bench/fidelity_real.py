"""Simulator fidelity: the profile-driven simulator against the real runs of
bench/compare_real.py, on the same requests (the same workload files, the same
rates and SLOs, the same number of engines).

    .venv/bin/python bench/fidelity_real.py [--results bench/results/real/results.json]

For every (system, workload, rate) measured, one `ecoserve simulate run
--model PROFILE --instances 2 ...`; writes OUT/fidelity.json and the error
table OUT/FIDELITY-table.md (relative error (sim - real) / real per metric).
Systems map to simulator policies of the same name (round-robin and
least-loaded model stock vLLM V1 engines: chunked prefill at the real engines'
2048-token budget); vllm-router's peers to round-robin or least-loaded at their
engines' budget (``sim_policy``); fudg-1p1d -> mooncake with 1:1 nodes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_real import ROUTER_PEERS, interp_goodput

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
METRICS = (("ttft", "p50"), ("ttft", "p90"), ("tpot", "p50"), ("tpot", "p90"))


def sim_policy(system: str) -> list[str] | None:
    """The simulator's policy for a measured system (None: none models it).
    vllm-router's round_robin is our round-robin over stock engines, at the
    engines' budget; its cache_aware and power_of_two are modelled as
    least-loaded (the benchmark's prompts share no prefix, so cache_aware
    balances by load)."""
    if system == "fudg-1p1d":
        return ["--policy", "mooncake", "--pd-ratio", "1:1"]
    if system in ("ecoserve", "round-robin", "least-loaded"):
        return ["--policy", system]
    if system in ROUTER_PEERS:
        policy, budget = ROUTER_PEERS[system]
        sim = "round-robin" if policy == "round_robin" else "least-loaded"
        return ["--policy", sim, "--chunk-size", str(budget or 2048)]
    return None


def count(res: dict, wl: str, rate: float) -> list[str]:
    """The point's request count, where the run recorded one (else the whole file)."""
    n = res.get("requests_per_point", {}).get(wl, {}).get(f"{rate:g}")
    return ["--num-requests", str(n)] if n else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=ROOT / "bench/results/real/results.json")
    ap.add_argument("--tag", default="", help="suffix of the output files")
    ap.add_argument("--profile", type=Path, default=None, help="profile to simulate with (default: the run's)")
    a = ap.parse_args()
    res = json.loads(a.results.read_text())
    out_dir = a.results.parent
    profile = a.profile or ROOT / res["profile"]
    rows, sims = [], []
    cmds = []
    for r in res["results"]:
        wl, system = r["workload"], r["policy"]
        policy = sim_policy(system)
        if policy is None:
            continue  # e.g. ecoserve-slo5: its router ran with other SLOs than it is scored by
        slo = res["slos"][wl]
        path = out_dir / "workloads" / f"{wl}.jsonl"
        pts_real, pts_sim = [], []
        for run in r["runs"]:
            cmd = [PY, "-m", "ecoserve.cli", "simulate", "run", "--model", str(profile), "--instances", "2",
                   *policy, "--dataset", str(path), "--rate", f"{run['rate']:g}",
                   *count(res, wl, run["rate"]),
                   "--slo-ttft", str(slo["slo_ttft"]), "--slo-tpot", str(slo["slo_tpot"]), "--json"]  # fmt: skip
            cmds.append(shlex.join(cmd))
            p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
            if p.returncode != 0:
                raise SystemExit(f"failed: {shlex.join(cmd)}\n{p.stderr[-2000:]}")
            s = json.loads(p.stdout)
            row = {"system": system, "workload": wl, "rate": run["rate"], "real_attainment": run["attainment"],
                   "sim_attainment": s["attainment"]}  # fmt: skip
            for m, q in METRICS:
                row[f"real_{m}_{q}"] = run[m][q]
                row[f"sim_{m}_{q}"] = s[m][q]
            rows.append(row)
            pts_real.append((run["rate"], run["attainment"]))
            pts_sim.append((run["rate"], s["attainment"]))
        sims.append({"system": system, "workload": wl,
                     **{f"{k}_goodput_{lvl}": round(interp_goodput(pts, v), 3)
                        for k, pts in (("real", pts_real), ("sim", pts_sim))
                        for lvl, v in (("p50", 0.5), ("p90", 0.9))}})  # fmt: skip
    tag = f"-{a.tag}" if a.tag else ""
    (out_dir / f"fidelity{tag}.json").write_text(json.dumps({"runs": rows, "goodput": sims, "commands": cmds},
                                                            indent=1) + "\n")  # fmt: skip
    (out_dir / f"FIDELITY-table{tag}.md").write_text(table(rows, sims))
    print(table(rows, sims))


def _err(sim, real) -> str:
    if sim is None or real is None:
        return "n/a"
    if real == 0:
        return "0%" if sim == 0 else "inf"
    return f"{(sim - real) / real:+.0%}"


def _fmt(v, scale: float) -> str:
    return "-" if v is None else f"{v * scale:.3g}"


def table(rows: list[dict], sims: list[dict]) -> str:
    out = [("| system | workload | rate | TTFT p50 real/sim (err) | TTFT p90 real/sim (err) | TPOT p50 ms real/sim "
            "(err) | TPOT p90 ms real/sim (err) | attainment real/sim |"), "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = []
        for m, q in METRICS:
            real, sim = r[f"real_{m}_{q}"], r[f"sim_{m}_{q}"]
            k = 1e3 if m == "tpot" else 1
            cells.append(f"{_fmt(real, k)} / {_fmt(sim, k)} ({_err(sim, real)})")
        out.append(f"| {r['system']} | {r['workload']} | {r['rate']:g} | " + " | ".join(cells)
                   + f" | {r['real_attainment']:.2f} / {r['sim_attainment']:.2f} |")
    abs_errs = {}
    for r in rows:
        for m, q in METRICS:
            real, sim = r[f"real_{m}_{q}"], r[f"sim_{m}_{q}"]
            if real and sim is not None:
                abs_errs.setdefault(f"{m} {q}", []).append(abs(sim - real) / real)
        abs_errs.setdefault("attainment (abs. points)", []).append(abs(r["sim_attainment"] - r["real_attainment"]))
    out += ["", "| metric | median abs. error | share within 15% |", "|---|---|---|"]
    for k, v in abs_errs.items():
        v = sorted(v)
        med = v[len(v) // 2]
        unit = f"{med * 100:.0f} pts" if "attainment" in k else f"{med:.0%}"
        out.append(f"| {k} | {unit} | {sum(1 for x in v if x <= 0.15) / len(v):.0%} |")
    out += ["", "| system | workload | goodput P50 real / sim (err) | goodput P90 real / sim (err) |", "|---|---|---|---|"]
    for s in sims:
        out.append(f"| {s['system']} | {s['workload']} | {s['real_goodput_p50']:.2f} / {s['sim_goodput_p50']:.2f} "
                   f"({_err(s['sim_goodput_p50'], s['real_goodput_p50'])}) | {s['real_goodput_p90']:.2f} / "
                   f"{s['sim_goodput_p90']:.2f} ({_err(s['sim_goodput_p90'], s['real_goodput_p90'])}) |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
