"""Prompt tokens for the policy: their counts (TTFT prediction and KV
reservation) and, for a single prompt, their ids (its prefix-cache block
hashes: ``live/prefixes.py``).

- ``LocalTokenizer``: the model's own tokenizer, loaded from its directory
  (launch mode, or ``--tokenizer`` in attach mode): no round trip per request.
- ``EngineTokenizer``: the engine's ``/tokenize`` route (attach mode), the
  same count the engine will compute, at the price of one local round trip.
Either falls back to a character estimate (4 characters a token) when the
prompt cannot be tokenized (e.g. a chat template that rejects it): the
engine will then refuse the request itself and the client gets its error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ecoserve.engine.handle import EngineHandle, EngineUnreachable, UpstreamHTTPError
from ecoserve.openai.prompts import estimate, prompts_of

log = logging.getLogger("ecoserve.engine")

# Prompts longer than this are tokenized on a worker thread, not on the loop.
INLINE_CHARS = 4096


@dataclass(frozen=True, slots=True)
class Tokens:
    counts: list[int]  # tokens of each prompt
    ids: Sequence[int] | None = None  # the token ids, when the request has one prompt and they are known


def _estimated(kind: str, body: dict[str, Any]) -> Tokens:
    return Tokens(estimate(kind, body))


class LocalTokenizer:
    def __init__(self, path: str) -> None:
        self.path = path
        self._tok: Any = None

    def load(self) -> None:
        """Blocking (a second or two: imports transformers); call once at start."""
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(self.path)

    def _tokenize_sync(self, kind: str, body: dict[str, Any]) -> Tokens:
        tok = self._tok
        if kind == "chat":
            out = tok.apply_chat_template(
                body.get("messages") or [],
                add_generation_prompt=body.get("add_generation_prompt", True),
                tokenize=True,
            )
            ids = list(out["input_ids"] if hasattr(out, "keys") else out)
            return Tokens([len(ids)], ids)
        all_ids = [p if isinstance(p, list) else tok(p, add_special_tokens=True)["input_ids"] for p in prompts_of(body)]
        return Tokens([len(i) for i in all_ids], all_ids[0] if len(all_ids) == 1 else None)

    async def tokenize(self, kind: str, body: dict[str, Any]) -> Tokens:
        try:
            size = (
                sum(len(p) for p in prompts_of(body) if isinstance(p, str))
                if kind != "chat"
                else len(str(body.get("messages")))
            )
            if size <= INLINE_CHARS:
                return self._tokenize_sync(kind, body)
            return await asyncio.to_thread(self._tokenize_sync, kind, body)
        except Exception as e:  # a template or input it cannot handle: the engine will say
            log.debug("local tokenizer failed (%s); estimating", e)
            return _estimated(kind, body)


class EngineTokenizer:
    def __init__(self, handle: EngineHandle, model: str) -> None:
        self._handle = handle
        self._model = model

    async def tokenize(self, kind: str, body: dict[str, Any]) -> Tokens:
        try:
            if kind == "chat":
                req = {"model": self._model, "messages": body.get("messages") or [], "add_generation_prompt": True}
                ids = await self._handle.tokenize(req)
                return Tokens([len(ids)], ids)
            all_ids = []
            for p in prompts_of(body):
                all_ids.append(p if isinstance(p, list) else await self._handle.tokenize({"model": self._model, "prompt": p}))
            return Tokens([len(i) for i in all_ids], all_ids[0] if len(all_ids) == 1 else None)
        except (EngineUnreachable, UpstreamHTTPError, TypeError, ValueError) as e:
            log.debug("engine /tokenize failed (%s); estimating", e)
            return _estimated(kind, body)
