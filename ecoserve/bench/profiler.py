"""Measure a real engine's step times: prefill by prompt length, decode by
batch size and context length, as an ``ecoserve-profile/v1`` file.

Two sources, the better one used when available (the file says which):
- ``steps``: the engine runs the EcoServe plugin, whose ``GET
  /ecoserve/status`` returns its last steps (``StepRecord``: kind, prefill
  tokens, decode batch and context, duration). Step durations are the engine's
  own, free of HTTP and tokenization.
- ``client``: any OpenAI-compatible engine. Prefill is the TTFT of a lone
  one-token request; a decode step is the median gap between the streamed
  tokens of a batch while all of it decodes.

In ``steps`` mode two overheads no step record covers are written too:
``overheads.ttft_s``, what the engine's front end adds to a request (client
TTFT minus the engine's prefill steps), and ``overheads.step_gap_s``, the
engine loop's time between two consecutive steps of a busy engine.

On a plugin engine a decode batch is first held in the ``prefill`` phase
until every request has its first token, then switched to ``decode``, so all
its steps decode exactly the batch. Decode batches share one prompt prefix (the last tokens differ), so the
prefix cache pays their prefill once: the profile is fast to take, and
attention still reads every sequence's whole context in each decode step.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from ecoserve.bench.client import Outcome, completion_body, stream_completion
from ecoserve.bench.prompts import PromptSynthesizer
from ecoserve.bench.target import Target
from ecoserve.workload.profile import EngineProfile

PREFILL_LENGTHS = (16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
BATCH_SIZES = (1, 2, 4, 8, 16, 32)
CONTEXT_LENGTHS = (128, 512, 1024, 2048)
DECODE_TOKENS = 24  # tokens per request in a decode measurement
UNIQUE_TAIL = 8  # distinct last prompt tokens per request of a decode batch


class ProfileError(RuntimeError):
    pass


@dataclass
class ProfilePlan:
    prefill_lengths: list[int]
    batch_sizes: list[int]
    context_lengths: list[int]
    repeats: int = 3
    decode_tokens: int = DECODE_TOKENS

    @classmethod
    def default(cls, max_model_len: int, *, quick: bool = False) -> ProfilePlan:
        top = max_model_len - DECODE_TOKENS - 1
        pre = [n for n in PREFILL_LENGTHS if n <= top]
        if not pre or pre[-1] != top:
            pre.append(top)
        ctx = [c for c in CONTEXT_LENGTHS if c <= top] or [max(UNIQUE_TAIL + 2, top)]
        if quick:
            return cls(pre[::2] + ([pre[-1]] if len(pre) % 2 == 0 else []), [1, 4, 16], ctx[:2], repeats=1,
                       decode_tokens=12)
        return cls(pre, list(BATCH_SIZES), ctx)

    def size(self) -> int:
        return len(self.prefill_lengths) * self.repeats + len(self.batch_sizes) * len(self.context_lengths)


@dataclass
class _Measures:
    prefill: dict[int, float] = field(default_factory=dict)
    ttft_overhead: list[float] = field(default_factory=list)
    decode: dict[tuple[int, int], float] = field(default_factory=dict)
    step_gaps: list[float] = field(default_factory=list)  # idle time between consecutive busy steps


class Profiler:
    def __init__(self, target: Target, synth: PromptSynthesizer, *, mode: str = "auto", timeout: float = 600.0):
        self.t = target
        self.synth = synth
        self.mode = mode
        self.timeout = timeout

    # -- engine access ---------------------------------------------------------------

    async def _status(self, session: aiohttp.ClientSession) -> dict | None:
        """The plugin's engine status (with step records), or None."""
        try:
            async with session.get(self.t.base_url + "/ecoserve/status", headers=self.t.headers) as r:
                if r.status != 200:
                    return None
                obj = await r.json(content_type=None)
        except (aiohttp.ClientError, ValueError):
            return None
        return obj if isinstance(obj, dict) and "steps" in obj and "kv_blocks_total" in obj else None

    async def _steps_since(self, session, step: int) -> list[dict]:
        st = await self._status(session)
        if st is None:
            raise ProfileError("the engine's /ecoserve/status stopped answering")
        return [s for s in st["steps"] if s["step"] > step]

    async def _send(self, session, prompt, max_tokens: int, *, keep_times: bool = False) -> Outcome:
        body = completion_body(self.t.model, prompt, max_tokens)
        out = await stream_completion(session, self.t.base_url + "/v1/completions", body, headers=self.t.headers,
                                      timeout=self.timeout, keep_times=keep_times)  # fmt: skip
        if out.error is not None:
            raise ProfileError(f"request failed: {out.error} {out.detail}")
        return out

    async def _kv_capacity_from_metrics(self, session) -> int | None:
        """vLLM's ``vllm:cache_config_info`` gauge carries num_gpu_blocks and block_size."""
        try:
            async with session.get(self.t.base_url + "/metrics", headers=self.t.headers) as r:
                text = await r.text()
        except aiohttp.ClientError:
            return None
        for line in text.splitlines():
            if line.startswith("vllm:cache_config_info{"):
                labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1 : line.rindex("}")].split(","))
                try:
                    blocks = int(labels["num_gpu_blocks"].strip('"'))
                    size = int(labels["block_size"].strip('"'))
                except (KeyError, ValueError):
                    return None
                return blocks * size
        return None

    # -- measurements --------------------------------------------------------------------

    async def _prefill(self, session, n: int, steps: bool, m: _Measures) -> float:
        before = (await self._status(session))["step"] if steps else 0
        out = await self._send(session, self.synth.text(n), 1)
        client = out.first_token - out.sent
        if not steps:
            return client
        recs = [s for s in await self._steps_since(session, before) if s["kind"] in ("prefill", "mixed")]
        if not recs or sum(s["prefill_tokens"] for s in recs) < n * 0.5:
            raise ProfileError(f"no prefill step records for a {n}-token prompt (was the engine busy?)")
        engine = sum(s["duration_s"] for s in recs)
        m.ttft_overhead.append(client - engine)
        return engine

    async def _set_phase(self, session, phase: str) -> dict:
        async with session.post(self.t.base_url + "/ecoserve/phase", json={"phase": phase},
                                headers=self.t.headers) as r:  # fmt: skip
            if r.status != 200:
                raise ProfileError(f"phase command {phase} failed: {r.status} {(await r.text())[:200]}")
            return await r.json(content_type=None)

    async def _batched(self, session, prompts: list[list[int]], k: int) -> list[Outcome]:
        """Plugin engines: hold the batch in the prefill phase until every
        request has its first token, then decode it all together, so every
        decode step has exactly the batch asked for."""
        original = (await self._status(session))["phase"]
        await self._set_phase(session, "prefill")
        try:
            sends = [asyncio.create_task(self._send(session, p, k)) for p in prompts]
            deadline = time.monotonic() + self.timeout
            while True:
                st = await self._status(session)
                if st["num_waiting"] == st["num_prefilling"] == 0 and st["num_decoding"] >= len(prompts):
                    break
                if time.monotonic() > deadline or any(t.done() and t.exception() for t in sends):
                    break
                await asyncio.sleep(0.01)
            await self._set_phase(session, "decode")
            return await asyncio.gather(*sends)
        finally:
            await self._set_phase(session, original)

    async def _decode(self, session, b: int, ctx: int, k: int, steps: bool, m: _Measures | None = None) -> float:
        """One decode step of ``b`` sequences whose context averages ``ctx`` tokens."""
        prompt_len = max(UNIQUE_TAIL + 1, ctx - k // 2)
        head = self.synth.token_ids(prompt_len - UNIQUE_TAIL)
        prompts = [head + self.synth.token_ids(UNIQUE_TAIL) for _ in range(b)]
        before = (await self._status(session))["step"] if steps else 0
        if steps:
            outs = await self._batched(session, prompts, k)
        else:
            outs = await asyncio.gather(*(self._send(session, p, k, keep_times=True) for p in prompts))
        if steps:
            recs = [s for s in await self._steps_since(session, before)
                    if s["kind"] == "decode" and s["decode_batch"] == b]  # fmt: skip
            if not recs:
                raise ProfileError(f"no decode steps of batch {b} recorded (was the engine busy?)")
            if m is not None:  # the engine loop's time outside the recorded steps
                recs.sort(key=lambda s: s["step"])
                m.step_gaps += [y["start"] - x["start"] - x["duration_s"] for x, y in itertools.pairwise(recs)
                                if y["step"] == x["step"] + 1]  # fmt: skip
            return statistics.median(s["duration_s"] for s in recs)
        start = max(o.first_token for o in outs)
        end = min(o.finish for o in outs)
        gaps = [b2 - a for o in outs for a, b2 in zip(o.token_times, o.token_times[1:]) if a >= start and b2 <= end]
        if not gaps:  # the batch never decoded all together (too few tokens): whole-stream mean
            gaps = [(o.finish - o.first_token) / max(1, o.chunks - 1) for o in outs]
        return statistics.median(gaps)

    async def measure(self, plan: ProfilePlan,
                      on_progress: Callable[[int, int | None, str], None] | None = None) -> EngineProfile:  # fmt: skip
        """Every point of ``plan``; ``on_progress(points done, plan.size(), label)`` after each."""
        done = 0

        def tick(label: str) -> None:
            nonlocal done
            done += 1
            if on_progress is not None:
                on_progress(done, plan.size(), label)

        conn = aiohttp.TCPConnector(limit=0, force_close=True)  # no keep-alive races (see loadgen)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None)) as session:
            status = await self._status(session)
            if self.mode == "steps" and status is None:
                raise ProfileError(f"{self.t.base_url} has no EcoServe plugin status (GET /ecoserve/status); "
                                   "use --source client")  # fmt: skip
            steps = status is not None and self.mode != "client"
            m = _Measures()
            if on_progress is not None:
                on_progress(0, plan.size(), "warm-up")
            await self._send(session, self.synth.text(16), 4)  # warm-up: first requests pay one-off costs
            for n in plan.prefill_lengths:
                vals = []
                for _ in range(plan.repeats):
                    vals.append(await self._prefill(session, n, steps, m))
                    tick(f"prefill {n}")
                m.prefill[n] = statistics.median(vals)
            for c in plan.context_lengths:
                for b in plan.batch_sizes:
                    m.decode[(b, c)] = await self._decode(session, b, c, plan.decode_tokens, steps, m)
                    tick(f"decode b={b} ctx={c}")
            if status is not None:
                kv = int(status["kv_blocks_total"]) * int(status["block_size"])
            else:
                kv = await self._kv_capacity_from_metrics(session)
            if not kv:
                raise ProfileError("could not read the engine's KV capacity (no plugin status, no "
                                   "vllm:cache_config_info metric); give --kv-capacity-tokens")  # fmt: skip
        return self._profile(plan, m, kv, "steps" if steps else "client")

    def _profile(self, plan: ProfilePlan, m: _Measures, kv: int, source: str) -> EngineProfile:
        meta = {
            "model": self.t.model,
            "hardware": f"engine at {self.t.base_url}",
            "source": source,
            "notes": ("step times are the engine's own StepRecords (GET /ecoserve/status)" if source == "steps"
                      else "step times measured from the client: prefill = TTFT of a lone 1-token request, "
                           "decode = median gap between streamed tokens of a batch decoding together"),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "repeats": plan.repeats,
        }  # fmt: skip
        if m.ttft_overhead:
            meta["overheads"] = {"ttft_s": round(statistics.median(m.ttft_overhead), 6)}
        if m.step_gaps:
            meta.setdefault("overheads", {})["step_gap_s"] = round(statistics.median(m.step_gaps), 6)
        return EngineProfile(
            prefill=sorted(m.prefill.items()),
            batch_sizes=list(plan.batch_sizes),
            context_lengths=list(plan.context_lengths),
            decode_seconds=[[m.decode[(b, c)] for c in plan.context_lengths] for b in plan.batch_sizes],
            kv_capacity_tokens=kv,
            max_context=self.t.max_model_len,
            meta=meta,
        )


def measure_profile(target: Target, synth: PromptSynthesizer, plan: ProfilePlan, *, mode: str = "auto",
                    on_progress: Callable[[int, int | None, str], None] | None = None) -> EngineProfile:  # fmt: skip
    return asyncio.run(Profiler(target, synth, mode=mode).measure(plan, on_progress))


def kv_bytes_per_token(model_dir: str | Path, dtype_bytes: int = 2) -> int | None:
    """K and V of every layer for one token, from a Hugging Face config.json
    (what a KV transfer moves; the simulator's FuDG baselines need it)."""
    cfg_path = Path(model_dir).expanduser() / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        c = json.loads(cfg_path.read_text())
        heads = int(c["num_attention_heads"])
        head_dim = int(c.get("head_dim") or int(c["hidden_size"]) // heads)
        kv_heads = int(c.get("num_key_value_heads") or heads)
        return 2 * int(c["num_hidden_layers"]) * kv_heads * head_dim * dtype_bytes
    except (KeyError, TypeError, ValueError):
        return None


def parse_ints(text: str | None, name: str) -> Sequence[int] | None:
    if text is None:
        return None
    try:
        vals = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"{name}: comma-separated integers expected, got {text!r}") from None
    if not vals or vals[0] < 1:
        raise ValueError(f"{name}: positive integers expected")
    return vals
