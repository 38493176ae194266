"""``ecoserve profile``: measure a real engine's step times into a profile file.

The file (format ``ecoserve-profile/v1``, see ``ecoserve.workload.profile``)
drives the simulator (``ecoserve simulate --model FILE``) and seeds the
policy's prefill-time predictor (``ecoserve serve --profile FILE``).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ecoserve.cli.progress import Progress, quiet_option


@click.command("profile", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--engine-url", required=True,
              help="Root URL of ONE idle vLLM engine (not a load balancer), e.g. http://127.0.0.1:8001. With the "
                   "EcoServe plugin its own step records are used, otherwise client-side timing.")  # fmt: skip
@click.option("--model", default=None,
              help="Served model id or the local model directory (also the default tokenizer). Default: the one "
                   "model the engine lists.")  # fmt: skip
@click.option("--tokenizer", default=None, help="Tokenizer directory (default: --model if it is a directory).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, writable=True),
              help="Profile JSON to write.")
@click.option("--source", type=click.Choice(["auto", "steps", "client"]), default="auto", show_default=True,
              help="steps: the plugin's step records (engine time only); client: timing from the stream; "
                   "auto: steps when the plugin answers.")  # fmt: skip
@click.option("--prefill-lengths", default=None, help="Comma-separated prompt lengths (default: 16 .. the context).")
@click.option("--batch-sizes", default=None, help="Comma-separated decode batch sizes (default 1,2,4,8,16,32).")
@click.option("--context-lengths", default=None, help="Comma-separated decode contexts (default 128,512,1024,2048).")
@click.option("--repeats", type=click.IntRange(1), default=None, help="Prefill runs per length; the median counts.")
@click.option("--quick", is_flag=True, help="A coarse grid in a fraction of the time (tests, smoke runs).")
@click.option("--kv-capacity-tokens", type=click.IntRange(1), default=None,
              help="KV slots of the engine, if it cannot tell (no plugin, no cache_config_info metric).")
@click.option("--hardware", default=None, help="Free text for the file's `hardware` field (e.g. '1 core EPYC').")
@click.option("--api-key", envvar="ECOSERVE_API_KEY", default=None, help="Bearer key the engine requires.")
@quiet_option
def profile(engine_url, model, tokenizer, out_path, source, prefill_lengths, batch_sizes, context_lengths, repeats,
            quick, kv_capacity_tokens, hardware, api_key, quiet) -> None:  # fmt: skip
    """Measure prefill time by prompt length and decode step time by batch size
    and context on a running engine, and write an ecoserve-profile/v1 file.

    The engine should be otherwise idle: every measurement is a lone request
    or a lone batch. Takes a few minutes on CPU (use --quick for a coarse one);
    the points measured show on stderr as it goes (-q: not).
    """
    from ecoserve.bench.profiler import (
        ProfileError,
        ProfilePlan,
        kv_bytes_per_token,
        measure_profile,
        parse_ints,
    )
    from ecoserve.bench.prompts import PromptSynthesizer
    from ecoserve.bench.target import TargetError, discover

    try:
        target = discover(engine_url, model, api_key)
    except TargetError as e:
        raise click.ClickException(str(e)) from None
    tok = tokenizer or (model if model and Path(model).expanduser().is_dir() else None)
    if tok is None:
        raise click.UsageError("exact prompt lengths need a tokenizer: give --model MODEL_DIR or --tokenizer DIR")
    synth = PromptSynthesizer.from_path(tok)
    plan = ProfilePlan.default(target.max_model_len or 2048, quick=quick)
    try:
        for name, text in (("prefill_lengths", prefill_lengths), ("batch_sizes", batch_sizes),
                           ("context_lengths", context_lengths)):  # fmt: skip
            vals = parse_ints(text, "--" + name.replace("_", "-"))
            if vals is not None:
                setattr(plan, name, list(vals))
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    if repeats:
        plan.repeats = repeats
    top = target.max_model_len
    if top and (max(plan.prefill_lengths) > top - 1 or max(plan.context_lengths) + plan.decode_tokens > top):
        raise click.BadParameter(f"lengths exceed the engine's context of {top} tokens")
    try:
        with Progress("profiling", "points", plan.size(), quiet=quiet) as bar:
            prof = measure_profile(target, synth, plan, mode=source, on_progress=bar)
    except ProfileError as e:
        raise click.ClickException(str(e)) from None
    if kv_capacity_tokens:
        prof.kv_capacity_tokens = kv_capacity_tokens
    if model and Path(model).expanduser().is_dir():
        prof.kv_bytes_per_token = kv_bytes_per_token(model)  # bf16 KV cache, as the engines run here
    if hardware:
        prof.meta["hardware"] = hardware
    prof.save(out_path)
    p = prof.prefill
    click.echo(f"wrote {out_path} ({prof.meta['source']} timing): prefill {p[0][0]} tok {p[0][1] * 1e3:.1f} ms .. "
               f"{p[-1][0]} tok {p[-1][1] * 1e3:.1f} ms; decode b={prof.batch_sizes[0]} "
               f"{prof.decode_seconds[0][0] * 1e3:.1f} ms .. b={prof.batch_sizes[-1]} "
               f"{prof.decode_seconds[-1][-1] * 1e3:.1f} ms; KV {prof.kv_capacity_tokens} tokens")
    if "overheads" in prof.meta:
        click.echo(f"  front-end overhead per request (client TTFT - engine prefill): "
                   f"{json.dumps(prof.meta['overheads'])}")


if __name__ == "__main__":
    profile()
