"""The coordinator's record of each engine's prefix cache (ecoserve/live/prefixes.py),
kept by the KV-cache events an engine publishes (decoded by ecoserve/engine/kv_events.py,
received by ecoserve/engine/kv_event_stream.py), and the flags that make engines publish them."""

from __future__ import annotations

import msgspec
import pytest

from ecoserve.engine.kv_event_stream import KVEventSubscriber
from ecoserve.engine.kv_events import (
    AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch, publishing_args, subscribe_address,
)  # fmt: skip
from ecoserve.engine.kv_hash import HASH_ALGO, block_hashes, external
from ecoserve.live.prefixes import LivePrefixes
from ecoserve.policy import RequestState
from ecoserve.protocol import EngineStatus, PrefixCaching


def _status(block_size: int = 128, blocks: int = 64, *, algo: str = HASH_ALGO, seed: str = "",
            events: str = "ipc:///tmp/x.sock", caching: bool = True) -> EngineStatus:  # fmt: skip
    return EngineStatus(engine_id="e", seq=1, time=0.0, phase="decode", phase_since=0.0, activity="idle",
                        activity_since=0.0, step=0, num_waiting=0, num_prefilling=0, num_decoding=0,
                        kv_blocks_free=blocks, kv_blocks_total=blocks, block_size=block_size, max_num_seqs=8,
                        max_num_batched_tokens=2048,
                        prefix_caching=PrefixCaching(algo, seed, events) if caching else None)  # fmt: skip


def _stored(hashes: list[int], size: int = 128) -> BlockStored:
    return BlockStored(block_hashes=hashes, parent_block_hash=None, token_ids=[], block_size=size)


def test_the_index_follows_stored_removed_and_cleared_events():
    p = LivePrefixes()
    ids = list(range(5, 5 + 3 * 128 + 50))
    idx = p.index_for("e0", "http://127.0.0.1:9", _status())
    assert idx is not None and idx.block_tokens == 128 and idx.capacity == 64
    blocks = p.blocks_of(ids)
    assert blocks == tuple(external(h) for h in block_hashes(ids, 128)) and len(blocks) == 3
    other = (11, 12)
    p.apply("e0", KVEventBatch(1.0, [_stored(list(blocks)), _stored(list(other))]))
    assert {b for b in blocks + other if b in idx} == set(blocks + other)
    p.apply("e0", KVEventBatch(2.0, [BlockRemoved(block_hashes=[blocks[1]])]))
    assert idx.matched_blocks(blocks) == 1 and blocks[2] in idx  # a hole ends the cached prefix
    req = RequestState("r", 0.0, len(ids), 4, blocks=blocks)
    assert idx.cached_tokens(req.blocks, req.prompt_tokens) == 128
    p.apply("e0", KVEventBatch(3.0, [AllBlocksCleared()]))
    assert len(idx) == 0 and p.directory.matches(blocks) == {}
    # Hashes as bytes (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0) are the same blocks.
    p.apply("e0", KVEventBatch(4.0, [_stored(block_hashes(ids, 128))]))
    assert idx.matched_blocks(blocks) == 3
    # Blocks of another size, or with extra keys (LoRA, multimodal), are not ours to match.
    p.apply("e0", KVEventBatch(5.0, [_stored([99], size=16), BlockStored([98], None, [], 128, lora_id=3),
                                     BlockStored([97], None, [], 128, extra_keys=[("salt",)])]))  # fmt: skip
    assert 99 not in idx and 98 not in idx and 97 not in idx
    # vLLM 0.32 sends one extra key per block, None for a plain one: those blocks are ours.
    p.apply("e0", KVEventBatch(5.5, [BlockStored([96], None, [], 128, extra_keys=[None])]))
    assert 96 in idx
    assert p.summary("e0")["source"] == "kv-events" and p.summary("e0")["event_batches"] == 6
    p.routed("e0", 700, 512)
    p.routed("nobody", 700, 512)  # an engine gone: ignored
    assert (p.summary("e0")["routed_prompt_tokens"], p.summary("e0")["predicted_hit_tokens"]) == (700, 512)


