"""What prefix of a prompt an instance already holds: an LRU set of block hashes.

Rule: pure and bounded. A prompt is a tuple of block hashes (``block_tokens``
tokens each; equal hashes, equal prefixes, as in vLLM's prefix cache and
Mooncake's traces). ``cached_tokens`` is the longest leading run of the
prompt's blocks present, in tokens, never the whole prompt (the last token is
always computed: it yields the first output token). ``insert`` records blocks
as most recently used and evicts the least recently used beyond ``capacity``;
``remove`` and ``clear`` follow the engine's own evictions where it reports
them (vLLM's KV-cache events: ``live/prefixes.py``).

The policy keeps one per instance as its estimate of the engine's cache (the
blocks it sent there; the engine may have evicted sooner or later), all sharing
one ``PrefixDirectory`` (block -> instances), and the simulator uses the same
structure as each simulated engine's real cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container, Sequence


def leading_run(blocks: Sequence[int], held: Container[int]) -> int:
    """How many of ``blocks``, from the first, are in ``held``: the prefix a cache
    (or a pool of shared blocks) holds, since a hole ends it."""
    n = 0
    for b in blocks:
        if b not in held:
            break
        n += 1
    return n


class PrefixIndex:
    __slots__ = ("capacity", "block_tokens", "_blocks", "directory", "owner")

    def __init__(self, capacity_blocks: int, block_tokens: int = 512, *,
                 directory: PrefixDirectory | None = None, owner: str = "") -> None:  # fmt: skip
        """``directory``: a ``PrefixDirectory`` shared by every instance's index,
        kept in step with this one (``owner``: the instance's id), so a router
        can ask which instances hold a prompt without visiting each."""
        if capacity_blocks < 1 or block_tokens < 1:
            raise ValueError("a prefix index needs capacity_blocks >= 1 and block_tokens >= 1")
        self.capacity = capacity_blocks
        self.block_tokens = block_tokens
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self.directory = directory
        self.owner = owner

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block: int) -> bool:
        return block in self._blocks

    def matched_blocks(self, blocks: Sequence[int]) -> int:
        """How many of ``blocks``, from the first, are held (a read: no LRU touch)."""
        return leading_run(blocks, self._blocks)

    def cached_tokens(self, blocks: Sequence[int], prompt_tokens: int) -> int:
        """Prompt tokens that need no prefill here: whole held blocks from the
        start, at most ``prompt_tokens - 1``."""
        return self.tokens_of(self.matched_blocks(blocks) if blocks else 0, prompt_tokens)

    def tokens_of(self, matched_blocks: int, prompt_tokens: int) -> int:
        if prompt_tokens <= 1:
            return 0
        return min(matched_blocks * self.block_tokens, prompt_tokens - 1)

    def insert(self, blocks: Sequence[int]) -> None:
        """The engine computed (or reused) these blocks: most recently used now."""
        held = self._blocks
        new = []
        for b in blocks:
            if b in held:
                held.move_to_end(b)
            else:
                held[b] = None
                new.append(b)
        d = self.directory
        if new and d is not None:
            d.add_all(new, self.owner)
        over = len(held) - self.capacity
        if over > 0:
            gone = [held.popitem(last=False)[0] for _ in range(over)]
            if d is not None:
                d.discard_all(gone, self.owner)

    def remove(self, blocks: Sequence[int]) -> None:
        """The engine evicted these blocks (its KV-cache events say so)."""
        held = self._blocks
        d = self.directory
        for b in blocks:
            if b in held:
                del held[b]
                if d is not None:
                    d.discard(b, self.owner)

    def clear(self) -> None:
        if self.directory is not None:
            for b in self._blocks:
                self.directory.discard(b, self.owner)
        self._blocks.clear()


class PrefixDirectory:
    """Which instances hold each block, for every index that shares it: a
    prompt's holders are found in O(its blocks x their holders), not by
    visiting every instance (64 instances: ~1 us for a miss instead of ~30)."""

    __slots__ = ("_holders", "_version", "_memo")

    def __init__(self) -> None:
        self._holders: dict[int, set[str]] = {}
        self._version = 0  # bumped by every change: a memoised answer is for one state
        self._memo: tuple[object, int, dict[str, int]] | None = None

    def add(self, block: int, owner: str) -> None:
        self.add_all((block,), owner)

    def add_all(self, blocks: Sequence[int], owner: str) -> None:
        holders = self._holders
        for b in blocks:
            h = holders.get(b)
            if h is None:
                holders[b] = {owner}
            else:
                h.add(owner)
        self._version += 1

    def discard(self, block: int, owner: str) -> None:
        self.discard_all((block,), owner)

    def discard_all(self, blocks: Sequence[int], owner: str) -> None:
        holders = self._holders
        for b in blocks:
            h = holders.get(b)
            if h is not None:
                h.discard(owner)
                if not h:
                    del holders[b]
        self._version += 1

    def matches(self, blocks: Sequence[int]) -> dict[str, int]:
        """Owner -> how many of ``blocks``, from the first, it holds (only owners
        holding the first). One routing decision asks several times (each macro
        instance, the overall scheduler) for the same prompt: the last answer is
        kept while nothing changed. Callers must not modify what it returns."""
        memo = self._memo
        if memo is not None and memo[0] is blocks and memo[1] == self._version:
            return memo[2]
        out = self._matches(blocks)
        self._memo = (blocks, self._version, out)
        return out

    def _matches(self, blocks: Sequence[int]) -> dict[str, int]:
        if not blocks:
            return {}
        holders = self._holders
        alive = holders.get(blocks[0])
        if not alive:
            return {}
        out: dict[str, int] = {}
        alive = set(alive)
        k = 1
        for b in blocks[1:]:
            h = holders.get(b)
            nxt = alive & h if h else set()
            for o in alive - nxt:
                out[o] = k
            alive, k = nxt, k + 1
            if not alive:
                break
        for o in alive:
            out[o] = k
        return out
