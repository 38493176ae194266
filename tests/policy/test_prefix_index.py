"""The prefix tree (policy/prefix_index.py) against a plain per-block model:
an LRU of single blocks, touched tail first, whose cached prefix is the leading
run of a prompt's blocks it holds. Prompts are paths in a small trie with
chained block ids (a block's id names everything before it), as vLLM's and
Mooncake's hashes are."""

from __future__ import annotations

from collections import OrderedDict

from hypothesis import given, settings
from hypothesis import strategies as st

from ecoserve.policy.prefix_index import PrefixDirectory, PrefixIndex, leading_run


def chained(symbols: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(hash(("blk", symbols[: k + 1])) for k in range(len(symbols)))


class BlockLRU:
    """The model: what the tree must equal for one owner."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.held = capacity, OrderedDict()

    def insert(self, blocks) -> None:
        for b in reversed(blocks):  # the tail first: evicted first, as vLLM frees in reverse
            self.held[b] = None
            self.held.move_to_end(b)
        while len(self.held) > self.capacity:
            self.held.popitem(last=False)

    def remove(self, blocks) -> None:
        for b in blocks:
            self.held.pop(b, None)

    def matched(self, blocks) -> int:
        return leading_run(blocks, self.held)


prompts = st.lists(st.integers(0, 2), min_size=1, max_size=8).map(tuple)
ops = st.lists(st.tuples(st.sampled_from(["insert", "insert", "insert", "remove", "clear", "continue"]),
                         st.integers(0, 3), prompts, st.integers(0, 7)), max_size=60)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(script=st.lists(prompts, max_size=60), capacity=st.integers(1, 20))
def test_one_owner_holds_exactly_what_a_per_block_lru_holds(script, capacity):
    idx, model = PrefixIndex(capacity, 16), BlockLRU(capacity)
    seen: set[int] = set()
    for symbols in script:
        blocks = chained(symbols)
        seen.update(blocks)
        idx.insert(blocks)
        model.insert(blocks)
        assert len(idx) == len(model.held) <= capacity
        assert {b for b in seen if b in idx} == set(model.held)
        for other in script[:8]:
            assert idx.matched_blocks(chained(other)) == model.matched(chained(other))


@settings(max_examples=400, deadline=None)
@given(script=ops)
def test_owners_sharing_a_tree_each_match_like_their_own_model(script):
    """Four indexes share one tree; KV events (remove, clear, a continuation
    stored after its parent) as well as routed inserts. Capacity is ample, so
    LRU order does not matter and the models are exact."""
    tree = PrefixDirectory()
    idx = [PrefixIndex(10_000, 16, directory=tree, owner=f"e{k}") for k in range(4)]
    models = [BlockLRU(10_000) for _ in range(4)]
    seen: list[tuple[int, ...]] = []
    for op, k, symbols, j in script:
        blocks = chained(symbols)
        if op == "insert":
            idx[k].insert(blocks)
            models[k].insert(blocks)
        elif op == "continue" and len(blocks) > 1:  # a BlockStored event: blocks[j:] after blocks[j - 1]
            cut = 1 + j % (len(blocks) - 1)
            if any(blocks[cut - 1] in m.held for m in models):  # vLLM stores a block after its parent
                idx[k].insert(blocks[cut:], parent=blocks[cut - 1])
                models[k].insert(blocks[cut:])
        elif op == "remove":
            idx[k].remove(blocks[j % len(blocks) :][:1])
            models[k].remove(blocks[j % len(blocks) :][:1])
        elif op == "clear":
            idx[k].clear()
            models[k].held.clear()
        seen.append(blocks)
        for b in seen[-10:]:
            want = {f"e{m}": n for m in range(4) if (n := models[m].matched(b))}
            assert tree.matches(b) == want
            assert all(idx[m].matched_blocks(b) == models[m].matched(b) for m in range(4))
        assert all(len(i) == len(m.held) for i, m in zip(idx, models))


@settings(max_examples=300, deadline=None)
@given(script=ops, capacity=st.integers(1, 12))
def test_shared_tree_under_eviction_stays_bounded_and_consistent(script, capacity):
    tree = PrefixDirectory()
    idx = [PrefixIndex(capacity, 16, directory=tree, owner=f"e{k}") for k in range(4)]
    seen: set[int] = set()
    for op, k, symbols, j in script:
        blocks = chained(symbols)
        seen.update(blocks)
        if op in ("insert", "continue"):
            idx[k].insert(blocks)
        elif op == "remove":
            idx[k].remove(blocks[j % len(blocks) :][:1])
        else:
            idx[k].clear()
        for i in idx:
            assert len(i) <= capacity and len(i) == sum(1 for b in seen if b in i)
        found = tree.matches(blocks)
        assert found == {i.owner: n for i in idx if (n := i.matched_blocks(blocks))}
        # a match is a held leading run, never more
        assert all(n <= leading_run(blocks, {b for b in blocks if b in i}) for i in idx if (n := found.get(i.owner)))


def test_a_routed_prompt_costs_nodes_not_blocks():
    """The tree stores a 100-block prompt as one run; a continuation splits it
    once; the block map for KV events is not built by routing alone."""
    tree = PrefixDirectory()
    a = PrefixIndex(1000, 16, directory=tree, owner="a")
    b = PrefixIndex(1000, 16, directory=tree, owner="b")
    first = tuple(range(100))
    a.insert(first)
    b.insert(first[:40] + (7_000,))
    assert tree.matches(first) == {"a": 100, "b": 40}
    assert len(tree._root.children) == 1 and len(next(iter(tree._root.children.values())).key) == 40
    assert tree._where is None
    a.remove([50])  # an event: the map is built now, and kept
    assert tree._where is not None and tree.matches(first) == {"a": 50, "b": 40} and 60 in a and 50 not in a
