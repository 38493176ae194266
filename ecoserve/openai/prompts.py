"""The prompts of an OpenAI request body, and a token estimate when they
cannot be tokenized (4 characters a token)."""

from __future__ import annotations

from typing import Any


def estimate(kind: str, body: dict[str, Any]) -> list[int]:
    if kind == "chat":
        chars = sum(len(str(m.get("content") or "")) + 8 for m in body.get("messages") or [])
        return [max(1, chars // 4)]
    return [len(p) if isinstance(p, list) else max(1, len(p) // 4) for p in prompts_of(body)]


def prompts_of(body: dict[str, Any]) -> list[str | list[int]]:
    """A completion request's prompts: text, token ids, or a list of either."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list):
        if not prompt:
            return []
        if all(isinstance(t, int) for t in prompt):
            return [prompt]
        return list(prompt)
    return []
