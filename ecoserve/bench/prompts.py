"""Prompts of an exact token length.

Two forms, both exact:
- ``ids``: a list of token ids (the OpenAI completions API takes one as
  ``prompt``); the server adds nothing, so the length is the list's.
- ``text``: words that are single vocabulary tokens, joined by spaces, so a
  byte-level BPE splits them back into exactly those tokens; the count is
  checked by a round trip through the model's own tokenizer (special tokens it
  adds, such as BOS, included, as the server counts them) and corrected.

Every prompt starts with different random words, so the engine's prefix cache
cannot shorten a prefill the benchmark meant to pay for, unless the request
carries block hashes (``blocks``: Mooncake's ``hash_ids``, the chat
generator's chained hashes; ``BLOCK_TOKENS`` tokens each): then each block is
the same ``BLOCK_TOKENS`` tokens wherever its hash recurs, so prompts sharing
leading blocks share that prefix for real, and only the part after the last
full block is fresh. The words come from a fresh salt unless ``salt`` is
given: a rerun against the same server (whose cache still holds the last
run's prompts) gets new prompts, shared blocks included.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

from ecoserve.workload.traces import BLOCK_TOKENS

MAX_FIX_ROUNDS = 8


class PromptSynthesizer:
    def __init__(self, tokenizer, *, seed: int = 0, salt: str | None = None) -> None:
        self.tok = tokenizer
        self.salt = f"{seed}:prompts:{os.urandom(8).hex() if salt is None else salt}"
        self.rng = random.Random(self.salt)
        self._blocks: dict[tuple[int, str], list[int] | list[str]] = {}  # a block's tokens (ids) or words (text)
        self.special = len(tokenizer("a", add_special_tokens=True)["input_ids"]) - len(
            tokenizer("a", add_special_tokens=False)["input_ids"]
        )
        self.words = self._single_token_words()
        special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
        self.ids = [i for i in range(len(tokenizer)) if i not in special_ids]
        if not self.words:
            raise ValueError("tokenizer has no single-token words to build text prompts from (use prompt ids)")

    @classmethod
    def from_path(cls, path: str | Path, *, seed: int = 0, salt: str | None = None) -> PromptSynthesizer:
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(str(path)), seed=seed, salt=salt)

    def _single_token_words(self) -> list[str]:
        """Alphabetic vocabulary entries that encode, after a space, to themselves alone."""
        out = []
        for piece in self.tok.convert_ids_to_tokens(list(range(len(self.tok)))):
            word = self.tok.convert_tokens_to_string([piece]).strip()
            if not word.isascii() or not word.isalpha():
                continue
            if len(self.tok(" " + word, add_special_tokens=False)["input_ids"]) == 1:
                out.append(word)
        return sorted(set(out))

    def count(self, text: str) -> int:
        """Tokens the server will count for this prompt (special tokens included)."""
        return len(self.tok(text, add_special_tokens=True)["input_ids"])

    def _block(self, h: int, form: str) -> list:
        """Block ``h``'s ``BLOCK_TOKENS`` tokens (ids) or single-token words (text), the same every time."""
        key = (h, form)
        got = self._blocks.get(key)
        if got is None:
            rng = random.Random(f"{self.salt}:block:{h}")
            pool = self.ids if form == "ids" else self.words
            got = self._blocks[key] = [rng.choice(pool) for _ in range(BLOCK_TOKENS)]
        return got

    def _shared(self, blocks: Sequence[int], form: str, room: int) -> list:
        """The leading blocks' tokens or words that fit in ``room`` tokens."""
        out: list = []
        for h in blocks[: max(0, room) // BLOCK_TOKENS]:
            out += self._block(h, form)
        return out

    def text(self, n: int, blocks: Sequence[int] = ()) -> str:
        """A prompt of exactly ``n`` tokens as the server counts them."""
        if n < self.special + 1:
            raise ValueError(f"a text prompt needs at least {self.special + 1} tokens with this tokenizer, got {n}")
        head = self._shared(blocks, "text", n - self.special - 1)  # the last token is always fresh
        words = head + [self.rng.choice(self.words) for _ in range(n - self.special - len(head))]
        for _ in range(MAX_FIX_ROUNDS):
            text = " " + " ".join(words)
            got = self.count(text)
            if got == n:
                return text
            if got > n:
                del words[max(len(head), len(words) - (got - n)):]
            else:
                words += [self.rng.choice(self.words) for _ in range(n - got)]
        raise ValueError(f"could not build a text prompt of exactly {n} tokens (last try: {got})")

    def token_ids(self, n: int, blocks: Sequence[int] = ()) -> list[int]:
        if n < 1:
            raise ValueError("a prompt needs at least one token")
        head = self._shared(blocks, "ids", n - 1)
        return head + [self.rng.choice(self.ids) for _ in range(n - len(head))]

    def make(self, n: int, form: str = "text", blocks: Sequence[int] = ()) -> str | list[int]:
        """A prompt of ``n`` tokens; with ``blocks``, its leading full blocks are theirs."""
        if form == "text":
            return self.text(n, blocks)
        if form == "ids":
            return self.token_ids(n, blocks)
        raise ValueError(f"prompt form must be text or ids, got {form!r}")
