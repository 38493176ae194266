"""Run simulations: one rate, the best configuration of a baseline, the
goodput search (``ecoserve.metrics.find_goodput``) per policy, and workloads
whose rate steps over time (``step_requests``)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ecoserve.metrics import LEVELS, RequestRecord, find_goodput, summarize
from ecoserve.sim.cluster import Cluster, SimConfig, build, candidates
from ecoserve.workload.arrivals import RateSteps, expected_arrivals, warp_to_steps
from ecoserve.workload.workload import Request, WorkloadTemplate

OnProgress = Callable[[int, "int | None", str], None]  # (done, total, detail); see ecoserve/cli/progress.py


@dataclass
class RunResult:
    config: SimConfig
    rate: float | None
    records: list[RequestRecord]
    summary: dict
    stats: dict
    wall_s: float
    tried: list[dict] = field(default_factory=list)  # other configurations tried (best-config search)
    timeline: dict | None = None  # autoscaling runs: per-window series and scale events (autoscale.py)

    @property
    def attainment(self) -> float:
        return self.summary["attainment"]


def simulate(
    cfg: SimConfig, requests: Sequence[Request], rate: float | None = None, *, stop_below: float | None = None,
    setup: Callable[[Cluster], None] | None = None, on_progress: OnProgress | None = None,
) -> RunResult:
    """One configuration, one workload. With ``stop_below``, the run ends as soon
    as attainment is sure to fall below that level (the rest count as misses):
    enough for a goodput search, which only asks "above or below?". ``setup``
    gets the cluster before it runs (to add observers, see ``observer.py``).
    ``on_progress(done, total, detail)``: requests done as the run goes
    (``Simulator.run``)."""
    cluster = build(cfg)
    if setup is not None:
        setup(cluster)
    sim = cluster.sim
    sim.slo_ttft, sim.slo_tpot = cfg.slo_ttft, cfg.slo_tpot
    if stop_below is not None:
        sim.fail_budget = int((1.0 - stop_below) * len(requests))
    t0 = time.perf_counter()
    states = cluster.sim.run(requests, on_progress)
    wall = time.perf_counter() - t0
    records = [RequestRecord(s.arrival, s.prompt, s.output, s.first_token, s.finish, s.id) for s in states]
    summary = summarize(records, cfg.slo_ttft, cfg.slo_tpot)
    end = max((s.finish for s in states if s.finish is not None), default=0.0)
    totals: dict[str, float] = {}
    for e in cluster.engines:
        for k, v in e.stats.as_dict().items():
            totals[k] = max(totals.get(k, 0), v) if k == "max_batch" else totals.get(k, 0) + v
    counts = dict(getattr(cluster.driver, "counts", {}))
    stats = {
        **cluster.info,
        "sim_seconds": end,
        "events": cluster.sim.events,
        "rejected": sum(1 for s in states if s.rejected),
        "unfinished": sum(1 for s in states if s.finish is None and not s.rejected),
        "stopped_early": sim.stopped_early,
        "preempted_requests": sum(1 for s in states if s.preempted),
        "busy_fraction": (totals.get("busy_s", 0.0) / (end * len(cluster.engines))) if end else 0.0,
        "engine": totals,
        "driver": counts,
        # Prefix caching: the share of admitted prompt tokens the engines' caches
        # held, and the prompt tokens actually computed (recomputes included).
        "prefix_hit_rate": (totals.get("cached_tokens", 0) / totals["prompt_tokens_admitted"]
                            if totals.get("prompt_tokens_admitted") else 0.0),
        "prefill_tokens_computed": totals.get("prefill_tokens", 0),
    }
    timeline = None
    scaler = cluster.autoscaler
    if scaler is not None:
        stats["autoscale"] = scaler.summary(end)
        held = scaler.instance_seconds(end)
        stats["busy_fraction"] = totals.get("busy_s", 0.0) / held if held else 0.0
        timeline = scaler.timeline(records, cfg.timeline_window_s, cfg.slo_ttft, cfg.slo_tpot, end)
    return RunResult(cfg, rate, records, summary, stats, wall, timeline=timeline)


def step_requests(template: WorkloadTemplate, steps: RateSteps) -> list[Request]:
    """The template's requests under a load that steps through (rate, seconds)
    pairs: its unit-rate arrivals time-changed by ``warp_to_steps``, so the
    same seed gives the same burst pattern and lengths at any rates."""
    if template.replay:
        raise ValueError("load steps need synthetic arrivals, not a replayed trace (use --no-replay)")
    mean = expected_arrivals(steps)
    n = math.ceil(mean + 8 * math.sqrt(mean) + 16)  # covers the steps but for a 1e-15 chance; then doubled
    while True:
        unit = template.at_rate(1.0, n)
        if unit[-1].arrival > mean:
            break
        n *= 2
    times = warp_to_steps([r.arrival for r in unit], steps)
    return [Request(r.id, t, r.prompt_tokens, r.output_tokens) for r, t in zip(unit, times)]


def run_best(cfg: SimConfig, requests: Sequence[Request], rate: float | None = None, *,
             on_progress: OnProgress | None = None, setup: Callable[[Cluster], None] | None = None) -> RunResult:  # fmt: skip
    """``simulate`` each candidate configuration (``cluster.candidates``) and keep
    the one with the highest attainment (ties: lower P90 TTFT).
    ``on_progress(done, total, detail)``: requests done over all candidates;
    ``setup``: given each candidate's cluster (``cluster.config`` is the result's
    ``config`` for the one kept)."""
    best: RunResult | None = None
    tried = []
    cands = candidates(cfg)
    for k, cand in enumerate(cands):
        res = simulate(cand, requests, rate, on_progress=_of_candidate(on_progress, k, cands, len(requests)),
                       setup=setup)  # fmt: skip
        tried.append({**_variant(cand), "attainment": res.attainment})
        if best is None or (res.attainment, -_p90(res)) > (best.attainment, -_p90(best)):
            best = res
    assert best is not None
    best.tried = tried if len(tried) > 1 else []
    return best


def _of_candidate(on_progress: OnProgress | None, k: int, cands: list[SimConfig], n: int) -> OnProgress | None:
    """Candidate ``k``'s progress as a share of all candidates' requests."""
    if on_progress is None or len(cands) == 1:
        return on_progress
    label = " ".join(f"{key}={v}" for key, v in _variant(cands[k]).items())
    return lambda done, _total, detail: on_progress(k * n + done, len(cands) * n,
                                                    f"{label} ({k + 1}/{len(cands)}), {detail}")  # fmt: skip


def _p90(res: RunResult) -> float:
    v = res.summary["ttft"]["p90"]
    return v if v == v else float("inf")


def _variant(cfg: SimConfig) -> dict:
    d = cfg.describe()
    return {k: d[k] for k in ("chunk_size", "pd_ratio", "distserve_layout") if k in d}


def estimate_capacity(cfg: SimConfig, template: WorkloadTemplate) -> float:
    """A rough request rate the cluster can carry: a starting point for the search."""
    model = cfg.engine_model()
    p, o = template.mean_lengths()
    b = 32
    per_req = model.prefill_time(int(p)) + o * model.decode_step(b, int(b * (p + o / 2))) / b
    return max(0.05, cfg.instances / per_req)


@dataclass
class PolicySweep:
    policy: str
    goodput: dict[str, float]
    curve: list[tuple[float, float]]  # (rate, best attainment over candidates)
    per_candidate: list[dict]
    best_config: dict[str, dict]
    wall_s: float

    def to_json(self) -> dict:
        return {
            "policy": self.policy,
            "goodput_rps": {k: round(v, 4) for k, v in self.goodput.items()},
            "best_config": self.best_config,
            "points": [{"rate": r, "attainment": round(a, 4)} for r, a in self.curve],
            "candidates": self.per_candidate,
            "wall_seconds": round(self.wall_s, 2),
        }


def sweep_policy(
    cfg: SimConfig,
    template: WorkloadTemplate,
    levels: Mapping[str, float] | None = None,
    *,
    rel_tol: float = 0.02,
    start: float | None = None,
    min_duration: float = 120.0,
    on_eval: Callable[[str, float, float], None] | None = None,
    extra_rates: Sequence[float] = (),
    setup: Callable[[Cluster], None] | None = None,
) -> PolicySweep:
    """Goodput per level of one policy; for baselines, the best over its candidate
    configurations at each level (the paper's "best P:D ratio by sweep").

    Each rate runs ``template.count_for(rate, min_duration)`` requests: at least
    ``num_requests``, and enough that arrivals last ``min_duration`` seconds, so
    an overload shows as a growing queue rather than passing as one short
    burst. Runs stop early once below the lowest level asked for. ``setup``
    goes to every ``simulate``."""
    levels = dict(LEVELS if levels is None else levels)
    t0 = time.perf_counter()
    cap = estimate_capacity(cfg, template)
    start = start or cap * 0.5
    floor = min(levels.values())
    best: dict[str, float] = {k: 0.0 for k in levels}
    best_cfg: dict[str, dict] = {}
    evals: list[tuple[dict, list[tuple[float, float]]]] = []
    per = []
    for cand in candidates(cfg):
        label = _variant(cand)

        def attain(rate: float, cand=cand) -> float:
            reqs = template.at_rate(rate, template.count_for(rate, min_duration))
            a = simulate(cand, reqs, rate, stop_below=floor, setup=setup).attainment
            if on_eval is not None:
                on_eval(cfg.policy, rate, a)
            return a

        res = find_goodput(attain, levels, start=start, rel_tol=rel_tol, max_rate=max(cap, start) * 50)
        for r in extra_rates:
            if all(abs(r - x) > 1e-9 for x, _ in res.evaluations):
                res.evaluations.append((r, attain(r)))
        evals.append((label, sorted(set(res.evaluations))))
        per.append({**label, "goodput_rps": {k: round(v, 4) for k, v in res.goodput.items()}})
        for k, v in res.goodput.items():
            if k not in best_cfg or v > best[k]:
                best[k] = v
                best_cfg[k] = label
    # The curve shown is that of the configuration that won the middle level (P90).
    key = "p90" if "p90" in best_cfg else next(iter(best_cfg))
    curve = next(c for label, c in evals if label == best_cfg[key])
    return PolicySweep(cfg.policy, best, curve, per if len(per) > 1 else [], best_cfg, time.perf_counter() - t0)
