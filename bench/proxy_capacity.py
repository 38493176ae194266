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
    python bench/proxy_capacity.py --rounds 10 --dashboard 1 --decode-steps   # the dashboard's cost

With ``--dashboard N``, rounds alternate between no page and N pages open
(each reading ``/ecoserve/timeline/stream`` and decoding every delta), and the
report gives both sides' median tokens per proxy CPU-second and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
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


async def watch_dashboard(session: aiohttp.ClientSession, url: str, seen: list[int]) -> None:
    """What an open dashboard page does: read the timeline's event stream
    (``GET /ecoserve/timeline/stream``) and decode every delta, until cancelled."""
    async with session.get(url + "/ecoserve/timeline/stream") as r:
        assert r.status == 200, await r.text()
        buf = b""
        async for data in r.content.iter_any():
            buf += data
            while b"\n\n" in buf:
                frame, buf = buf.split(b"\n\n", 1)
                json.loads(frame.removeprefix(b"data: "))
                seen[0] += 1


async def run(url: str, streams: int, tokens: int, rounds: int, proxy_pid: int,
              viewers_by_round: list[int]) -> tuple[int, float, list[dict]]:  # fmt: skip
    """``rounds`` rounds of ``streams`` streams; round k with
    ``viewers_by_round[k]`` dashboards open. Per round: tokens, wall, proxy CPU."""
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None)) as s:
        await stream(s, url, 10)  # warm-up: connections, imports
        t = time.perf_counter()
        total = 0
        per_round = []
        for k in range(rounds):
            seen = [0]
            viewers = [asyncio.create_task(watch_dashboard(s, url, seen)) for _ in range(viewers_by_round[k])]
            await asyncio.sleep(0.6 if viewers else 0.0)  # the page's first document is not part of the round
            cpu0, t0 = cpu_seconds(proxy_pid), time.perf_counter()
            got = sum(await asyncio.gather(*(stream(s, url, tokens) for _ in range(streams))))
            cpu, wall = cpu_seconds(proxy_pid) - cpu0, time.perf_counter() - t0
            for v in viewers:
                v.cancel()
            await asyncio.gather(*viewers, return_exceptions=True)
            total += got
            per_round.append({"viewers": len(viewers), "tokens": got, "wall_s": round(wall, 3),
                              "proxy_cpu_s": round(cpu, 3), "tokens_per_proxy_cpu_s": round(got / cpu) if cpu else None,
                              "deltas_read": seen[0]})  # fmt: skip
        return total, time.perf_counter() - t, per_round


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
    p.add_argument("--dashboard", type=int, default=0, metavar="N",
                   help="alternate rounds without and with N open dashboards (the page's event stream), "
                        "and report the capacity of each side and their ratio (medians over rounds)")
    p.add_argument("--decode-steps", action="store_true",
                   help="the fake engine reports a decode step per write, as a busy engine reports its steps "
                        "(the timeline records them)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    viewers = [args.dashboard * (k % 2) for k in range(args.rounds)]  # off, on, off, on, ...

    os.sched_setaffinity(0, {args.other_core})
    fake_port, proxy_port = free_port(), free_port()
    fake = EngineProcess([sys.executable, "-m", "ecoserve.testing.fake_engine", "--port", str(fake_port), "--no-phases",
                          "--write-batch", str(args.write_batch), *(["--decode-steps"] if args.decode_steps else [])],
                         dict(os.environ), None, cores={args.other_core})  # fmt: skip
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
        total, wall, rounds = asyncio.run(run(f"http://127.0.0.1:{proxy_port}", args.streams, args.tokens,
                                              args.rounds, proxy.pid, viewers))  # fmt: skip
        cpu = cpu_seconds(proxy.pid) - cpu0
    finally:
        stop_engines([proxy, fake], grace=30)
    expected = args.streams * args.tokens * args.rounds
    result = {
        "streams": args.streams, "tokens_per_stream": args.tokens, "rounds": args.rounds, "write_batch": args.write_batch,
        "tokens": total, "expected_tokens": expected, "wall_s": round(wall, 3),
        "tokens_per_s_wall": round(total / wall), "proxy_cpu_s": round(cpu, 3),
        "tokens_per_proxy_cpu_s": round(total / cpu) if cpu else None, "rounds_detail": rounds,
    }  # fmt: skip
    if args.dashboard:
        side = {n: statistics.median(r["tokens_per_proxy_cpu_s"] for r in rounds if (r["viewers"] > 0) == n)
                for n in (False, True)}  # fmt: skip
        result["dashboard"] = {"viewers": args.dashboard, "median_tokens_per_proxy_cpu_s_closed": round(side[False]),
                               "median_tokens_per_proxy_cpu_s_open": round(side[True]),
                               "open_over_closed": round(side[True] / side[False], 4)}  # fmt: skip
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{total} tokens ({expected} expected) in {wall:.2f} s: {result['tokens_per_s_wall']:,} tokens/s at the "
              f"client; proxy used {cpu:.2f} CPU-s on core {args.proxy_core}: "
              f"{result['tokens_per_proxy_cpu_s']:,} tokens per proxy CPU-second")  # fmt: skip
        if args.dashboard:
            d = result["dashboard"]
            print(f"dashboard: {d['median_tokens_per_proxy_cpu_s_open']:,} tokens per proxy CPU-second with "
                  f"{args.dashboard} page(s) open, {d['median_tokens_per_proxy_cpu_s_closed']:,} with none "
                  f"(medians of alternating rounds): {d['open_over_closed']:.3f}x")  # fmt: skip
    if total != expected:
        sys.exit("token count mismatch")


if __name__ == "__main__":
    main()
