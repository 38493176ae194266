"""What prefix of a prompt an instance already holds: an LRU set of block hashes.

Rule: pure and bounded. A prompt is a tuple of block hashes (``block_tokens``
tokens each; equal hashes, equal prefixes, as in vLLM's prefix cache and
Mooncake's traces). ``cached_tokens`` is the longest leading run of the
prompt's blocks present, in tokens, never the whole prompt (the last token is
always computed: it yields the first output token). ``insert`` records blocks
as most recently used and evicts the least recently used beyond ``capacity``.

The policy keeps one per instance as its estimate of the engine's cache (the
blocks it sent there; the engine may have evicted sooner or later), and the
simulator uses the same structure as each simulated engine's real cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class PrefixIndex:
    __slots__ = ("capacity", "block_tokens", "_blocks")

    def __init__(self, capacity_blocks: int, block_tokens: int = 512) -> None:
        if capacity_blocks < 1 or block_tokens < 1:
            raise ValueError("a prefix index needs capacity_blocks >= 1 and block_tokens >= 1")
        self.capacity = capacity_blocks
        self.block_tokens = block_tokens
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block: int) -> bool:
        return block in self._blocks

    def matched_blocks(self, blocks: Sequence[int]) -> int:
        """How many of ``blocks``, from the first, are held (a read: no LRU touch)."""
        held = self._blocks
        n = 0
        for b in blocks:
            if b not in held:
                break
            n += 1
        return n

    def cached_tokens(self, blocks: Sequence[int], prompt_tokens: int) -> int:
        """Prompt tokens that need no prefill here: whole held blocks from the
        start, at most ``prompt_tokens - 1``."""
        if not blocks or prompt_tokens <= 1:
            return 0
        return min(self.matched_blocks(blocks) * self.block_tokens, prompt_tokens - 1)

    def insert(self, blocks: Sequence[int]) -> None:
        """The engine computed (or reused) these blocks: most recently used now."""
        held = self._blocks
        for b in blocks:
            if b in held:
                held.move_to_end(b)
            else:
                held[b] = None
        while len(held) > self.capacity:
            held.popitem(last=False)

    def clear(self) -> None:
        self._blocks.clear()
