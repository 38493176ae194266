"""Live scenarios on real engines: a chaos run and a scaling ramp.

    python bench/live_scenarios.py chaos --model .cache/models/tiny --out bench/results/live/chaos.json
    python bench/live_scenarios.py ramp  --model .cache/models/tiny --out bench/results/live/ramp.json

Each starts ``ecoserve serve`` as a user would (a subprocess, CPU engines),
drives a steady open-loop load of streaming completions with exact output
lengths (``ignore_eos``), and accounts for every request sent:

- completed: streamed to ``[DONE]`` with exactly ``max_tokens`` tokens;
- failed: ended with a clear error (an HTTP error status or an error event in
  the stream), the only acceptable way not to complete;
- lost: anything else: a stream cut without an error, a wrong token count, a
  hang past the timeout. Must be 0.

chaos: two engines, ``kill -9`` of one engine's process group mid-load;
reports the time to detect the failure and to have a replacement serving.
ramp: one engine, autoscaling up to three (N_u = 2, so a split), a load high
enough to grow it, then silence: it shrinks back to one with a merge.
tests/live/test_scaling_engines.py runs both and asserts on these reports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from ecoserve.engine.process import EngineProcess, free_port

ENGINE_ARGS = ["--max-model-len", "512", "--enforce-eager", "--dtype", "bfloat16"]
START_TIMEOUT_S = 420.0


class Server:
    """``ecoserve serve`` in a subprocess, in its own process group."""

    def __init__(self, model: str, log_dir: Path, serve_args: list[str], engine_args: list[str] = ENGINE_ARGS) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.out_path = log_dir / "serve.out"
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
        cmd = [sys.executable, "-m", "ecoserve.cli.serve", "--model", model, "--port", str(self.port),
               "--log-dir", str(log_dir), *serve_args, "--", *engine_args]  # fmt: skip
        self.proc = EngineProcess(cmd, env, self.out_path, header=None, fresh_log=True)
        self.proc.start()
        self.model = ""
        self.engine_pids: set[int] = set()

    def output(self) -> str:
        text = self.out_path.read_text(errors="replace")
        for log in sorted(self.log_dir.glob("engine-*.log")):
            text += f"\n----- {log.name} (tail) -----\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        return text

    async def wait_ready(self, http: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if (code := self.proc.exit_code()) is not None:
                raise RuntimeError(f"ecoserve serve exited ({code}):\n{self.output()}")
            try:
                async with http.get(self.url + "/health") as r:
                    if r.status == 200:
                        async with http.get(self.url + "/v1/models") as m:
                            self.model = (await m.json())["data"][0]["id"]
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(1)
        raise RuntimeError(f"ecoserve serve not ready after {START_TIMEOUT_S:.0f} s:\n{self.output()}")

    async def status(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        async with http.get(self.url + "/ecoserve/status") as r:
            st = await r.json()
        self.engine_pids |= {i["pid"] for i in st["instances"] if i["pid"]}
        return st

    def stop(self) -> int | None:
        """SIGTERM, as a user's Ctrl-C or a supervisor would; SIGKILL if it hangs."""
        code = self.proc.stop(grace=90)
        for pid in self.engine_pids:  # never leave engines behind, even after a failure
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return code


@dataclass
class Outcome:
    sent_at: float
    status: str = "lost"  # completed | failed | lost
    tokens: int = 0
    ttft: float | None = None
    detail: str = ""