def test_two_engines_share_one_directory_and_leaving_forgets():
    p = LivePrefixes()
    a = p.index_for("a", "http://127.0.0.1:1", _status())
    b = p.index_for("b", "http://127.0.0.1:2", _status())
    blocks = p.blocks_of(list(range(300)))
    p.apply("a", KVEventBatch(1.0, [_stored(list(blocks))]))
    p.apply("b", KVEventBatch(1.0, [_stored(list(blocks[:1]))]))
    assert p.directory.matches(blocks) == {"a": 2, "b": 1}
    p.forget("a")
    assert p.directory.matches(blocks) == {"b": 1} and p.summary("a") is None
    p.apply("a", KVEventBatch(2.0, [AllBlocksCleared()]))  # a late batch of an engine gone: ignored
    assert a is not None and b is not None and len(b) == 1


def test_engines_we_cannot_match_are_not_tracked_by_events():
    p = LivePrefixes()
    assert p.blocks_of([1, 2, 3] * 100) == ()  # no engine yet: nothing to hash for
    assert p.index_for("off", "http://h:1", _status(caching=False)) is None
    assert p.index_for("e0", "http://h:1", _status(seed="7")) is not None
    assert p.blocks_of(list(range(200))) == tuple(external(h) for h in block_hashes(list(range(200)), 128, seed="7"))
    assert p.index_for("e1", "http://h:2", _status(block_size=16)) is None  # other blocks: other hashes
    assert p.index_for("e2", "http://h:3", _status(seed="8")) is None
    pickled = p.index_for("e3", "http://h:4", _status(seed="7", algo="sha256"))
    assert pickled is not None and p.summary("e3")["source"] == "routed"  # its events hash a pickle
    assert p.index_for("e4", "http://h:5", _status(seed="7", events="")).__class__.__name__ == "PrefixIndex"
    assert p.summary("e4")["source"] == "routed"
    assert LivePrefixes(enabled=False).index_for("e", "http://h:1", _status()) is None
    estimated = LivePrefixes(kv_events=False)
    assert estimated.index_for("e", "http://h:1", _status()) is not None and estimated.summary("e")["source"] == "routed"


def test_subscriber_counts_malformed_messages_and_lost_batches():
    got: list[KVEventBatch] = []
    lost: list[int] = []
    sub = KVEventSubscriber("ipc:///nowhere", got.append, on_gap=lost.append)

    def msg(seq: int) -> list[bytes]:
        return [b"", seq.to_bytes(8, "big"), msgspec.msgpack.encode([float(seq), [{"type": "AllBlocksCleared"}], None])]

    sub.handle(msg(7))
    sub.handle(msg(8))
    sub.handle([b"only one frame"])
    sub.handle([b"", (9).to_bytes(8, "big"), b"\xc1"])  # not msgpack
    sub.handle(msg(12))
    assert len(got) == 3 and sub.malformed == 2 and lost == [3] and sub.lost == 3

    def broken(batch: KVEventBatch) -> None:
        raise IndexError("a bug of ours")

    sub = KVEventSubscriber("ipc:///nowhere", broken, on_gap=lost.append)
    sub.handle(msg(1))
    sub.handle(msg(2))  # the subscriber goes on: one batch that fails does not stop the rest
    assert sub.received == 2 and sub.failed == 2 and lost[-2:] == [1, 1]


def test_events_that_repeat_stored_runs_as_lists():
    """KV events name blocks in lists; the tree's runs are tuples. A stored run
    that repeats, extends or ends inside one already held is the same blocks
    (a list once compared unequal to every run and split it at its end)."""
    p = LivePrefixes()
    idx = p.index_for("e0", "http://127.0.0.1:9", _status())
    p.apply("e0", KVEventBatch(1.0, [_stored([1, 2, 3])]))
    p.apply("e0", KVEventBatch(2.0, [_stored([1, 2, 3, 4]), _stored([1, 2])]))
    p.apply("e0", KVEventBatch(3.0, [BlockStored([5], 4, [], 128), BlockStored([5], 4, [], 128)]))
    assert len(idx) == 5 and idx.matched_blocks((1, 2, 3, 4, 5)) == 5 and idx.matched_blocks([1, 2, 9]) == 2


def test_publishing_args_leave_the_users_own_settings():
    args = publishing_args([], "ipc:///tmp/e.sock")
    assert args[:2] == ["--prefix-caching-hash-algo", HASH_ALGO]
    config = msgspec.json.decode(args[3])
    assert args[2] == "--kv-events-config" and config == {
        "enable_kv_cache_events": True, "publisher": "zmq", "endpoint": "ipc:///tmp/e.sock"}
    assert publishing_args(["--no-enable-prefix-caching"], "ipc:///x") == []
    assert publishing_args(["--prefix-caching-hash-algo=xxhash"], "ipc:///x")[0] == "--kv-events-config"
    assert publishing_args(["--kv_events_config", "{}"], "ipc:///x") == ["--prefix-caching-hash-algo", HASH_ALGO]


