"""Open-loop load: every request is sent at its arrival time, whether or not
earlier ones have finished (a closed loop would hide overload by slowing
down). Arrival times come from ``ecoserve.workload`` (Poisson/Gamma or a
replayed trace); results become ``ecoserve.metrics.RequestRecord`` on one
clock whose zero is the start of the run.

TTFT counts from the *scheduled* arrival, so a client that fell behind
cannot flatter the server; how far it fell behind is reported (``send_lag``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

from ecoserve.bench.client import Outcome, completion_body, stream_completion
from ecoserve.metrics import RequestRecord
from ecoserve.workload.workload import Request


@dataclass
class LoadResult:
    records: list[RequestRecord]
    outcomes: list[Outcome]
    duration_s: float  # first send to last finish
    max_send_lag_s: float  # worst lateness of a send against its schedule
    errors: dict[str, int] = field(default_factory=dict)  # kind -> count
    first_error: str = ""
    length_mismatches: int = 0  # finished, but usage counts differ from what was asked

    def stats(self) -> dict:
        failed = sum(self.errors.values())
        return {
            "failed": failed,
            "errors": dict(self.errors),
            "first_error": self.first_error,
            "length_mismatches": self.length_mismatches,
            "duration_s": round(self.duration_s, 3),
            "max_send_lag_s": round(self.max_send_lag_s, 4),
        }


async def run_load(
    base_url: str,
    model: str,
    requests: Sequence[Request],
    prompts: Sequence[str | list[int]],
    *,
    api_key: str | None = None,
    timeout: float = 600.0,
    on_done: Callable[[Outcome], None] | None = None,
    extra_body: dict | None = None,
    on_sent: Callable[[], None] | None = None,
) -> LoadResult:
    """Send ``requests`` (with their ``prompts``) at their arrival times; wait for all.
    ``on_sent()`` hears of each request as it goes out, ``on_done(outcome)`` as it ends."""
    if len(prompts) != len(requests):
        raise ValueError("one prompt per request")
    url = base_url.rstrip("/") + "/v1/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    lags: list[float] = []
    # A fresh connection per request: a pooled one the server closed after its
    # keep-alive timeout would fail a request for reasons of the client's own.
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None)) as session:
        t0 = time.perf_counter()

        async def one(req: Request, prompt) -> Outcome:
            delay = t0 + req.arrival - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lags.append(time.perf_counter() - (t0 + req.arrival))
            if on_sent is not None:
                on_sent()
            body = completion_body(model, prompt, req.output_tokens, extra=extra_body)
            out = await stream_completion(session, url, body, headers=headers, timeout=timeout)
            if on_done is not None:
                on_done(out)
            return out

        outcomes = await asyncio.gather(*(one(r, p) for r, p in zip(requests, prompts)))
    end = max((o.finish for o in outcomes if o.finish is not None), default=time.perf_counter())
    return _score(requests, outcomes, t0, end, max(lags, default=0.0))


def _score(requests: Sequence[Request], outcomes: Sequence[Outcome], t0: float, end: float, lag: float) -> LoadResult:
    records, errors, first_error, mismatches = [], Counter(), "", 0
    for req, o in zip(requests, outcomes):
        ok = o.error is None
        if ok and (o.completion_tokens not in (None, req.output_tokens)
                   or o.prompt_tokens not in (None, req.prompt_tokens)):
            mismatches += 1
        if not ok:
            errors[o.error] += 1
            first_error = first_error or f"{req.id}: {o.error} {o.detail}".strip()
        records.append(RequestRecord(
            arrival=req.arrival,
            prompt_tokens=req.prompt_tokens,
            output_tokens=o.completion_tokens or req.output_tokens,
            first_token=None if not ok or o.first_token is None else o.first_token - t0,
            finish=None if not ok or o.finish is None else o.finish - t0,
            id=req.id,
        ))  # fmt: skip
    return LoadResult(records, list(outcomes), end - t0, lag, dict(errors), first_error, mismatches)