@dataclass
class Load:
    """An open-loop stream of requests, one every ``1/rate`` seconds whatever
    the replies do; or, with ``concurrency``, a closed loop that keeps that
    many requests open (a backlog of fixed size, whatever the machine's speed)."""

    url: str
    model: str
    rate: float
    max_tokens: int = 32
    prompt_words: int = 40
    timeout: float = 240.0
    concurrency: int | None = None  # instead of a rate: keep this many requests open
    pause_s: float = 0.0  # closed loop: wait this long after a request ends before the next
    outcomes: list[Outcome] = field(default_factory=list)
    _tasks: list[asyncio.Task] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.concurrency or 1)

    async def run(self, http: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        start = time.monotonic()
        n = 0
        while not stop.is_set():
            if self.concurrency is not None:  # closed loop: a new request as soon as one ends
                await self._slots.acquire()
                if stop.is_set():
                    self._slots.release()
                    break
                o = Outcome(time.monotonic())
                self.outcomes.append(o)
                task = asyncio.create_task(self._one(http, n, o))
                task.add_done_callback(self._free_slot_later)
                self._tasks.append(task)
                n += 1
                continue
            at = start + n / self.rate
            delay = at - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    break
                except asyncio.TimeoutError:
                    pass
            o = Outcome(time.monotonic())
            self.outcomes.append(o)
            self._tasks.append(asyncio.create_task(self._one(http, n, o)))
            n += 1

    def _free_slot_later(self, _: asyncio.Task) -> None:
        asyncio.get_running_loop().call_later(self.pause_s, self._slots.release)

    async def settle(self) -> None:
        await asyncio.gather(*self._tasks)

    async def _one(self, http: aiohttp.ClientSession, n: int, o: Outcome) -> None:
        # A fresh prompt each time (no prefix-cache hits hiding prefill work).
        prompt = f"request {n} " + " ".join(f"w{(n * 7919 + k) % 1000}" for k in range(self.prompt_words))
        body = {"model": self.model, "prompt": prompt, "max_tokens": self.max_tokens, "ignore_eos": True,
                "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
        done = False
        try:
            async with asyncio.timeout(self.timeout):
                async with http.post(self.url + "/v1/completions", json=body) as r:
                    if r.status != 200:
                        o.status, o.detail = "failed", f"HTTP {r.status}: {(await r.text())[:200]}"
                        return
                    buf = b""
                    async for data in r.content.iter_any():
                        buf += data
                        while b"\n\n" in buf:
                            event, buf = buf.split(b"\n\n", 1)
                            payload = event.removeprefix(b"data: ").strip()
                            if payload == b"[DONE]":
                                done = True
                                continue
                            chunk = json.loads(payload)
                            if "error" in chunk:
                                o.status, o.detail = "failed", str(chunk["error"].get("message"))[:200]
                                return
                            if chunk.get("choices") and o.ttft is None:
                                o.ttft = time.monotonic() - o.sent_at
                            if chunk.get("usage"):
                                o.tokens = chunk["usage"]["completion_tokens"]
        except TimeoutError:
            o.detail = f"no end after {self.timeout:.0f} s"
            return
        except aiohttp.ClientError as e:
            o.detail = f"connection: {e}"
            return
        if done and o.tokens == self.max_tokens:
            o.status = "completed"
        else:
            o.detail = f"stream ended (done={done}) with {o.tokens} of {self.max_tokens} tokens and no error"

    def counts(self) -> dict[str, int]:
        out = {"sent": len(self.outcomes), "completed": 0, "failed": 0, "lost": 0}
        for o in self.outcomes:
            out[o.status] += 1
        return out


def _median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


async def chaos(model: str, log_dir: Path, *, rate: float = 4.0, before_s: float = 15.0, after_s: float = 20.0) -> dict:
    """Two engines under steady load; kill -9 one; keep the load on until a
    replacement serves, and a while after."""
    server = Server(model, log_dir, ["--engines", "2", "--slo-ttft", "1", "--slo-tpot", "0.5"])
    report: dict[str, Any] = {"scenario": "chaos", "rate": rate}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10), connector=aiohttp.TCPConnector(limit=0)) as http:
            await server.wait_ready(http)
            st = await server.status(http)
            load = Load(server.url, server.model, rate)
            stop = asyncio.Event()
            runner = asyncio.create_task(load.run(http, stop))
            await asyncio.sleep(before_s)
            victim = st["instances"][1]
            killed_at = time.monotonic()
            os.killpg(victim["pid"], signal.SIGKILL)
            detected = replaced = None
            while time.monotonic() - killed_at < START_TIMEOUT_S:
                st = await server.status(http)
                kinds = {e["event"] for e in st["events"]}
                if detected is None and "failed" in kinds:
                    detected = time.monotonic() - killed_at
                if "replaced" in kinds:
                    replaced = time.monotonic() - killed_at
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(after_s)
            stop.set()
            await runner
            await load.settle()
            st = await server.status(http)
            report.update(load.counts())
            report.update({
                "killed": victim["id"],
                "rerouted": st["requeued_total"],
                "detect_s": detected,
                "recover_s": replaced,
                "engines_after": [i["id"] for i in st["instances"] if i["healthy"]],
                "events": [(e["event"], e["instance"], e["detail"]) for e in st["events"]],
                "failures": [asdict(o) for o in load.outcomes if o.status != "completed"][:20],
                "ttft_p50_before": _median([o.ttft for o in load.outcomes if o.ttft and o.sent_at < killed_at]),
                "ttft_p50_after": _median([o.ttft for o in load.outcomes if o.ttft and o.sent_at >= killed_at]),
            })  # fmt: skip
    finally:
        report["exit_code"] = server.stop()
        report["serve_output_tail"] = server.output()[-3000:] if report.get("lost", 1) else ""
    return report


