"""Prefix-aware routing pinned with exact decisions (policy/prefix_index.py,
macro_instance.py, overall.py, longest_prefix.py): the longest cached prefix
is preferred inside the constraint check, predicted prefill counts only the
uncached part, and a hot prefix spills once its holder would miss the SLO."""

from __future__ import annotations

import pytest

from ecoserve.policy import SLO, InstanceState, Routed
from ecoserve.policy.longest_prefix import LongestPrefixRouter
from ecoserve.policy.prefix_index import PrefixIndex
from tests.policy.helpers import linear_predictor, macro, overall, req

B = 512  # tokens per block


def with_blocks(rid, blocks, prompt=None, at=0.0):
    r = req(rid, prompt=prompt if prompt is not None else len(blocks) * B + 10, at=at)
    r.blocks = tuple(blocks)
    return r


def routed(actions):
    return [(a.request_id, a.instance_id, a.reason) for a in actions if isinstance(a, Routed)]


def indexed(router, capacity_blocks=100):
    for inst in router.instances():
        inst.prefix = PrefixIndex(capacity_blocks, B)
    return router


# -- the index ------------------------------------------------------------------------


def test_index_matches_leading_blocks_evicts_lru_and_never_covers_the_last_token():
    idx = PrefixIndex(4, B)
    idx.insert((1, 2, 3))
    assert idx.matched_blocks((1, 2, 9, 3)) == 2  # a leading run only
    assert idx.cached_tokens((1, 2, 3), 3 * B + 7) == 3 * B
    assert idx.cached_tokens((1, 2, 3), 3 * B) == 3 * B - 1  # the last token is always computed
    assert idx.cached_tokens((), 100) == 0 and idx.cached_tokens((1,), 1) == 0
    idx.insert((1, 4))  # 1 touched; (2, 3) is now the least recently used
    idx.insert((5,))  # one block over: the tail of (1, 2, 3) goes, as vLLM frees a request's blocks in reverse
    assert len(idx) == 4 and 3 not in idx and {1, 2, 4, 5} == {b for b in (1, 2, 3, 4, 5) if b in idx}
    assert idx.matched_blocks((1, 2, 3)) == 2 and idx.matched_blocks((1, 4)) == 2
    with pytest.raises(ValueError):
        PrefixIndex(0)


def test_predicted_prefill_counts_only_the_uncached_part():
    p = linear_predictor()  # 1 ms a token, nothing fixed
    assert p.predict_uncached(3000, 0) == pytest.approx(p.predict(3000))
    assert p.predict_uncached(3000, 2048) == pytest.approx(p.predict(3000 - 2048))
    q = type(p)(coeffs=(0.01, 1e-4, 1e-8))  # attention: the rest still attends to the cached part
    assert q.predict_uncached(3000, 2048) == pytest.approx(q.predict(3000) - q.predict(2048) + 0.01)
    assert q.predict_uncached(3000, 2048) > q.predict(3000 - 2048)


def test_the_kv_need_counts_only_blocks_no_started_request_holds():
    m = indexed(macro(1, capacity=10 * B, ttft=10.0, tpot=10.0))
    (inst,) = m.instances()
    a = with_blocks("a", [1, 2, 3], prompt=3 * B + 10)
    m.submit(a, 0.0)
    b = with_blocks("b", [1, 2, 4], prompt=3 * B + 10)
    assert m.kv_need(b, inst) == 3 * B + 10 + 10  # a has no first token: its blocks are not in the KV yet
    m.on_tokens("a", 1, 0.5)  # a's prompt is in the KV now: its 3 blocks are pooled, out of its own share
    assert inst.pooled == {1: 1, 2: 1, 3: 1} and a.kv_reserved == 10 + 10 and inst.kv_reserved == 3 * B + 20
    assert m.kv_need(b, inst) == B + 10 + 10  # b shares blocks 1 and 2
    m.submit(b, 0.6)
    assert inst.pooled == {1: 2, 2: 2, 3: 1} and inst.kv_reserved == 3 * B + 20 + B + 20
    # A prompt that fills its blocks exactly shares all but the block of its last token.
    c = with_blocks("c", [1, 2], prompt=2 * B)
    assert inst.shared_blocks(c) == 1
    m.on_finish("a", 1.0)  # b still uses 1 and 2; a's block 3 leaves the KV
    assert inst.pooled == {1: 1, 2: 1} and inst.kv_reserved == 2 * B + B + 20
    m.on_finish("b", 1.1)
    assert inst.pooled == {} and inst.kv_reserved == 0