@pytest.mark.parametrize(("endpoint", "url", "want"), [
    ("tcp://*:5557", "http://10.0.0.7:8000", "tcp://10.0.0.7:5557"),
    ("tcp://0.0.0.0:5557", "http://[::1]:8000", "tcp://[::1]:5557"),
    ("ipc:///tmp/kv.sock", "http://10.0.0.7:8000", "ipc:///tmp/kv.sock"),
    ("tcp://10.0.0.8:5557", "http://10.0.0.7:8000", "tcp://10.0.0.8:5557"),
])  # fmt: skip
def test_subscribe_address(endpoint, url, want):
    assert subscribe_address(endpoint, url) == want


@pytest.mark.engine
def test_the_index_follows_a_real_engines_evictions(tiny_model, start_engine, tmp_path):
    """A real engine with a KV cache of 10 blocks (128 tokens each) serves nine
    3-block prompts one after another, so it evicts; the index is kept by its
    events alone. Then each prompt is sent again, twice (probes evict one
    another too): before each, the index's prediction of the prompt tokens the
    engine's cache serves equals what the engine reports as prefix hits for it
    (``vllm:prefix_cache_hits_total``), held prompts and evicted ones alike."""
    import random
    import time

    import httpx

    from tests.conftest import kv_event_subscriber

    endpoint = f"ipc://{tmp_path}/kv-events.sock"
    engine = start_engine(tiny_model, "--max-model-len", "512", "--enforce-eager", "--dtype", "bfloat16",
                          "--num-gpu-blocks-override", "10", "--max-num-seqs", "2", *publishing_args([], endpoint),
                          name="kv-evictions", env={"PYTHONHASHSEED": "4321"})  # fmt: skip
    p = LivePrefixes()
    idx = p.index_for("e", engine.url, _status(blocks=10, seed="4321", events=endpoint))
    assert idx is not None
    seen = {"removed": 0}

    def on_batch(batch: KVEventBatch) -> None:
        seen["removed"] += sum(isinstance(e, BlockRemoved) for e in batch.events)
        p.apply("e", batch)

    subscriber = KVEventSubscriber(endpoint, on_batch, on_gap=lambda n: p.lost("e", n))
    with engine:
        engine.wait_ready(300)
        sub = kv_event_subscriber(endpoint)

        def drain(quiet_s: float = 1.0) -> None:  # until the engine has published nothing for quiet_s
            while sub.poll(int(quiet_s * 1000)):
                subscriber.handle(sub.recv_multipart())

        def hits() -> float:
            text = httpx.get(engine.url + "/metrics", timeout=10).text
            return sum(float(line.split()[-1]) for line in text.splitlines()
                       if line.startswith("vllm:prefix_cache_hits_total"))  # fmt: skip

        try:
            time.sleep(1.0)  # the subscription reaches the engine's PUB
            model = httpx.get(engine.url + "/v1/models").json()["data"][0]["id"]
            rng = random.Random(7)
            prompts = [[rng.randrange(5, 1000) for _ in range(3 * 128 + 20)] for _ in range(9)]

            def send(prompt: list[int]) -> None:
                r = httpx.post(engine.url + "/v1/completions", timeout=120,
                               json={"model": model, "prompt": prompt, "max_tokens": 1})  # fmt: skip
                assert r.status_code == 200, r.text

            for prompt in prompts:
                send(prompt)
                drain()
            assert seen["removed"] > 0, "the engine evicted nothing: the test proves nothing"
            predicted, reported = [], []
            # the last prompt first (still held), the others shuffled (mostly evicted), each twice
            # in a row (the second finds what the first stored)
            for k in [len(prompts) - 1, *rng.sample(range(len(prompts) - 1), len(prompts) - 1)]:
                for _ in range(2):
                    drain()
                    predicted.append(idx.cached_tokens(p.blocks_of(prompts[k]), len(prompts[k])))
                    before = hits()
                    send(prompts[k])
                    reported.append(hits() - before)
        finally:
            sub.close()
    assert subscriber.lost == 0 and subscriber.malformed == 0
    assert predicted == reported, (predicted, reported)
    assert predicted[0] == 3 * 128 and predicted.count(0) >= 4  # held and evicted prompts were probed
