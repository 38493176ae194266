"""``ecoserve simulate``: the cluster simulator from the command line.

Registered on the main CLI with ``main.add_command(simulate)``. Heavy imports
happen inside the commands, so ``ecoserve --help`` stays fast.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from ecoserve.cli.options import json_clean, parse_levels, policy_options, run_json, workload_json, write_records
from ecoserve.cli.progress import Progress, quiet_option
from ecoserve.policy.config import PAPER_POLICIES
from ecoserve.timeline.html import SUFFIXES
from ecoserve.policy.config import SIM_POLICIES as ALL_POLICIES

PRESET_MODELS = ("llama-30b", "codellama-34b", "qwen2-72b")


def _model_arg(ctx, param, value: str) -> str:
    if value in PRESET_MODELS:
        return value
    if Path(value).is_file():
        return value
    raise click.BadParameter(f"{value!r} is neither a preset ({', '.join(PRESET_MODELS)}) nor a profile file")


def _ratio_arg(ctx, param, value):
    if value is None:
        return None
    try:
        p, d = (int(x) for x in value.split(":"))
    except ValueError:
        raise click.BadParameter("use P:D, e.g. 3:5") from None
    return (p, d)


def common_options(f):
    opts = [
        click.option("--model", default="codellama-34b", show_default=True, callback=_model_arg,
                     help="llama-30b | codellama-34b | qwen2-72b, or a profile JSON measured on a real engine "
                          "(format: ecoserve.workload.profile)."),
        click.option("--hardware", type=click.Choice(["l20", "a800", "h100"]), default="l20", show_default=True,
                     help="GPU and interconnect preset (L20: PCIe + 10 Gbps Ethernet; A800: NVLink + 25 Gbps RoCE; "
                          "H100: NVLink + 8x400 Gbps InfiniBand)."),
        click.option("--tp", type=int, default=None,
                     help="Tensor-parallel GPUs per instance (one instance per node). Default: the paper's "
                          "(L20: 4 for 30B/34B, 8 for 72B)."),
        click.option("--cost-model", type=click.Choice(["measured", "constant"]), default="measured",
                     show_default=True,
                     help="Step times of the preset models: measured (operator efficiencies from Vidur's GPU "
                          "profiles, by step size) or constant (one efficiency per operator kind, the earlier "
                          "model). A profile file (--model PATH) is its own cost model."),
        click.option("--instances", type=click.IntRange(1), default=8, show_default=True,
                     help="Instances (nodes of TP GPUs). FuDG baselines split the same GPUs into pools."),
        click.option("--dataset", default="sharegpt", show_default=True,
                     help="alpaca | sharegpt | longbench (synthetic lengths with the paper's means), azure (the "
                          "Azure conversation trace shipped in the package), mooncake (Mooncake's synthetic trace "
                          "with prefix-block hashes, shipped too), chat (generated multi-turn sessions with growing "
                          "histories and shared system prompts, hashed the same way), or PATH of an Azure CSV / Mooncake JSONL trace "
                          "(plain or .gz)."),
        click.option("--replay/--no-replay", default=True, show_default=True,
                     help="Traces: replay their timestamps (time-scaled to --rate if given), or use them only "
                          "as an empirical length distribution under Poisson/Gamma arrivals."),
        click.option("--slo-ttft", type=float, default=None,
                     help="TTFT SLO in seconds. Default: the dataset's (alpaca 1, sharegpt 5, longbench 15; traces 5)."),
        click.option("--slo-tpot", type=float, default=None, help="TPOT SLO in seconds. Default: 0.1."),
        click.option("--burstiness", type=float, default=1.0, show_default=True,
                     help="Coefficient of variation of inter-arrival gaps: 1 is Poisson, >1 Gamma-bursty."),
        click.option("--num-requests", type=click.IntRange(1), default=None,
                     help="Requests per run (sweep: at least this many, see --min-duration). Default: 1000 "
                          "(synthetic), the whole trace (replay)."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seeds lengths and arrivals; a run is a pure function of its options."),
        click.option("--macro-size", "--macro-max", "macro_size", type=click.IntRange(1), default=11,
                     show_default=True,
                     help="EcoServe: instances per macro instance at most (N_u; the paper's run used 11). "
                          "With --autoscale a macro instance that grows past it splits in two."),
        click.option("--chunk-size", type=click.IntRange(16), default=None,
                     help="Token budget per step of chunked-prefill engines. sarathi: default the best of "
                          "64/128/256/512/1024/2048 and Sarathi's SLO rule (sweep), or the rule alone (run). "
                          "round-robin/least-loaded (stock vLLM V1 engines): default vLLM's own "
                          "max_num_batched_tokens (2048; 8192 on 80 GB GPUs but A100)."),
        click.option("--pd-ratio", default=None, callback=_ratio_arg,
                     help="Mooncake prefill:decode instances, e.g. 3:5. Default: every split is tried and the "
                          "best is kept."),
        click.option("--prefix-cache/--no-prefix-cache", "prefix_cache", default=None,
                     help="Prefix caching in every engine, every policy alike (vLLM's automatic prefix caching: "
                          "an LRU of 512-token blocks as large as the KV memory). Default: on when the trace "
                          "has block hashes (Mooncake's hash_ids, e.g. --dataset mooncake)."),
        click.option("--prefix-routing/--no-prefix-routing", "prefix_routing", default=True, show_default=True,
                     help="EcoServe: route a request to the instance holding the longest prefix of its prompt, "
                          "inside the constraint check (with --prefix-cache)."),
        click.option("--lost-yield/--no-lost-yield", "lost_yield", default=False, show_default=True,
                     help="ecoserve, ecoserve-trickle: a queued request whose TTFT is lost (past due even if "
                          "prefilled now) waits behind the ones that can still meet theirs."),
        click.option("--lost-yield-max-wait", "lost_yield_max_wait", type=click.FloatRange(min=0), default=None,
                     help="With --lost-yield: a lost request stops yielding once it has waited this many seconds "
                          "past its TTFT SLO (default: no bound)."),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout."),
    ]
    for o in reversed(opts):
        f = o(f)
    return policy_options(f)


@click.group("simulate", context_settings={"help_option_names": ["-h", "--help"]})
def simulate() -> None:
    """Simulate EcoServe and the paper's baselines on a GPU cluster.

    A discrete-event simulator that drives EcoServe's real policy objects
    (routing, phase windows) against simulated engines whose step times come
    from a roofline model of the model and hardware, or from a profile
    measured on a real engine. Baselines: vLLM, Sarathi (chunked prefill),
    DistServe (intra-node disaggregation), Mooncake (inter-node).

    \b
      ecoserve simulate run --policy ecoserve --rate 8
      ecoserve simulate sweep --dataset longbench --plot attainment.png
      ecoserve simulate run --policy vllm --dataset azure --instances 16
      ecoserve simulate run --rate-steps 20:120,30:120,40:120,50:120 --autoscale \\
          --instances 8 --min-instances 8 --max-instances 16 --macro-min 6 --macro-max 11 \\
          --timeline timeline.json --plot timeline.png
    """


def _setup(model, hardware, tp, cost_model, instances, dataset, replay, slo_ttft, slo_tpot, burstiness, num_requests, seed,
           slack_mode, output_reservation, decode_margin_s, macro_size, chunk_size, pd_ratio, policy="ecoserve", *,
           prefix_cache=None, prefix_routing=True, lost_yield=False, lost_yield_max_wait=None):  # fmt: skip
    from ecoserve.sim import SimConfig
    from ecoserve.sim.specs import MODELS
    from ecoserve.workload import WorkloadTemplate, default_slo

    if lost_yield_max_wait is not None and not lost_yield:
        raise click.UsageError("--lost-yield-max-wait bounds --lost-yield: give --lost-yield too")

    try:
        max_ctx = MODELS[model].max_context if model in MODELS else _profile_ctx(model)
        template = WorkloadTemplate(dataset, num_requests=num_requests, burstiness=burstiness, seed=seed,
                                    replay=None if replay else False, max_context=max_ctx)
    except (ValueError, FileNotFoundError) as e:
        raise click.BadParameter(str(e), param_hint="--dataset") from None
    d_ttft, d_tpot = default_slo(template.name)
    cfg = SimConfig(policy=policy, model=model, hardware=hardware, tp=tp, cost_model=cost_model, instances=instances,
                    slo_ttft=slo_ttft or d_ttft, slo_tpot=slo_tpot or d_tpot, slack_mode=slack_mode,
                    output_reservation=output_reservation, decode_margin_s=decode_margin_s,
                    macro_size=macro_size, chunk_size=chunk_size, pd_ratio=pd_ratio,
                    prefix_cache=template.has_blocks if prefix_cache is None else prefix_cache,
                    prefix_routing=prefix_routing, lost_yield=lost_yield,
                    lost_yield_max_wait=lost_yield_max_wait)  # fmt: skip
    return cfg, template


def _profile_ctx(path):
    from ecoserve.workload import EngineProfile

    return EngineProfile.load(path).max_context


def _steps_arg(ctx, param, value):
    if value is None:
        return None
    from ecoserve.workload.arrivals import parse_rate_steps

    try:
        return parse_rate_steps(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def autoscale_options(f):
    opts = [
        click.option("--autoscale", is_flag=True,
                     help="EcoServe: mitosis scaling. The policy's planner adds an instance when the mean TTFT "
                          "passes the SLO, drains one when decoders have slack to spare, and splits or merges "
                          "macro instances to keep them within [--macro-min, --macro-max]. --instances is the "
                          "starting fleet."),
        click.option("--min-instances", type=click.IntRange(1), default=1, show_default=True,
                     help="Autoscaling: never fewer instances."),
        click.option("--max-instances", type=click.IntRange(1), default=64, show_default=True,
                     help="Autoscaling: never more instances (the cluster's nodes)."),
        click.option("--macro-min", type=click.IntRange(1), default=1, show_default=True,
                     help="Autoscaling: N_l, the fewest instances a macro instance keeps (the paper's run: 6); "
                          "need 2 * N_l <= N_u + 1 so a split leaves two halves of at least N_l."),
        click.option("--launch-delay", type=click.FloatRange(0), default=30.0, show_default=True,
                     help="Autoscaling: seconds from asking for an instance to its first request (model load and "
                          "engine start; the paper gives none, 30 s suits a 34B model)."),
        click.option("--scale-interval", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
                     help="Autoscaling: seconds between consultations of the planner."),
        click.option("--scale-cooldown", type=click.FloatRange(0), default=30.0, show_default=True,
                     help="Autoscaling: no scale action within this many seconds of the last one."),
        click.option("--ttft-window", type=click.FloatRange(0, min_open=True), default=30.0, show_default=True,
                     help="Autoscaling: the sliding window (s) of the mean TTFT that triggers a scale-out."),
        click.option("--scale-in-hold", type=click.FloatRange(0), default=30.0, show_default=True,
                     help="Autoscaling: the slack must last this long (s) before an instance is drained."),
        click.option("--timeline", "timeline_path", type=click.Path(dir_okay=False, writable=True), default=None,
                     help="Write the run's engine timelines (each engine's prefill/decode steps, phases, routed "
                          "requests, queue, TTFT/TPOT against the SLOs, KV use: the dashboard's picture) to "
                          "FILE.html (self-contained page) or FILE.png (matplotlib). FILE.json: with "
                          "--autoscale, the autoscaling time series (per window: instances, macro-instance "
                          "layout, attainment, TTFT, TPOT; and every scale event); without, the timeline "
                          "document itself."),
        click.option("--window", "window_s", type=click.FloatRange(0, min_open=True), default=10.0,
                     show_default=True, help="Autoscaling: width (s) of the timeline's windows."),
        click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True), default=None,
                     help="Autoscaling: write a PNG of per-window attainment and instance count over time."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _write_engine_timeline(path: str, watched: list, res, rate: float, policy: str, dataset: str) -> str:
    """Write what the observer of the configuration kept (``watched``: one per
    candidate run) saw."""
    from ecoserve.timeline.document import Event
    from ecoserve.timeline.html import write

    obs = next(o for o in watched if o.cluster.config is res.config)
    c = res.config
    events = [Event(e["t"], e["action"], None, ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("t", "action")))
              for e in (res.timeline or {}).get("events", [])]  # fmt: skip
    doc = obs.document(title=f"{policy}, {c.instances} x {c.model} ({c.hardware}), {dataset}, {rate:.3g} req/s",
                       events=events)  # fmt: skip
    return str(write(doc, path))


@simulate.command("run")
@click.option("--policy", type=click.Choice(ALL_POLICIES), default="ecoserve", show_default=True,
              help="Serving system to simulate.")
@click.option("--rate", type=float, default=None,
              help="Mean arrival rate, requests/s. Required for synthetic datasets; for a replayed trace it "
                   "time-scales the trace (default: its own rate).")
@click.option("--rate-steps", "rate_steps", default=None, callback=_steps_arg,
              help="Instead of --rate: a load that steps over time, as RATE:SECONDS pairs run one after "
                   "another (e.g. 20:120,30:120,40:120,50:120; Poisson, or Gamma with --burstiness). The "
                   "number of requests follows from the steps.")
@click.option("--records", "records_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write per-request results (arrival, lengths, TTFT, TPOT) as CSV to this path.")
@autoscale_options
@common_options
@quiet_option
def run_cmd(policy, rate, rate_steps, records_path, autoscale, min_instances, max_instances, macro_min,
            launch_delay, scale_interval, scale_cooldown, ttft_window, scale_in_hold, timeline_path, window_s,
            plot_path, model, hardware, tp, cost_model, instances, dataset, replay, slo_ttft, slo_tpot,
            burstiness, num_requests, seed, slack_mode, output_reservation, decode_margin_s, macro_size, chunk_size, pd_ratio,
            prefix_cache, prefix_routing, lost_yield, lost_yield_max_wait, as_json, quiet):
    """Simulate one policy at one rate (or a stepped load): attainment and
    TTFT/TPOT percentiles; with --autoscale, mitosis scaling and its timeline.
    A run longer than a few seconds shows its progress on stderr (-q: not)."""
    from dataclasses import replace

    from ecoserve.sim import run_best
    from ecoserve.sim.runner import step_requests

    cfg, template = _setup(model, hardware, tp, cost_model, instances, dataset, replay, slo_ttft, slo_tpot, burstiness,
                           num_requests, seed, slack_mode, output_reservation, decode_margin_s, macro_size, chunk_size, pd_ratio, policy,
                           prefix_cache=prefix_cache, prefix_routing=prefix_routing, lost_yield=lost_yield,
                           lost_yield_max_wait=lost_yield_max_wait)
    if rate_steps is not None and rate is not None:
        raise click.UsageError("give --rate or --rate-steps, not both")
    if rate is None and rate_steps is None and not template.replay:
        raise click.UsageError("--rate is required for synthetic datasets")
    if rate is not None and rate <= 0:
        raise click.BadParameter("must be > 0", param_hint="--rate")
    if plot_path and not autoscale:
        raise click.UsageError("--plot of `run` goes with --autoscale (for any run: --timeline FILE.png)")
    if timeline_path and Path(timeline_path).suffix.lower() not in SUFFIXES:
        raise click.BadParameter("write FILE.html, FILE.png or FILE.json", param_hint="--timeline")
    engine_timeline = bool(timeline_path) and (Path(timeline_path).suffix.lower() != ".json" or not autoscale)
    if autoscale:
        try:
            cfg = replace(cfg, autoscale=True, min_instances=min_instances, max_instances=max_instances,
                          macro_min=macro_min, launch_delay_s=launch_delay, scale_interval_s=scale_interval,
                          scale_cooldown_s=scale_cooldown, ttft_window_s=ttft_window,
                          scale_in_hold_s=scale_in_hold, timeline_window_s=window_s)
        except ValueError as e:
            raise click.UsageError(str(e)) from None
    if cfg.policy == "sarathi" and cfg.chunk_size is None:
        from ecoserve.sim import sarathi_budget

        cfg = replace(cfg, chunk_size=sarathi_budget(cfg))
    if rate_steps is not None:
        try:
            requests = step_requests(template, rate_steps)
        except ValueError as e:
            raise click.UsageError(str(e)) from None
        span = sum(d for _, d in rate_steps)
        eff_rate = len(requests) / span
    else:
        requests = template.at_rate(rate)
        eff_rate = rate if rate is not None else template.native_rate
    watched: list = []  # a timeline observer on every candidate run, when a timeline is asked for

    def watch(cluster) -> None:
        from ecoserve.sim.timeline import TimelineObserver

        watched.append(obs := TimelineObserver())
        obs.attach(cluster)

    t0 = time.perf_counter()
    try:
        with Progress(f"simulating {policy}", "requests", quiet=quiet, delay=2.0) as bar:
            res = run_best(cfg, requests, eff_rate, on_progress=bar, setup=watch if engine_timeline else None)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    wall = time.perf_counter() - t0
    s = res.summary
    out = run_json(policy, eff_rate, s, config=res.config.describe(), workload=workload_json(template),
                   stats=res.stats, wall_seconds=round(wall, 3))  # fmt: skip
    if res.tried:
        out["tried"] = res.tried
    if rate_steps is not None:
        out["rate_steps"] = [{"rate": r, "seconds": d} for r, d in rate_steps]
        out["workload"]["arrivals"] += " (stepped rate)"
    if records_path:
        write_records(records_path, res.records)
    if engine_timeline:
        out["timeline"] = _write_engine_timeline(timeline_path, watched, res, eff_rate, policy, template.name)
    if res.timeline is not None:
        if timeline_path and not engine_timeline:
            Path(timeline_path).write_text(json.dumps(json_clean({**res.timeline, "rate_steps": out.get("rate_steps"),
                                                              "config": out["config"]})))
            out["timeline"] = str(timeline_path)
        if plot_path:
            from ecoserve.sim.plot import plot_timeline

            c = res.config
            plot_timeline(res.timeline, plot_path, steps=rate_steps,
                          title=f"{c.model} on {c.hardware.upper()} (TP={c.tp_}), {template.name}: mitosis, "
                                f"N_l={c.macro_min}, N_u={c.macro_size}")
            out["plot"] = str(plot_path)
    if as_json:
        click.echo(json.dumps(json_clean(out)))
        return
    c = out["config"]
    click.echo(f"{policy} on {c['instances']} x {c['model']} ({c['hardware']}, TP={c['tp']}), "
               f"{template.name}, {eff_rate:.3g} req/s, {s['num_requests']} requests")
    for k in ("chunk_size", "pd_ratio", "distserve_layout"):
        if k in c:
            click.echo(f"  configuration: {k} = {c[k]}")
    click.echo(f"  SLO attainment: {s['attainment']:.1%}  (TTFT <= {cfg.slo_ttft:g} s: {s['ttft_attainment']:.1%}, "
               f"TPOT <= {cfg.slo_tpot * 1e3:g} ms: {s['tpot_attainment']:.1%})")
    for name, d, unit, scale in (("TTFT", s["ttft"], "s", 1), ("TPOT", s["tpot"], "ms", 1e3)):
        click.echo(f"  {name}: p50 {d['p50'] * scale:.3g} {unit}, p90 {d['p90'] * scale:.3g} {unit}, "
                   f"p99 {d['p99'] * scale:.3g} {unit}")
    if "autoscale" in res.stats:
        a = res.stats["autoscale"]
        n, act = a["instances"], a["actions"]
        click.echo(f"  autoscaling: {n['start']} -> {n['end']} instances (min {n['min']}, max {n['max']}), "
                   f"{act['scale_out']} out, {act['scale_in']} in, {act['split']} split(s), {act['merge']} "
                   f"merge(s); final layout {a['layout_end']}")
        if "plot" in out:
            click.echo(f"  plot: {out['plot']}")
    if "timeline" in out:
        click.echo(f"  timeline: {out['timeline']}")
    click.echo(f"  simulated {res.stats['sim_seconds']:.0f} s in {wall:.2f} s wall")


@simulate.command("sweep")
@click.option("--policies", default=",".join(PAPER_POLICIES), show_default=True,
              help="Comma-separated policies to compare.")
@click.option("--levels", default="p50,p90,p99", show_default=True,
              help="Attainment levels to find the goodput for (pNN: NN% of requests meet both SLOs).")
@click.option("--tolerance", type=float, default=0.02, show_default=True,
              help="Stop the rate search when the passing and failing rates are within this fraction.")
@click.option("--min-duration", type=float, default=120.0, show_default=True,
              help="Each rate runs at least --num-requests requests and enough for arrivals to last this many "
                   "seconds, so an overload shows as a growing queue rather than one short burst.")
@click.option("--start-rate", type=float, default=None,
              help="First rate tried (default: a rough capacity estimate).")
@click.option("--rates", default=None,
              help="Extra comma-separated rates to evaluate for every policy (points for the plot).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write a PNG of SLO attainment against rate, one line per policy.")
@quiet_option
@common_options
def sweep_cmd(policies, levels, tolerance, min_duration, start_rate, rates, plot_path, quiet, model, hardware, tp,
              cost_model, instances,
              dataset, replay, slo_ttft, slo_tpot, burstiness, num_requests, seed, slack_mode, output_reservation, decode_margin_s, macro_size,
              chunk_size, pd_ratio, prefix_cache, prefix_routing, lost_yield, lost_yield_max_wait, as_json):
    """Goodput of each policy: the highest rate at which P50/P90/P99 of requests
    meet both SLOs, found by raising the rate until attainment fails and then
    bisecting. Baselines are tried in each of their configurations (Sarathi
    token budgets, DistServe layouts, Mooncake P:D splits) and the best counts.
    Progress (policies done, the current one's runs) goes to stderr (-q: not)."""
    from dataclasses import replace

    from ecoserve.sim import sweep_policy

    names = [p.strip() for p in policies.split(",") if p.strip()]
    bad = [p for p in names if p not in ALL_POLICIES]
    if bad or not names:
        raise click.BadParameter(f"unknown policies {bad}; choose from {', '.join(ALL_POLICIES)}",
                                 param_hint="--policies")
    lv = parse_levels(levels)
    extra = [float(x) for x in rates.split(",")] if rates else []
    base, template = _setup(model, hardware, tp, cost_model, instances, dataset, replay, slo_ttft, slo_tpot, burstiness,
                            num_requests, seed, slack_mode, output_reservation, decode_margin_s, macro_size, chunk_size, pd_ratio,
                            prefix_cache=prefix_cache, prefix_routing=prefix_routing, lost_yield=lost_yield,
                            lost_yield_max_wait=lost_yield_max_wait)
    bar = Progress("simulating", "policies", len(names), quiet=quiet)
    results = []
    t0 = time.perf_counter()
    try:
        for i, name in enumerate(names):
            cfg = replace(base, policy=name)
            runs = [0]

            def on_eval(pol, rate, att, i=i, runs=runs):
                runs[0] += 1
                bar(i, len(names), f"{pol}: run {runs[0]}, {rate:.3g} req/s -> {att:.1%}")

            bar(i, len(names), f"{name}: starting")
            results.append(sweep_policy(cfg, template, lv, rel_tol=tolerance, start=start_rate,
                                        min_duration=min_duration, on_eval=on_eval,
                                        extra_rates=extra))
            bar(i + 1, len(names), f"{name}: {runs[0]} runs")
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    finally:
        bar.close()
    out = {
        "results": [r.to_json() for r in results],
        "levels": lv,
        "config": {k: v for k, v in base.describe().items() if k != "policy"},
        "workload": workload_json(template),
        "wall_seconds": round(time.perf_counter() - t0, 2),
    }
    if plot_path:
        from ecoserve.sim.plot import plot_attainment

        title = (f"{base.model} on {base.instances}x {base.hardware.upper()} (TP={base.tp_}), {template.name}, "
                 f"SLO {base.slo_ttft:g} s / {base.slo_tpot * 1e3:g} ms")
        plot_attainment({r.policy: r.curve for r in results}, plot_path, title=title, levels=lv)
        out["plot"] = str(plot_path)
    if as_json:
        click.echo(json.dumps(json_clean(out)))
        return
    click.echo(f"goodput (req/s) of {base.instances} x {base.model} on {base.hardware}, {template.name}, "
               f"SLO {base.slo_ttft:g} s / {base.slo_tpot * 1e3:g} ms")
    keys = list(lv)
    click.echo(f"  {'policy':<13}" + "".join(f"{k:>9}" for k in keys) + "   best configuration")
    for r in results:
        cfgs = sorted({json.dumps(c, sort_keys=True) for c in r.best_config.values() if c})
        click.echo(f"  {r.policy:<13}" + "".join(f"{r.goodput[k]:>9.2f}" for k in keys) + "   " + "; ".join(cfgs))
    if plot_path:
        click.echo(f"  plot: {plot_path}")


@simulate.command("presets")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def presets_cmd(as_json):
    """List model and hardware presets with the derived engine numbers."""
    from ecoserve.sim import HARDWARE, MODELS, RooflineModel, default_tp

    rows = []
    for h in HARDWARE:
        for m in MODELS:
            tp = default_tp(h, m)
            rows.append(RooflineModel(m, h, tp).describe())
    if as_json:
        click.echo(json.dumps({"models": {k: v.__dict__ for k, v in MODELS.items()},
                               "hardware": {k: v.__dict__ for k, v in HARDWARE.items()}, "instances": rows}))
        return
    click.echo(f"{'instance':<28}{'params':>8}{'KV tokens':>11}{'decode b=1':>12}{'prefill 512':>13}")
    for r in rows:
        click.echo(f"{r['name']:<28}{r['params_b']:>7}B{r['kv_capacity_tokens']:>11}"
                   f"{r['decode_step_s_b1'] * 1e3:>10.1f}ms{r['prefill_s_512'] * 1e3:>11.1f}ms")


@simulate.command("export-profile")
@click.option("--model", type=click.Choice(PRESET_MODELS), default="codellama-34b", show_default=True)
@click.option("--hardware", type=click.Choice(["l20", "a800", "h100"]), default="l20", show_default=True)
@click.option("--tp", type=int, default=None, help="Default: the preset's.")
@click.argument("path", type=click.Path(dir_okay=False, writable=True))
def export_profile_cmd(model, hardware, tp, path):
    """Write the roofline model of a preset as an engine profile JSON (the format
    a real engine's measurements use; see ecoserve.workload.profile)."""
    from ecoserve.sim import RooflineModel, default_tp

    RooflineModel(model, hardware, tp or default_tp(hardware, model)).to_profile().save(path)
    click.echo(f"wrote {path}")


if __name__ == "__main__":
    simulate()
