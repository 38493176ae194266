"""What the CLI commands share: the policy's options, and how results are
written (JSON without NaN, rounding, the workload's description, per-request
CSV records). ``serve`` and ``simulate`` take the same policy options, so a
setting tried in simulation is the setting served."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from typing import Any

import click

SLACK_MODES = ("min", "mean")


def policy_options(f):
    """EcoServe's constraint-check settings (``PolicyConfig``)."""
    opts = [
        click.option("--slack-mode", type=click.Choice(SLACK_MODES), default="min", show_default=True,
                     help="EcoServe's TPOT check: the least saved TPOT of the decoders (default: protects "
                          "every request) or their mean (the paper's check)."),
        click.option("--output-reservation", type=click.FloatRange(0, 1), default=1.0, show_default=True,
                     help="Share of a request's max_tokens whose KV is reserved when it is routed (1: it "
                          "never runs out of KV mid-decode)."),
        click.option("--decode-margin", "decode_margin_s", type=click.FloatRange(min=0), default=0.0,
                     show_default=True, metavar="SECONDS",
                     help="Slack the TPOT check keeps beyond a window's stall (one decode step is a sound choice)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def parse_levels(levels: str) -> dict[str, float]:
    """``--levels p50,p90,p99`` (or ``p95``, ``0.9``...) as attainment shares."""
    from ecoserve.metrics import LEVELS

    out = {}
    for name in (x.strip() for x in levels.split(",") if x.strip()):
        try:
            out[name] = LEVELS[name] if name in LEVELS else float(name.lstrip("p")) / 100
        except ValueError:
            raise click.BadParameter(f"bad level {name!r}", param_hint="--levels") from None
    return out


def json_clean(x: Any) -> Any:
    """JSON has no NaN/inf: write null."""
    if isinstance(x, float):
        return None if (math.isnan(x) or math.isinf(x)) else x
    if isinstance(x, dict):
        return {k: json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_clean(v) for v in x]
    return x


def rounded(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, nd)


def run_json(policy: str, rate: float, summary: dict, **rest: Any) -> dict:
    """One run's result in the contract's shape (``simulate run`` and ``bench
    run`` alike): policy, rate, attainment, TTFT/TPOT percentiles, then ``rest``."""
    s = summary
    return {
        "policy": policy,
        "rate": rate,
        "num_requests": s["num_requests"],
        "attainment": s["attainment"],
        "ttft": {k: rounded(v) for k, v in s["ttft"].items()},
        "tpot": {k: rounded(v, 5) for k, v in s["tpot"].items()},
        "finished": s["finished"],
        "ttft_attainment": s["ttft_attainment"],
        "tpot_attainment": s["tpot_attainment"],
        **_prefix_fields(rest.get("stats")),
        **rest,
    }


def _prefix_fields(stats: dict | None) -> dict:
    """A simulated run's prefix caching, at the top level (the contract's place)."""
    if not stats or "prefix_hit_rate" not in stats:
        return {}
    return {"prefix_hit_rate": round(stats["prefix_hit_rate"], 6), "prefill_tokens_computed": stats["prefill_tokens_computed"]}


def workload_json(template) -> dict:
    p, o = template.mean_lengths()
    out = {"dataset": template.name, "requests": len(template), "mean_prompt_tokens": round(p, 2),
           "mean_output_tokens": round(o, 2), "seed": template.seed, "truncated_to_context": template.truncated}
    if template.replay:
        out["arrivals"] = "replay"
        out["trace_rate"] = template.native_rate
    else:
        out["arrivals"] = "poisson" if template.burstiness == 1.0 else "gamma"
        out["burstiness_cv"] = template.burstiness
    return out


def write_records(path: str, records: Iterable) -> None:
    """One CSV row per request: id, arrival, lengths, TTFT, TPOT, end-to-end latency."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "arrival", "prompt_tokens", "output_tokens", "ttft", "tpot", "e2e"])
        for r in records:
            w.writerow([r.id, f"{r.arrival:.6f}", r.prompt_tokens, r.output_tokens,
                        "" if r.ttft is None else f"{r.ttft:.6f}", "" if r.tpot is None else f"{r.tpot:.6f}",
                        "" if r.e2e is None else f"{r.e2e:.6f}"])
