"""One streamed completion, timed from the client's side.

TTFT is taken at the first chunk that carries a choice, the finish at the
chunk with a ``finish_reason``. The output is forced (``ignore_eos`` and
``max_tokens``) and the server's usage counts (``stream_options``) are kept,
so the caller can check every request produced exactly the tokens asked for.
Any failure (HTTP status, broken stream, timeout, missing finish) becomes an
``Outcome`` with ``error`` set: nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import aiohttp


@dataclass
class Outcome:
    sent: float  # perf_counter when the request was sent
    first_token: float | None = None  # perf_counter of the first chunk with a choice
    finish: float | None = None  # perf_counter of the chunk with a finish_reason
    chunks: int = 0  # chunks that carried a choice
    prompt_tokens: int | None = None  # the server's usage counts
    completion_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None  # short kind of failure: "http 503", "timeout", ...
    detail: str = ""
    token_times: list[float] | None = None  # perf_counter of every choice chunk, if asked for


def completion_body(model: str, prompt, max_tokens: int, *, extra: dict | None = None) -> dict:
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "min_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **(extra or {}),
    }


async def stream_completion(
    session: aiohttp.ClientSession,
    url: str,
    body: dict,
    *,
    headers: dict | None = None,
    timeout: float = 600.0,
    keep_times: bool = False,
) -> Outcome:
    """POST ``body`` to ``url`` (a /v1/completions endpoint) and time its stream."""
    out = Outcome(sent=time.perf_counter(), token_times=[] if keep_times else None)
    try:
        async with asyncio.timeout(timeout):
            async with session.post(url, json=body, headers=headers) as resp:
                if resp.status != 200:
                    out.error = f"http {resp.status}"
                    out.detail = (await resp.text())[:300]
                    return out
                buf = b""
                async for data in resp.content.iter_any():
                    now = time.perf_counter()
                    buf += data
                    while b"\n\n" in buf:
                        event, buf = buf.split(b"\n\n", 1)
                        _take(out, event, now)
    except TimeoutError:
        out.error, out.detail = "timeout", f"no finish within {timeout:g} s"
    except (aiohttp.ClientError, OSError) as e:
        out.error, out.detail = "connection", f"{type(e).__name__}: {e}"[:300]
    except ValueError as e:  # a malformed event
        out.error, out.detail = "bad stream", str(e)[:300]
    if out.error is None and out.finish is None:
        out.error, out.detail = "no finish", f"stream ended after {out.chunks} chunks without a finish_reason"
    return out


def _take(out: Outcome, event: bytes, now: float) -> None:
    for line in event.split(b"\n"):
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            continue
        msg = json.loads(payload)
        if "error" in msg and not msg.get("choices"):
            raise ValueError(f"error in stream: {str(msg['error'])[:200]}")
        usage = msg.get("usage")
        if usage:
            out.prompt_tokens = usage.get("prompt_tokens")
            out.completion_tokens = usage.get("completion_tokens")
        for choice in msg.get("choices") or ():
            out.chunks += 1
            if out.token_times is not None:
                out.token_times.append(now)
            if out.first_token is None:
                out.first_token = now
            if choice.get("finish_reason"):
                out.finish = now
                out.finish_reason = choice["finish_reason"]
