"""Prompt token counts for the policy (TTFT prediction and KV reservation).

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
from typing import Any

from ecoserve.engine.handle import EngineHandle, EngineUnreachable, UpstreamHTTPError
from ecoserve.openai.prompts import estimate, prompts_of

log = logging.getLogger("ecoserve.engine")

# Prompts longer than this are tokenized on a worker thread, not on the loop.
INLINE_CHARS = 4096


class LocalTokenizer:
    def __init__(self, path: str) -> None:
        self.path = path
        self._tok: Any = None

    def load(self) -> None:
        """Blocking (a second or two: imports transformers); call once at start."""
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(self.path)

    def _count_sync(self, kind: str, body: dict[str, Any]) -> list[int]:
        tok = self._tok
        if kind == "chat":
            out = tok.apply_chat_template(
                body.get("messages") or [],
                add_generation_prompt=body.get("add_generation_prompt", True),
                tokenize=True,
            )
            ids = out["input_ids"] if hasattr(out, "keys") else out
            return [len(ids)]
        counts = []
        for p in prompts_of(body):
            counts.append(len(p) if isinstance(p, list) else len(tok(p, add_special_tokens=True)["input_ids"]))
        return counts

    async def count(self, kind: str, body: dict[str, Any]) -> list[int]:
        try:
            size = (
                sum(len(p) for p in prompts_of(body) if isinstance(p, str))
                if kind != "chat"
                else len(str(body.get("messages")))
            )
            if size <= INLINE_CHARS:
                return self._count_sync(kind, body)
            return await asyncio.to_thread(self._count_sync, kind, body)
        except Exception as e:  # a template or input it cannot handle: the engine will say
            log.debug("local tokenizer failed (%s); estimating", e)
            return estimate(kind, body)


class EngineTokenizer:
    def __init__(self, handle: EngineHandle, model: str) -> None:
        self._handle = handle
        self._model = model

    async def count(self, kind: str, body: dict[str, Any]) -> list[int]:
        try:
            if kind == "chat":
                req = {"model": self._model, "messages": body.get("messages") or [], "add_generation_prompt": True}
                return [await self._handle.tokenize(req)]
            counts = []
            for p in prompts_of(body):
                if isinstance(p, list):
                    counts.append(len(p))
                else:
                    counts.append(await self._handle.tokenize({"model": self._model, "prompt": p}))
            return counts
        except (EngineUnreachable, UpstreamHTTPError, TypeError, ValueError) as e:
            log.debug("engine /tokenize failed (%s); estimating", e)
            return estimate(kind, body)
