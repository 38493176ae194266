"""One benchmark run at one rate, scored by the simulator's metrics code."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass

from ecoserve.bench.loadgen import LoadResult, run_load
from ecoserve.bench.prompts import PromptSynthesizer
from ecoserve.bench.target import Target
from ecoserve.metrics import summarize
from ecoserve.workload.workload import WorkloadTemplate


@dataclass
class BenchRun:
    rate: float | None
    load: LoadResult
    summary: dict

    @property
    def attainment(self) -> float:
        return self.summary["attainment"]


def bench_once(
    target: Target,
    template: WorkloadTemplate,
    rate: float | None,
    synth: PromptSynthesizer,
    *,
    slo_ttft: float,
    slo_tpot: float,
    n: int | None = None,
    prompt_form: str = "text",
    timeout: float = 600.0,
    progress: bool | None = None,
    desc: str = "bench",
) -> BenchRun:
    """Send ``template.at_rate(rate, n)`` to ``target`` open-loop and score it."""
    requests = template.at_rate(rate, n)
    prompts = [synth.make(r.prompt_tokens, prompt_form) for r in requests]
    bar = _bar(len(requests), desc, progress)
    failed = [0]

    def on_done(out) -> None:
        if out.error is not None:
            failed[0] += 1
        if bar is not None:
            if failed[0]:
                bar.set_postfix_str(f"failed {failed[0]}", refresh=False)
            bar.update(1)

    try:
        load = asyncio.run(run_load(target.base_url, target.model, requests, prompts, api_key=target.api_key,
                                    timeout=timeout, on_done=on_done))  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    return BenchRun(rate, load, summarize(load.records, slo_ttft, slo_tpot))


def _bar(total: int, desc: str, enabled: bool | None):
    """tqdm on stderr (stdout stays clean for --json); None if off or missing."""
    if enabled is False:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="req", file=sys.stderr, dynamic_ncols=True,
                disable=None if enabled is None else False)  # fmt: skip
