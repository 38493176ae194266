"""Admitting one validated OpenAI request: what the policy needs to know of it
and what the engine will be sent.

The body has passed ``ecoserve.openai.validation`` already (the front door and
the Python API both run it), so nothing here re-checks field types or ranges.
What only the coordinator can check is checked here: the model name (404: one
of the served names, ``--served-model-name``, or else the engines' own), the
prompt and completion against the model's context (400), and the pending
queue's bound (429, again after counting: requests arriving together all
passed the first check while they were being counted).

The engine is always asked to stream with usage in every chunk, so progress is
known token by token; what the client asked for is kept to reshape the chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from ecoserve.live.tokenizer import Tokens
from ecoserve.openai.errors import RequestError
from ecoserve.openai.validation import CHAT, COMPLETIONS

_enc = msgspec.json.Encoder()


class TokenCounter(Protocol):
    async def tokenize(self, kind: str, body: dict[str, Any]) -> Tokens:
        """Prompt tokens of each prompt of the request (and a single prompt's ids)."""


@dataclass(frozen=True, slots=True)
class Admitted:
    upstream_body: bytes  # what the engine is sent
    prompt_tokens: int  # all prompts together
    max_tokens: int  # output tokens the request may produce, all choices and prompts together
    keep_usage: bool  # the client gets usage chunks
    keep_continuous: bool  # ... in every chunk
    prompt_ids: Sequence[int] | None = None  # a single prompt's token ids, when known


def served_names(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``--served-model-name``'s value as a tuple (empty: the engines' own name)."""
    names = (value,) if isinstance(value, str) else tuple(value or ())
    if any(not isinstance(n, str) or not n for n in names):
        raise ValueError(f"served model names must be non-empty strings, got {names!r}")
    return tuple(dict.fromkeys(names))  # the first is the one replies report


class Admission:
    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending

    def check_queue(self, waiting: int) -> None:
        if waiting >= self.max_pending:
            raise RequestError(429, f"too many requests waiting ({self.max_pending}); retry later")

    async def admit(self, kind: str, body: dict[str, Any], counter: TokenCounter, *, model: str, max_model_len: int,
                    waiting: Callable[[], int], names: Collection[str] = ()) -> Admitted:  # fmt: skip
        """``model``: the engines' name, sent upstream; ``names``: those a request
        may ask for (default: ``model`` alone)."""
        if kind not in (COMPLETIONS, CHAT):
            raise ValueError(f"kind must be {COMPLETIONS!r} or {CHAT!r}")
        body = dict(body)
        asked = body.get("model")
        if asked is not None and asked not in (names or (model,)):
            raise RequestError(404, f"The model `{asked}` does not exist.", param="model")
        body["model"] = model
        self.check_queue(waiting())
        tokens = await counter.tokenize(kind, body)
        counts = tokens.counts
        self.check_queue(waiting())
        longest = max(counts, default=0)
        max_tokens = body.get("max_completion_tokens") if kind == CHAT else None
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
        if max_tokens is None:
            max_tokens = 16 if kind == COMPLETIONS else max(1, max_model_len - longest)  # vLLM's defaults
        _check_context(kind, longest, max_tokens, max_model_len)
        stream = bool(body.get("stream"))
        opts = body.get("stream_options") or {}
        keep_usage = not stream or bool(opts.get("include_usage"))  # a reply is built from the usage
        keep_continuous = not stream or (keep_usage and bool(opts.get("continuous_usage_stats")))
        body["stream"] = True
        body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
        n_prompts = max(1, len(counts)) if kind == COMPLETIONS else 1
        return Admitted(_enc.encode(body), sum(counts), max_tokens * int(body.get("n") or 1) * n_prompts,
                        keep_usage, keep_continuous, tokens.ids)  # fmt: skip


def _check_context(kind: str, longest: int, max_tokens: int, max_model_len: int) -> None:
    if not max_model_len:
        return
    if longest >= max_model_len:
        raise RequestError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, your prompt has "
            f"{longest} tokens, which leaves no room for a completion. Please shorten the prompt.",
            param="prompt" if kind == COMPLETIONS else "messages",
        )
    if longest + max_tokens > max_model_len:
        raise RequestError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{longest + max_tokens} tokens ({longest} in the prompt, {max_tokens} in the completion). "
            "Please reduce the length of the prompt or the completion.",
            param="max_tokens",
        )
