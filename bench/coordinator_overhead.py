"""Latency the coordinator adds: the same requests through ``ecoserve serve`` and
straight to the engine behind it, side by side.

One real vLLM engine (the tiny model, unless ``--model``) is started by
``ecoserve serve --engines 1 --policy round-robin``: with a baseline policy the
engine runs stock scheduling (phase ``mixed``), so a direct request is served
exactly like a proxied one and the difference is the relay alone (HTTP hop,
validation, tokenization for the policy, chunk parsing and re-framing). The
EcoServe policy's phase switches are a scheduling choice, not proxy
overhead, and are not measured here.

Requests alternate (proxy, direct, direct, proxy, ...) one at a time so both
paths see the same engine state. Reported: TTFT and inter-token latency
(ITL) p50/p99 on each path, and p50/p99 of the per-pair differences.

    python bench/coordinator_overhead.py                      # 100 pairs, 64 output tokens
    python bench/coordinator_overhead.py --pairs 200 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import aiohttp

from ecoserve.engine.process import EngineProcess, free_port

ROOT = Path(__file__).resolve().parent.parent


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


async def one(
    session: aiohttp.ClientSession, url: str, model: str, prompt: str, tokens: int
) -> tuple[float, list[float]]:
    body = {"model": model, "prompt": prompt, "max_tokens": tokens, "ignore_eos": True, "temperature": 0.0,
            "stream": True}  # fmt: skip
    t0 = time.perf_counter()
    stamps: list[float] = []
    buf = b""
    async with session.post(url + "/v1/completions", json=body) as r:
        assert r.status == 200, await r.text()
        async for data in r.content.iter_any():
            now = time.perf_counter()
            buf += data
            *events, buf = buf.split(b"\n\n")
            stamps.extend(now for e in events if e.startswith(b"data: {"))
    # Chunks, not tokens: vLLM holds back a token that ends mid-UTF-8 character
    # and sends it with the next one (random weights do that often).
    assert tokens // 2 <= len(stamps) <= tokens, (len(stamps), tokens)
    return stamps[0] - t0, [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


async def measure(proxy: str, direct: str, model: str, pairs: int, tokens: int) -> dict:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as s:
        for url in (proxy, direct):  # warm-up
            await one(s, url, model, "warm up", tokens)
        res: dict[str, list] = {"proxy": [], "direct": []}
        for i in range(pairs):
            order = ("proxy", "direct") if i % 2 == 0 else ("direct", "proxy")
            prompt = f"request {i}: the quick brown fox jumps over the lazy dog"
            for path in order:
                res[path].append(await one(s, proxy if path == "proxy" else direct, model, prompt, tokens))
    ttft = {k: [r[0] for r in v] for k, v in res.items()}
    itl = {k: [x for r in v for x in r[1]] for k, v in res.items()}
    mean_itl = {k: [statistics.mean(r[1]) for r in v] for k, v in res.items()}
    d_ttft = [p - d for p, d in zip(ttft["proxy"], ttft["direct"], strict=True)]
    d_itl = [p - d for p, d in zip(mean_itl["proxy"], mean_itl["direct"], strict=True)]
    ms = lambda x: round(x * 1e3, 3)  # noqa: E731
    return {
        "pairs": pairs, "output_tokens": tokens,
        "ttft_ms": {k: {"p50": ms(pct(v, 50)), "p99": ms(pct(v, 99))} for k, v in ttft.items()},
        "itl_ms": {k: {"p50": ms(pct(v, 50)), "p99": ms(pct(v, 99))} for k, v in itl.items()},
        "added_ttft_ms": {q: ms(pct(d_ttft, int(q[1:]))) for q in ("p50", "p90", "p99")},
        "added_mean_itl_ms": {q: ms(pct(d_itl, int(q[1:]))) for q in ("p50", "p90", "p99")},
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model directory (default: the tiny model in .cache/models/tiny)")
    p.add_argument("--pairs", type=int, default=100)
    p.add_argument("--tokens", type=int, default=64, help="output tokens per request")
    p.add_argument(
        "--fake",
        action="store_true",
        help="behind the coordinator, a stand-in engine (ecoserve.testing.fake_engine, one token every 5 ms, one "
        "write per token) instead of vLLM: less noise, so the relay's own cost shows",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    model = args.model
    fake = None
    port = free_port()
    if args.fake:
        fake_port = free_port()
        fake = EngineProcess(
            [sys.executable, "-m", "ecoserve.testing.fake_engine", "--port", str(fake_port), "--no-phases",
             "--token-interval", "0.005", "--write-batch", "1"],
            dict(os.environ), None,
        )  # fmt: skip
        fake.start()
        model = "fake engine"
        cmd = [
            sys.executable,
            "-m",
            "ecoserve.cli.serve",
            "--engine-url",
            f"http://127.0.0.1:{fake_port}",
            "--policy",
            "round-robin",
            "--port",
            str(port),
        ]
    elif model is None:
        from ecoserve.models import make_model, model_matches

        path = ROOT / ".cache" / "models" / "tiny"
        if not model_matches(path, "tiny"):
            make_model(path, size="tiny", force=True)
        model = str(path)
    if not args.fake:
        cmd = [
            sys.executable,
            "-m",
            "ecoserve.cli.serve",
            "--model",
            model,
            "--engines",
            "1",
            "--policy",
            "round-robin",
            "--port",
            str(port),
            "--",
            "--max-model-len",
            "512",
            "--enforce-eager",
        ]
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    serve = EngineProcess(cmd, env, ROOT / ".cache" / "coordinator_overhead.log", header=None, fresh_log=True)
    serve.start()
    proxy = f"http://127.0.0.1:{port}"
    try:
        serve.wait_healthy(proxy, 600)
        import urllib.request

        with urllib.request.urlopen(proxy + "/ecoserve/status") as r:
            st = json.load(r)
        direct, served = st["instances"][0]["url"], st["model"]
        result = asyncio.run(measure(proxy, direct, served, args.pairs, args.tokens))
    finally:
        serve.stop(grace=90)
        if fake is not None:
            fake.stop(grace=30)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.pairs} request pairs, {args.tokens} output tokens each, one engine ({model})")
    for k in ("proxy", "direct"):
        print(f"  {k:6s}  TTFT p50 {result['ttft_ms'][k]['p50']:8.2f} ms  p99 {result['ttft_ms'][k]['p99']:8.2f} ms   "
              f"ITL p50 {result['itl_ms'][k]['p50']:6.2f} ms  p99 {result['itl_ms'][k]['p99']:6.2f} ms")  # fmt: skip
    a, b = result["added_ttft_ms"], result["added_mean_itl_ms"]
    print(
        f"  added by the coordinator (per pair): TTFT p50 {a['p50']:.2f} / p90 {a['p90']:.2f} / p99 {a['p99']:.2f} ms; "
        f"mean ITL p50 {b['p50']:.3f} / p90 {b['p90']:.3f} / p99 {b['p99']:.3f} ms"
    )
    print(f"  (machine load average {result['load_average']}: other work on the cores shows up in the tails)")


if __name__ == "__main__":
    main()