async def ramp(model: str, log_dir: Path, *, concurrency: int = 2, max_tokens: int = 16, pause_s: float = 0.3) -> dict:
    """Grow 1 -> 3 under load (split at N_u = 2), then shrink 3 -> 1 in silence (merge).

    The TTFT SLO (5 ms) is below what any request can get through two HTTP
    hops and an engine step, so any load at all is overload to the planner:
    it grows the fleet on any machine. The load itself stays light (a closed
    loop of ``concurrency`` requests, each followed by ``pause_s``): on a
    2-core machine the third engine shares a core with a busy one, and an
    open-loop rate would pile up a backlog while engines start."""
    serve_args = ["--engines", "1", "--max-engines", "3", "--macro-min", "1", "--macro-max", "2",
                  "--slo-ttft", "0.005", "--slo-tpot", "1.0", "--scale-cooldown", "2", "--scale-in-hold", "3",
                  "--ttft-window", "5"]  # fmt: skip
    server = Server(model, log_dir, serve_args)
    report: dict[str, Any] = {"scenario": "ramp", "concurrency": concurrency, "max_tokens": max_tokens,
                              "pause_s": pause_s}  # fmt: skip
    timeline: list[dict[str, Any]] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10), connector=aiohttp.TCPConnector(limit=0)) as http:
            await server.wait_ready(http)
            t0 = time.monotonic()

            async def sample() -> dict[str, Any]:
                st = await server.status(http)
                layout = [m["instances"] for m in st["layout"]]
                timeline.append({"t": round(time.monotonic() - t0, 2), "layout": layout, "pending": st["pending"],
                                 "in_flight": st["in_flight"], "launching": st["launching"]})  # fmt: skip
                return st

            load = Load(server.url, server.model, 0.0, max_tokens=max_tokens, concurrency=concurrency,
                        pause_s=pause_s)  # fmt: skip
            stop = asyncio.Event()
            runner = asyncio.create_task(load.run(http, stop))
            while time.monotonic() - t0 < 2 * START_TIMEOUT_S:
                st = await sample()
                if len(st["layout"]) >= 2 and sum(len(m["instances"]) for m in st["layout"]) >= 3:
                    break
                await asyncio.sleep(0.5)
            grown_at = time.monotonic() - t0
            stop.set()
            await runner
            await load.settle()
            while time.monotonic() - t0 < grown_at + 300:
                st = await sample()
                if sum(1 for e in st["events"] if e["event"] == "removed") >= 2:
                    break
                await asyncio.sleep(0.5)
            st = await sample()
            report.update(load.counts())
            report.update({
                "grown_at_s": grown_at,
                "shrunk_at_s": timeline[-1]["t"],
                "max_engines_seen": max(sum(len(g) for g in s["layout"]) for s in timeline),
                "final_layout": [m["instances"] for m in st["layout"]],
                "events": [(e["event"], e["instance"], e["detail"]) for e in st["events"]],
                "failures": [asdict(o) for o in load.outcomes if o.status != "completed"][:20],
                "timeline": timeline,
            })  # fmt: skip
    finally:
        report["exit_code"] = server.stop()
        if report.get("lost", 1) or report.get("failed", 1):
            report["serve_output_tail"] = server.output()[-3000:]
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", choices=["chaos", "ramp"])
    p.add_argument("--model", required=True, help="model directory (e.g. `ecoserve make-model .cache/models/tiny`)")
    p.add_argument("--rate", type=float, default=None, help="chaos: requests per second")
    p.add_argument("--log-dir", type=Path, default=Path("/tmp/ecoserve-live"))
    p.add_argument("--out", type=Path, default=None, help="write the report here (JSON)")
    args = p.parse_args()
    kw = {"rate": args.rate} if args.rate and args.scenario == "chaos" else {}
    run = chaos if args.scenario == "chaos" else ramp
    report = asyncio.run(run(args.model, args.log_dir / args.scenario, **kw))
    text = json.dumps(report, indent=2, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