def test_a_shared_prefix_fits_where_a_copy_would_not():
    m = indexed(macro(1, capacity=4 * B + 100, ttft=10.0, tpot=10.0))
    a = with_blocks("a", [1, 2, 3], prompt=3 * B + 10)
    m.submit(a, 0.0)
    m.on_tokens("a", 1, 0.5)
    assert routed(m.submit(with_blocks("b", [1, 2, 3], prompt=3 * B + 10), 0.6))  # 3 blocks shared: fits
    assert not routed(m.submit(with_blocks("c", [9, 8, 7], prompt=3 * B + 10), 0.7))  # a copy would not


# -- EcoServe: affinity inside the check -----------------------------------------------


def test_a_request_goes_where_its_prefix_is_and_the_rolling_cursor_stays():
    m = indexed(macro(2, ttft=10.0))
    i0, i1 = m.instances()
    assert routed(m.submit(with_blocks("a", [1, 2, 3]), 0.0)) == [("a", "i0", "fits")]
    assert i0.prefix.matched_blocks((1, 2, 3)) == 3 and len(i1.prefix) == 0  # the index follows routing
    m.took(i1)  # rolling activation has moved on to i1
    b = with_blocks("b", [1, 2, 3, 4])
    assert routed(m.submit(b, 0.1)) == [("b", "i0", "prefix")]
    assert b.cached_tokens == 3 * B
    assert b.predicted_prefill == pytest.approx(linear_predictor().predict(b.prompt_tokens - 3 * B))
    assert routed(m.submit(with_blocks("c", [7, 8]), 0.2)) == [("c", "i1", "fits")]  # nothing cached: cyclic
    assert routed(m.submit(req("d"), 0.3)) == [("d", "i1", "fits")]  # no hashes at all: as before


def test_a_hot_prefix_spills_to_the_next_instance_once_its_holder_would_miss_ttft():
    # TTFT SLO 1.2 s at 1 ms a token: "a" (522 tokens) opens i0's window; each
    # follower shares its first block and computes 522 tokens there (0.522 s).
    # "b" fits (1.044 s); "c" would make i0's window 1.566 s, so it goes to i1,
    # where its whole prompt (1.034 s) still meets the SLO.
    m = indexed(macro(2, ttft=1.2))
    assert routed(m.submit(with_blocks("a", [1]), 0.0)) == [("a", "i0", "fits")]
    assert routed(m.submit(with_blocks("b", [1, 2]), 0.0)) == [("b", "i0", "prefix")]
    assert routed(m.submit(with_blocks("c", [1, 3]), 0.0)) == [("c", "i1", "fits")]


def test_the_affinity_threshold_is_explicit():
    m = indexed(macro(2, ttft=10.0))
    m.affinity_min_tokens = 2 * B
    m.submit(with_blocks("a", [1, 2]), 0.0)
    m.took(m.instances()[1])
    assert routed(m.submit(with_blocks("b", [1, 9]), 0.1)) == [("b", "i1", "fits")]  # one block: below it
    assert routed(m.submit(with_blocks("c", [1, 2, 9]), 0.2)) == [("c", "i0", "prefix")]


def test_the_overall_scheduler_tries_the_macro_instance_holding_the_prefix_first():
    s = indexed(overall((1, 1), ttft=10.0))
    assert routed(s.submit(with_blocks("a", [1, 2]), 0.0)) == [("a", "i0", "fits")]
    assert routed(s.submit(with_blocks("x", [5]), 0.0)) == [("x", "i0", "fits")]  # cyclic: i0 still fits
    s._cursor = 1  # noqa: SLF001  (the overall scheduler moved on to the second macro instance)
    assert routed(s.submit(with_blocks("b", [1, 2, 3]), 0.1)) == [("b", "i0", "prefix")]


def test_a_holder_that_would_miss_leaves_the_request_to_rolling_activation():
    """The holder (i0, first macro instance) cannot take "b" (its window would
    pass the TTFT SLO): "b" is routed exactly as with nothing cached, by the
    overall cursor (the second macro instance), not to the holder's neighbour;
    and a detour that succeeds moves no cursor."""
    s = indexed(overall((2, 2), ttft=1.2))
    assert routed(s.submit(with_blocks("a", [1]), 0.0)) == [("a", "i0", "fits")]
    s._cursor = 1  # noqa: SLF001  (rolling activation has moved on to the second macro instance)
    assert routed(s.submit(with_blocks("p", [1, 2]), 0.0)) == [("p", "i0", "prefix")]  # a detour to the holder
    assert s._cursor == 1 and s.macros[0]._cursor == 0  # noqa: SLF001
    assert routed(s.submit(with_blocks("b", [1, 3]), 0.0)) == [("b", "i2", "fits")]  # i0 full: the cursor's pick


