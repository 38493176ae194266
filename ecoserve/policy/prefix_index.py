"""What prefix of a prompt each instance holds: one radix tree of block hashes,
shared by every instance's index, each node marked with the instances holding it.

Rule: pure and bounded. A prompt is a tuple of block hashes (``block_tokens``
tokens each), chained as vLLM's prefix cache and Mooncake's traces chain them:
a hash names its block and everything before it, so a prompt's cached prefix
is a path from the root, and a hole (a block missing) ends it. A node is a run
of blocks stored together, held as a whole by the instances in its ``mask``.

- ``PrefixIndex`` is one instance's view (its LRU and capacity); the policy
  keeps one per instance as its estimate of the engine's cache, and the
  simulator uses one as each simulated engine's real cache.
- ``PrefixDirectory`` is the tree: a prompt's holders, and how much of it each
  holds, in one walk of the prompt's path (one tuple comparison per node), not
  one lookup per block and instance (issue 15's routing-cost target).

``cached_tokens`` is never the whole prompt: its last token is always computed
(it yields the first output token). ``insert`` records blocks as most recently
used, the prompt's tail first, so eviction takes a prompt's tail before its
head, as vLLM frees a request's blocks in reverse order; it evicts exactly the
blocks over ``capacity``, splitting a node where needed. ``remove`` and
``clear`` follow the engine's own evictions where it reports them (vLLM's
KV-cache events: ``live/prefixes.py``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container, Sequence
from operator import eq


def leading_run(blocks: Sequence[int], held: Container[int]) -> int:
    """How many of ``blocks``, from the first, are in ``held``: the prefix a
    pool of shared blocks holds, since a hole ends it."""
    n = 0
    for b in blocks:
        if b not in held:
            break
        n += 1
    return n


class _Node:
    """A run of blocks; ``mask``: bit k set if index k holds all of them."""

    __slots__ = ("key", "parent", "children", "mask")

    def __init__(self, key: tuple[int, ...], parent: _Node | None, mask: int = 0) -> None:
        self.key = key
        self.parent = parent
        self.children: dict[int, _Node] = {}  # by first block
        self.mask = mask


def _common(blocks: Sequence[int], i: int, key: tuple[int, ...]) -> int:
    """How many of ``key`` equal ``blocks[i:]``, from the first (which does).
    Called only where they differ or ``blocks`` ends inside ``key``, so a
    mismatch, or the end of ``blocks``, comes first: the comparison runs in C
    (``map``), not in a Python loop (a third of a decision's index work)."""
    same = list(map(eq, key, blocks[i : i + len(key)]))
    return same.index(False) if False in same else len(same)


class PrefixDirectory:
    """The shared tree: which instances hold each prefix. Indexes join it
    (``PrefixIndex(directory=...)``); ``matches`` answers for all of them."""

    __slots__ = ("_root", "_where", "_indexes", "_version", "_memo")

    def __init__(self) -> None:
        self._root = _Node((), None)
        # block -> its node, for KV events (they name single blocks): built on
        # the first such need, then kept; routing alone never pays for it.
        self._where: dict[int, _Node] | None = None
        self._indexes: list[PrefixIndex] = []  # by bit
        self._version = 0  # bumped by every change: a memoised answer is for one state
        self._memo: tuple[object, int, dict[str, int]] | None = None

    def _block_map(self) -> dict[int, _Node]:
        if self._where is None:
            where: dict[int, _Node] = {}
            todo = list(self._root.children.values())
            while todo:
                node = todo.pop()
                where.update(dict.fromkeys(node.key, node))
                todo += node.children.values()
            self._where = where
        return self._where

    def _join(self, index: PrefixIndex) -> int:
        self._indexes.append(index)
        return 1 << (len(self._indexes) - 1)

    def matches(self, blocks: Sequence[int]) -> dict[str, int]:
        """Owner -> how many of ``blocks``, from the first, it holds (only owners
        holding the first). One routing decision asks several times (each macro
        instance, the overall scheduler, each candidate's check) for the same
        prompt: the last answer is kept while nothing changed. Callers must not
        modify what it returns."""
        memo = self._memo
        if memo is not None and memo[0] is blocks and memo[1] == self._version:
            return memo[2]
        out = self._matches(blocks)
        self._memo = (blocks, self._version, out)
        return out

    def _matches(self, blocks: Sequence[int]) -> dict[str, int]:
        if type(blocks) is not tuple:
            blocks = tuple(blocks)  # runs are compared as tuples
        out: dict[str, int] = {}
        n, i, node, alive = len(blocks), 0, self._root, -1  # -1: every owner, before the first node
        while i < n:
            child = node.children.get(blocks[i])
            if child is None:
                break
            key = child.key
            here = child.mask & alive
            if alive != -1:
                self._record(out, alive & ~here, i)
            size = len(key)
            if blocks[i : i + size] != key:  # the prompt leaves (or ends inside) this run
                self._record(out, here, i + _common(blocks, i, key))
                return out
            alive, i, node = here, i + size, child
            if not alive:
                return out
        if alive != -1:
            self._record(out, alive, i)
        return out

    def _record(self, out: dict[str, int], bits: int, count: int) -> None:
        indexes = self._indexes
        while bits:
            low = bits & -bits
            bits ^= low
            out[indexes[low.bit_length() - 1].owner] = count

    # -- changes (through PrefixIndex) --------------------------------------------------

    def _owners(self, mask: int):
        indexes = self._indexes
        while mask:
            low = mask & -mask
            yield indexes[low.bit_length() - 1]
            mask ^= low

    def _split(self, node: _Node, j: int, skip: int = 0) -> _Node:
        """Cut ``node`` after its first ``j`` blocks: a new node (returned) takes
        them, between ``node`` and its parent, held by the same owners; ``node``
        keeps the rest, its children and its place in every owner's LRU. The
        new node is a prefix of it: it goes in as their most recent, with its
        ancestors, so no owner evicts a prefix before its continuation (the
        owners in ``skip`` place it themselves)."""
        key = node.key
        head = _Node(key[:j], node.parent, node.mask)
        node.parent.children[key[0]] = head
        head.children[key[j]] = node
        node.key, node.parent = key[j:], head
        if self._where is not None:
            self._where.update(dict.fromkeys(head.key, head))
        mask, indexes = head.mask, self._indexes
        while mask:  # each owner (``_owners``, inlined: a split is most of an insert's work)
            low = mask & -mask
            mask ^= low
            index = indexes[low.bit_length() - 1]
            index._lru[head] = None
            if not low & skip:
                index._touch_ancestors(head)
        return head

    def _prune(self, node: _Node) -> None:
        """Drop nodes nobody holds and nothing hangs from, up the path."""
        where = self._where
        while node.parent is not None and not node.mask and not node.children:
            parent = node.parent
            del parent.children[node.key[0]]
            if where is not None:
                for b in node.key:
                    if where.get(b) is node:
                        del where[b]
            node.parent = None  # gone: a second prune of it stops here
            node = parent


class PrefixIndex:
    """One instance's cache in a ``PrefixDirectory``: the blocks it holds, at
    most ``capacity_blocks``, least recently used out first."""

    __slots__ = ("capacity", "block_tokens", "directory", "owner", "_tree", "_bit", "_lru", "_held")

    def __init__(self, capacity_blocks: int, block_tokens: int = 512, *,
                 directory: PrefixDirectory | None = None, owner: str = "") -> None:  # fmt: skip
        """``directory``: the tree shared by every instance's index (``owner``:
        the instance's id), so a router asks which instances hold a prompt in
        one walk; without one the index keeps a tree of its own."""
        if capacity_blocks < 1 or block_tokens < 1:
            raise ValueError("a prefix index needs capacity_blocks >= 1 and block_tokens >= 1")
        self.capacity = capacity_blocks
        self.block_tokens = block_tokens
        self.directory = directory
        self.owner = owner
        self._tree = directory if directory is not None else PrefixDirectory()
        self._bit = self._tree._join(self)
        self._lru: OrderedDict[_Node, None] = OrderedDict()  # nodes held, least recent first
        self._held = 0  # blocks held

    def __len__(self) -> int:
        return self._held

    def __contains__(self, block: int) -> bool:
        node = self._tree._block_map().get(block)
        return node is not None and bool(node.mask & self._bit)

    def matched_blocks(self, blocks: Sequence[int]) -> int:
        """How many of ``blocks``, from the first, are held (a read: no LRU touch)."""
        return self._tree.matches(blocks).get(self.owner, 0) if blocks else 0

    def cached_tokens(self, blocks: Sequence[int], prompt_tokens: int) -> int:
        """Prompt tokens that need no prefill here: whole held blocks from the
        start, at most ``prompt_tokens - 1``. (Asked at every check of a
        decision: ``tokens_of`` inlined.)"""
        if not blocks or prompt_tokens <= 1:
            return 0
        n = self._tree.matches(blocks).get(self.owner)
        return 0 if n is None else min(n * self.block_tokens, prompt_tokens - 1)

    def tokens_of(self, matched_blocks: int, prompt_tokens: int) -> int:
        if prompt_tokens <= 1:
            return 0
        return min(matched_blocks * self.block_tokens, prompt_tokens - 1)

    def insert(self, blocks: Sequence[int], parent: int | None = None) -> None:
        """The engine computed (or reused) these blocks: most recently used now.
        ``parent``: the block they continue (a KV event's ``parent_block_hash``);
        None, or a parent not held anywhere: they start a chain of their own,
        which no prompt reaches (vLLM stores a block only after its parent)."""
        if not blocks:
            return
        if type(blocks) is not tuple:
            blocks = tuple(blocks)  # runs are compared as tuples: a list never equals one (KV events send lists)
        tree, bit = self._tree, self._bit
        tree._version += 1
        node = tree._root
        ancestors = False
        if parent is not None and (at := tree._block_map().get(parent)) is not None:
            node, ancestors = at, True
            cut = at.key.index(parent) + 1
            if cut < len(at.key):
                node = tree._split(at, cut)
        path: list[_Node] = []
        i, n = 0, len(blocks)
        while i < n:
            child = node.children.get(blocks[i])
            if child is None:
                leaf = _Node(tuple(blocks[i:]), node)
                node.children[blocks[i]] = leaf
                if tree._where is not None:
                    tree._where.update(dict.fromkeys(leaf.key, leaf))
                path.append(leaf)
                break
            key, size = child.key, len(child.key)
            if blocks[i : i + size] != key:  # diverges, or ends, inside the run: only its head is used
                size = _common(blocks, i, key)
                child = tree._split(child, size)
            path.append(child)
            i, node = i + size, child
        lru = self._lru
        for nd in reversed(path):  # the tail first: it is evicted first
            if nd.mask & bit:
                lru.move_to_end(nd)
            else:
                nd.mask |= bit
                lru[nd] = None
                self._held += len(nd.key)
        if ancestors:
            self._touch_ancestors(path[0].parent)
        self._evict()

    def _touch_ancestors(self, node: _Node | None) -> None:
        lru, bit = self._lru, self._bit
        while node is not None and (parent := node.parent) is not None:
            if node.mask & bit:
                lru.move_to_end(node)
            node = parent

    def _evict(self) -> None:
        over = self._held - self.capacity
        if over <= 0:
            return
        tree, lru, bit = self._tree, self._lru, self._bit
        while over > 0:
            oldest = next(iter(lru))
            size = len(oldest.key)
            if size > over and oldest.mask == bit and not oldest.children:
                # held here alone, nothing below: drop its last ``over`` blocks, the head stays least recent
                if (where := tree._where) is not None:
                    for b in oldest.key[-over:]:
                        where.pop(b, None)
                oldest.key = oldest.key[:-over]
                self._held -= over
                return
            if size > over:  # shared: split off its last ``over`` blocks, the head still least recent
                head = tree._split(oldest, size - over, skip=bit)
                lru.move_to_end(head, last=False)
                size = over
            del lru[oldest]
            oldest.mask &= ~bit
            self._held -= size
            over -= size
            tree._prune(oldest)

    def remove(self, blocks: Sequence[int]) -> None:
        """The engine evicted these blocks (its KV-cache events say so)."""
        tree, bit = self._tree, self._bit
        tree._version += 1
        where = tree._block_map()
        for b in blocks:
            node = where.get(b)
            if node is None or not node.mask & bit:
                continue
            at = node.key.index(b)
            if at:
                tree._split(node, at)  # node now starts with b
            if len(node.key) > 1:
                node = tree._split(node, 1)  # node is [b] alone
            del self._lru[node]
            node.mask &= ~bit
            self._held -= 1
            tree._prune(node)

    def clear(self) -> None:
        tree, bit = self._tree, self._bit
        tree._version += 1
        for node in self._lru:
            node.mask &= ~bit
        for node in list(self._lru):
            tree._prune(node)
        self._lru.clear()
        self._held = 0
