"""``ecoserve bench``: measure a real OpenAI-compatible server (``ecoserve
serve`` or stock vLLM) with the simulator's workloads and metrics.

Prints the same JSON shapes as ``ecoserve simulate run`` / ``sweep``, so a
measured run and a simulated one can be compared field by field.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from ecoserve.cli.options import json_clean, parse_levels, rounded, run_json, workload_json, write_records
from ecoserve.cli.progress import Progress, quiet_option
from ecoserve.timeline.html import SUFFIXES


def bench_options(f):
    opts = [
        click.option("--base-url", required=True, help="Server root, e.g. http://127.0.0.1:8000 (no /v1)."),
        click.option("--model", default=None,
                     help="Served model id, or the local model directory the server loaded (also the default "
                          "tokenizer). Default: the one model the server lists."),
        click.option("--tokenizer", default=None,
                     help="Tokenizer directory for exact prompt lengths (default: --model if it is a directory)."),
        click.option("--prompt-form", type=click.Choice(["text", "ids"]), default="text", show_default=True,
                     help="text: words counted exactly with the tokenizer; ids: token-id prompts (exact by "
                          "construction; completions API only)."),
        click.option("--dataset", default="sharegpt", show_default=True,
                     help="alpaca | sharegpt | longbench | azure | PATH of an Azure CSV / Mooncake JSONL trace "
                          "(as `ecoserve simulate`)."),
        click.option("--replay/--no-replay", default=True, show_default=True,
                     help="Traces: replay their timestamps (time-scaled to --rate), or use them only as a length "
                          "distribution under Poisson/Gamma arrivals."),
        click.option("--max-context", type=click.IntRange(2), default=None,
                     help="Clip requests to this many prompt + output tokens. Default: the server's max_model_len."),
        click.option("--slo-ttft", type=click.FloatRange(0, min_open=True), default=None,
                     help="TTFT SLO in seconds (default: the dataset's, as `simulate`)."),
        click.option("--slo-tpot", type=click.FloatRange(0, min_open=True), default=None,
                     help="TPOT SLO in seconds (default 0.1)."),
        click.option("--burstiness", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
                     help="CV of inter-arrival gaps: 1 is Poisson, >1 Gamma-bursty."),
        click.option("--num-requests", type=click.IntRange(1), default=None,
                     help="Requests per run. Default: 200 (synthetic), the whole trace (replay)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seeds lengths, arrivals and prompts."),
        click.option("--api-key", envvar="ECOSERVE_API_KEY", default=None, help="Bearer key the server requires."),
        click.option("--timeout", type=click.FloatRange(1), default=600.0, show_default=True,
                     help="Seconds one request may take before it counts as failed."),
        click.option("--label", default="server", show_default=True,
                     help="Name of the system measured (the JSON's `policy`)."),
        quiet_option,
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@click.group("bench", context_settings={"help_option_names": ["-h", "--help"]})
def bench() -> None:
    """Benchmark a real OpenAI-compatible server, open loop.

    Requests arrive at the times the workload says (Poisson, Gamma or a
    replayed trace), whatever the server's progress; prompts have exact token
    lengths, outputs are forced with ignore_eos and max_tokens, and each
    request's TTFT and TPOT are measured from its stream. Failures count as
    SLO misses and are reported. Progress (requests finished and sent; a
    sweep's rates) goes to stderr, results to stdout; -q silences progress.

    \b
      ecoserve bench run --base-url http://127.0.0.1:8000 --model MODEL_DIR --rate 2
      ecoserve bench sweep --base-url http://127.0.0.1:8000 --model MODEL_DIR --rates 1,2,4
      ecoserve bench sweep ... --search --start-rate 1 --json
    """


class _Setup:
    def __init__(self, base_url, model, tokenizer, api_key, dataset, replay, max_context, slo_ttft, slo_tpot,
                 burstiness, num_requests, seed) -> None:  # fmt: skip
        from ecoserve.bench.prompts import PromptSynthesizer
        from ecoserve.bench.target import TargetError, discover
        from ecoserve.workload import WorkloadTemplate, default_slo

        try:
            self.target = discover(base_url, model, api_key)
        except TargetError as e:
            raise click.ClickException(str(e)) from None
        tok = tokenizer or (model if model and Path(model).expanduser().is_dir() else None)
        if tok is None:
            raise click.UsageError("exact prompt lengths need a tokenizer: give --model MODEL_DIR or --tokenizer DIR")
        try:
            self.synth = PromptSynthesizer.from_path(tok, seed=seed)
        except (OSError, ValueError) as e:
            raise click.ClickException(f"cannot load a tokenizer from {tok}: {e}") from None
        self.max_context = max_context or self.target.max_model_len
        if num_requests is None and dataset.lower() in ("alpaca", "sharegpt", "longbench"):
            num_requests = 200
        try:
            self.template = WorkloadTemplate(dataset, num_requests=num_requests, burstiness=burstiness, seed=seed,
                                             replay=None if replay else False, max_context=self.max_context)
        except (ValueError, FileNotFoundError) as e:
            raise click.BadParameter(str(e), param_hint="--dataset") from None
        d_ttft, d_tpot = default_slo(self.template.name)
        self.slo_ttft, self.slo_tpot = slo_ttft or d_ttft, slo_tpot or d_tpot

    def config(self, prompt_form: str) -> dict:
        return {"base_url": self.target.base_url, "model": self.target.model, "slo_ttft": self.slo_ttft,
                "slo_tpot": self.slo_tpot, "max_context": self.max_context, "prompt_form": prompt_form}

    def workload(self) -> dict:
        w = workload_json(self.template)
        if self.template.truncated:
            w["note"] = (f"{self.template.truncated} request(s) clipped to the server's context of "
                         f"{self.max_context} tokens (prompt + output)")
        return w


def _run_json(label, run, setup: _Setup, prompt_form: str, wall: float) -> dict:
    return run_json(label, run.rate, run.summary, config=setup.config(prompt_form), workload=setup.workload(),
                    stats=run.load.stats(), wall_seconds=round(wall, 3))  # fmt: skip


def _warn_failures(run) -> None:
    st = run.load.stats()
    if st["failed"]:
        click.echo(f"warning: {st['failed']} request(s) failed {st['errors']}; first: {st['first_error']}", err=True)
    if st["length_mismatches"]:
        click.echo(f"warning: {st['length_mismatches']} request(s) came back with other token counts than asked",
                   err=True)


@bench.command("run")
@click.option("--rate", type=click.FloatRange(0, min_open=True), default=None,
              help="Mean arrival rate, requests/s. Required for synthetic datasets; time-scales a replayed trace.")
@click.option("--records", "records_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write per-request results (arrival, lengths, TTFT, TPOT) as CSV to this path.")
@click.option("--timeline", "timeline_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the run's engine timelines, as the server's dashboard recorded them (steps, phases, "
                   "routed requests, queue, TTFT/TPOT against the SLOs, KV use), to FILE.html, FILE.png or "
                   "FILE.json. Needs an EcoServe server (checked before the run).")
@bench_options
def run_cmd(rate, records_path, timeline_path, prompt_form, base_url, model, tokenizer, dataset, replay, max_context, slo_ttft,
            slo_tpot, burstiness, num_requests, seed, api_key, timeout, label, quiet, as_json):  # fmt: skip
    """Measure one rate: attainment and TTFT/TPOT percentiles (the shape of `simulate run`)."""
    from ecoserve.bench.runner import bench_once

    setup = _Setup(base_url, model, tokenizer, api_key, dataset, replay, max_context, slo_ttft, slo_tpot,
                   burstiness, num_requests, seed)  # fmt: skip
    if rate is None and not setup.template.replay:
        raise click.UsageError("--rate is required for synthetic datasets")
    eff = rate if rate is not None else setup.template.native_rate
    if timeline_path:
        from ecoserve.bench import timeline as server_timeline
        from ecoserve.bench.target import TargetError

        if Path(timeline_path).suffix.lower() not in SUFFIXES:
            raise click.BadParameter("write FILE.html, FILE.png or FILE.json", param_hint="--timeline")
        try:
            server_start = server_timeline.check(setup.target)  # the server's clock, not ours
        except TargetError as e:
            raise click.UsageError(f"--timeline: {e}") from None
    t0 = time.perf_counter()
    with Progress(f"{label} @ {eff:.3g} req/s", "requests", quiet=quiet) as bar:
        run = bench_once(setup.target, setup.template, eff, setup.synth, slo_ttft=setup.slo_ttft,
                         slo_tpot=setup.slo_tpot, prompt_form=prompt_form, timeout=timeout,
                         on_progress=bar)  # fmt: skip
    out = _run_json(label, run, setup, prompt_form, time.perf_counter() - t0)
    _warn_failures(run)
    if timeline_path:
        from ecoserve.timeline.html import write

        title = f"{label}, {setup.template.name}, {eff:.3g} req/s"
        try:
            out["timeline"] = str(write(server_timeline.fetch(setup.target, server_start, title=title),
                                        timeline_path))  # fmt: skip
        except TargetError as e:  # the results still print: the run is not lost for want of its picture
            click.echo(f"warning: --timeline: {e}", err=True)
    if records_path:

        write_records(records_path, run.load.records)
    if as_json:
        click.echo(json.dumps(json_clean(out)))
        return
    s = run.summary
    click.echo(f"{label} at {setup.target.base_url}, {setup.template.name}, {eff:.3g} req/s, "
               f"{s['num_requests']} requests ({s['finished']} finished)")
    click.echo(f"  SLO attainment: {s['attainment']:.1%}  (TTFT <= {setup.slo_ttft:g} s: {s['ttft_attainment']:.1%}, "
               f"TPOT <= {setup.slo_tpot * 1e3:g} ms: {s['tpot_attainment']:.1%})")
    for name, d, unit, scale in (("TTFT", s["ttft"], "s", 1), ("TPOT", s["tpot"], "ms", 1e3)):
        click.echo(f"  {name}: p50 {d['p50'] * scale:.3g} {unit}, p90 {d['p90'] * scale:.3g} {unit}, "
                   f"p99 {d['p99'] * scale:.3g} {unit}")
    if "timeline" in out:
        click.echo(f"  timeline: {out['timeline']}")


@bench.command("sweep")
@click.option("--rates", default=None, help="Comma-separated rates to measure (points of the attainment curve).")
@click.option("--search", is_flag=True,
              help="Also search the goodput: raise the rate from --start-rate until attainment fails, then bisect "
                   "(as `simulate sweep`; every probe is a real run, so keep --tolerance coarse).")
@click.option("--start-rate", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True)
@click.option("--tolerance", type=float, default=0.1, show_default=True,
              help="Search: stop when the passing and failing rates are within this fraction.")
@click.option("--max-runs", type=click.IntRange(1), default=8, show_default=True, help="Search: at most this many runs.")
@click.option("--levels", default="p50,p90", show_default=True,
              help="Attainment levels to report the goodput for (pNN: NN% of requests meet both SLOs).")
@click.option("--min-duration", type=float, default=0.0, show_default=True,
              help="Synthetic datasets: send enough requests that arrivals last this many seconds.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write a PNG of SLO attainment against rate.")
@bench_options
def sweep_cmd(rates, search, start_rate, tolerance, max_runs, levels, min_duration, plot_path, prompt_form, base_url,
              model, tokenizer, dataset, replay, max_context, slo_ttft, slo_tpot, burstiness, num_requests, seed,
              api_key, timeout, label, quiet, as_json):  # fmt: skip
    """Goodput at P50/P90...: the highest rate at which that share of requests
    meets both SLOs, from measured runs (the shape of `simulate sweep`)."""
    from ecoserve.bench.runner import bench_once
    from ecoserve.metrics import find_goodput

    if not rates and not search:
        raise click.UsageError("give --rates R1,R2,... and/or --search")
    try:
        points = [float(x) for x in rates.split(",") if x.strip()] if rates else []
    except ValueError:
        raise click.BadParameter("rates must be numbers", param_hint="--rates") from None
    if any(r <= 0 for r in points):
        raise click.BadParameter("rates must be > 0", param_hint="--rates")
    lv = parse_levels(levels)
    setup = _Setup(base_url, model, tokenizer, api_key, dataset, replay, max_context, slo_ttft, slo_tpot,
                   burstiness, num_requests, seed)  # fmt: skip
    t0 = time.perf_counter()
    runs: dict[float, dict] = {}

    # Progress: one line per rate, "[k/N]" the rates so far and how many at most.
    most = f"{len(points)}" if not search else f"<={len(points) + max_runs}"

    def attain(rate: float) -> float:
        n = setup.template.count_for(rate, min_duration)
        with Progress(f"[{len(runs) + 1}/{most}] {label} @ {rate:.3g} req/s", "requests", quiet=quiet) as bar:
            run = bench_once(setup.target, setup.template, rate, setup.synth, slo_ttft=setup.slo_ttft,
                             slo_tpot=setup.slo_tpot, n=n, prompt_form=prompt_form, timeout=timeout,
                             on_progress=bar)  # fmt: skip
        _warn_failures(run)
        runs[rate] = _run_json(label, run, setup, prompt_form, 0.0)
        return run.attainment

    for r in points:
        attain(r)
    if search:
        res = find_goodput(attain, lv, start=start_rate, rel_tol=tolerance, max_evals=max_runs + len(runs))
        goodput = res.goodput
    else:
        goodput = {k: _goodput_from_points(runs, v) for k, v in lv.items()}
    curve = sorted((r, j["attainment"]) for r, j in runs.items())
    result = {
        "policy": label,
        "goodput_rps": {k: round(v, 4) for k, v in goodput.items()},
        "points": [{"rate": r, "attainment": rounded(a)} for r, a in curve],
        "runs": [{k: runs[r][k] for k in ("rate", "attainment", "ttft", "tpot", "finished", "stats")}
                 for r, _ in curve],
    }  # fmt: skip
    out = {"results": [result], "levels": lv, "config": setup.config(prompt_form), "workload": setup.workload(),
           "wall_seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
    if plot_path:
        from ecoserve.sim.plot import plot_attainment

        title = f"{label} ({setup.target.model}), {setup.template.name}, SLO {setup.slo_ttft:g} s / " \
                f"{setup.slo_tpot * 1e3:g} ms"
        plot_attainment({label: curve}, plot_path, title=title, levels=lv)
        out["plot"] = str(plot_path)
    if as_json:
        click.echo(json.dumps(json_clean(out)))
        return
    click.echo(f"goodput (req/s) of {label} at {setup.target.base_url}, {setup.template.name}, "
               f"SLO {setup.slo_ttft:g} s / {setup.slo_tpot * 1e3:g} ms")
    for k, v in goodput.items():
        click.echo(f"  {k}: {v:.3g}")
    for r, a in curve:
        click.echo(f"  rate {r:.3g}: attainment {a:.1%}")


def _goodput_from_points(runs: dict[float, dict], level: float) -> float:
    """Highest measured rate that passes, with every lower measured rate passing too."""
    best = 0.0
    for r in sorted(runs):
        if runs[r]["attainment"] >= level:
            best = r
        else:
            break
    return best


if __name__ == "__main__":
    bench()