@pytest.mark.parametrize("policy", ["ecoserve", "ecoserve-trickle"])
def test_without_reuse_prefix_routing_decides_exactly_as_without_hashes(policy):
    """Workloads that share no prefix (issue 15: no regression there): with
    every prompt's blocks unique, every action, at every event, is the one the
    same scheduler takes for prompts without hashes."""
    import random

    from ecoserve.policy.config import PolicyConfig
    from ecoserve.policy.prefix_index import PrefixDirectory

    def run(hashes: bool) -> list[str]:
        rng = random.Random(3)
        s = PolicyConfig(policy, slo=SLO(2.0, 0.1)).build_router(linear_predictor())
        d = PrefixDirectory()
        for k in range(6):
            prefix = PrefixIndex(64, B, directory=d, owner=f"i{k}") if hashes else None
            s.add_instance(InstanceState(f"i{k}", 40 * B, prefix=prefix), 0.0, macro=k // 3)
        log: list[str] = []
        live: list[str] = []  # routed, unfinished
        now, fresh = 0.0, iter(range(1, 10**9))

        def record(actions) -> None:
            log.extend(repr(a) for a in actions)
            live.extend(a.request_id for a in actions if isinstance(a, Routed))

        for k in range(300):
            now += rng.expovariate(8.0)
            prompt = rng.randrange(100, 4 * B)
            r = req(f"r{k}", prompt=prompt, at=now)
            r.blocks = tuple(next(fresh) for _ in range(prompt // B)) if hashes else ()
            record(s.submit(r, now))
            for rid in rng.sample(live, min(3, len(live))):
                if rng.random() < 0.2:
                    live.remove(rid)
                    record(s.on_finish(rid, now))
                else:
                    record(s.on_tokens(rid, rng.randrange(1, 20), now))
            record(s.tick(now))
        return log

    with_hashes, without = run(True), run(False)
    assert with_hashes == without
    # a real comparison: most requests routed, some queued (the SLO checks bit)
    assert sum(a.startswith("Routed") for a in without) > 150 and any(a.startswith("Queued") for a in without)


# -- the oracle baseline -----------------------------------------------------------------


def test_longest_prefix_router_picks_the_longest_then_the_least_loaded_and_never_writes():
    r = LongestPrefixRouter()
    caches = [PrefixIndex(100, B) for _ in range(3)]
    for k, c in enumerate(caches):
        r.add_instance(InstanceState(f"i{k}", 100_000, prefix=c), 0.0)
    caches[1].insert((1,))
    caches[2].insert((1, 2))
    assert routed(r.submit(with_blocks("a", [1, 2, 3]), 0.0)) == [("a", "i2", "longest_prefix")]
    assert routed(r.submit(with_blocks("b", [1]), 0.0)) == [("b", "i1", "longest_prefix")]  # i2 is busier now
    assert routed(r.submit(with_blocks("c", [9]), 0.0)) == [("c", "i0", "least_loaded")]
    assert [len(c) for c in caches] == [0, 1, 2]  # it reads the caches, the engines fill them


def test_the_directory_agrees_with_every_index_through_evictions():
    import random

    from ecoserve.policy.prefix_index import PrefixDirectory

    rng = random.Random(7)
    d = PrefixDirectory()
    idx = {f"i{k}": PrefixIndex(6, B, directory=d, owner=f"i{k}") for k in range(3)}
    for step in range(400):
        owner = rng.choice(list(idx))
        start = rng.randrange(10)
        idx[owner].insert(tuple(range(start, start + rng.randrange(1, 5))))
        if step % 97 == 0:
            idx[owner].clear()
        q = tuple(range(rng.randrange(10), 12))
        expected = {o: i.matched_blocks(q) for o, i in idx.items() if i.matched_blocks(q)}
        assert d.matches(q) == expected, (step, q)


def test_routing_through_the_directory_decides_as_asking_each_instance():
    from ecoserve.policy.prefix_index import PrefixDirectory

    def build(shared):
        m = macro(3, ttft=10.0)
        d = PrefixDirectory() if shared else None
        for inst in m.instances():
            inst.prefix = PrefixIndex(100, B, directory=d, owner=inst.id)
        return m

    decisions = []
    for shared in (False, True):
        m, out = build(shared), []
        for k, blocks in enumerate([[1, 2], [5], [1, 2, 3], [5, 6], [1, 9], [7]]):
            out += routed(m.submit(with_blocks(f"r{k}", blocks), 0.01 * k))
            if k % 2:
                m.took(m.instances()[(k + 1) % 3])
        decisions.append(out)
    assert decisions[0] == decisions[1] and any(reason == "prefix" for _, _, reason in decisions[0])
