"""Proxy capacity: streamed tokens per second the coordinator forwards on one core.

A fake engine (``ecoserve.testing.fake_engine``) streams tokens as fast as it can;
``ecoserve serve --engine-url`` relays them, pinned to ONE core; this script's
client reads the streams (asking for ``include_usage`` like vLLM's own
benchmark client, so the relay also strips per-chunk usage). The upstream and
the client share another core, so the proxy's core does proxy work only.

Reported: tokens/s at the client (wall clock) and tokens per CPU-second of the
proxy process (from /proc), i.e. the capacity of one coordinator core. The
target is >= 20,000 tokens/s per core.

    python bench/proxy_capacity.py                       # 64 streams x 2000 tokens, proxy on core 0
    python bench/proxy_capacity.py --streams 16 --tokens 4000 --proxy-core 0 --other-core 1 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import aiohttp

from ecoserve.engine.process import EngineProcess, free_port, stop_engines


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_up(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(url + "/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} not up after {timeout}s")


async def stream(session: aiohttp.ClientSession, url: str, tokens: int) -> int:
    body = {"prompt": "bench", "max_tokens": tokens, "stream": True, "stream_options": {"include_usage": True}}
    got, tail = 0, b""
    async with session.post(url + "/v1/completions", json=body) as r:
        assert r.status == 200, await r.text()
        async for data in r.content.iter_any():
            data = tail + data  # a marker may straddle two reads
            got += data.count(b'"text":')  # one per token chunk (the usage chunk has none)
            tail = data[-6:]
    return got


async def run(url: str, streams: int, tokens: int, rounds: int) -> tuple[int, float]:
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None)) as s:
        await stream(s, url, 10)  # warm-up: connections, imports
        t = time.perf_counter()
        total = 0
        for _ in range(rounds):
            total += sum(await asyncio.gather(*(stream(s, url, tokens) for _ in range(streams))))
        return total, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=64, help="concurrent streams")
    p.add_argument("--tokens", type=int, default=2000, help="tokens per stream")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--proxy-core", type=int, default=0)
    p.add_argument("--other-core", type=int, default=1, help="core of the fake engine and this client")
    p.add_argument(
        "--write-batch",
        type=int,
        default=64,
        help="tokens the fake engine packs into one write (1: one write per token, as vLLM does)",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    os.sched_setaffinity(0, {args.other_core})
    fake_port, proxy_port = free_port(), free_port()
    fake = EngineProcess([sys.executable, "-m", "ecoserve.testing.fake_engine", "--port", str(fake_port), "--no-phases",
                          "--write-batch", str(args.write_batch)], dict(os.environ), None, cores={args.other_core})
    proxy = EngineProcess(
        [sys.executable, "-m", "ecoserve.cli.serve", "--engine-url", f"http://127.0.0.1:{fake_port}",
         "--port", str(proxy_port), "--policy", "round-robin", "--log-level", "warning"],
        dict(os.environ), None, cores={args.proxy_core},
    )  # fmt: skip
    fake.start()
    proxy.start()
    try:
        asyncio.run(wait_up(f"http://127.0.0.1:{fake_port}"))
        asyncio.run(wait_up(f"http://127.0.0.1:{proxy_port}"))
        cpu0 = cpu_seconds(proxy.pid)
        total, wall = asyncio.run(run(f"http://127.0.0.1:{proxy_port}", args.streams, args.tokens, args.rounds))
        cpu = cpu_seconds(proxy.pid) - cpu0
    finally:
        stop_engines([proxy, fake], grace=30)
    expected = args.streams * args.tokens * args.rounds
    result = {
        "streams": args.streams, "tokens_per_stream": args.tokens, "rounds": args.rounds, "write_batch": args.write_batch,
        "tokens": total, "expected_tokens": expected, "wall_s": round(wall, 3),
        "tokens_per_s_wall": round(total / wall), "proxy_cpu_s": round(cpu, 3),
        "tokens_per_proxy_cpu_s": round(total / cpu) if cpu else None,
    }  # fmt: skip
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{total} tokens ({expected} expected) in {wall:.2f} s: {result['tokens_per_s_wall']:,} tokens/s at the "
              f"client; proxy used {cpu:.2f} CPU-s on core {args.proxy_core}: "
              f"{result['tokens_per_proxy_cpu_s']:,} tokens per proxy CPU-second")  # fmt: skip
    if total != expected:
        sys.exit("token count mismatch")


if __name__ == "__main__":
    main()
