"""One benchmark run at one rate, scored by the simulator's metrics code."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
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
    on_progress: Callable[[int, int | None, str], None] | None = None,
) -> BenchRun:
    """Send ``template.at_rate(rate, n)`` to ``target`` open-loop and score it.
    ``on_progress(finished, total, "sent S[, failed F]")`` hears of every
    request sent and every one that ends (failures included in ``finished``)."""
    requests = template.at_rate(rate, n)
    prompts = [synth.make(r.prompt_tokens, prompt_form, r.blocks) for r in requests]
    counts = {"sent": 0, "done": 0, "failed": 0}

    def report() -> None:
        if on_progress is not None:
            failed = f", failed {counts['failed']}" if counts["failed"] else ""
            on_progress(counts["done"], len(requests), f"sent {counts['sent']}{failed}")

    def on_sent() -> None:
        counts["sent"] += 1
        report()

    def on_done(out) -> None:
        counts["done"] += 1
        counts["failed"] += out.error is not None
        report()

    load = asyncio.run(run_load(target.base_url, target.model, requests, prompts, api_key=target.api_key,
                                timeout=timeout, on_done=on_done, on_sent=on_sent))  # fmt: skip
    return BenchRun(rate, load, summarize(load.records, slo_ttft, slo_tpot))
