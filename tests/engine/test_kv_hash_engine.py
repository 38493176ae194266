"""Our block hashes are vLLM's (ecoserve/engine/kv_hash.py): checked against
vLLM's own function, and against the hashes a real CPU engine publishes in its
KV-cache events (ZeroMQ, decoded by ecoserve/engine/kv_events.py) for a prompt
we sent as token ids."""

from __future__ import annotations

import random
import time

import httpx
import msgspec
import pytest

from ecoserve.engine.kv_events import BlockStored, decode_batch, decode_message, publishing_args
from ecoserve.engine.kv_hash import block_hashes, external, none_hash
from tests.conftest import kv_event_subscriber


def test_the_hashes_are_vllms_own():
    from vllm.utils.hashing import sha256_cbor
    from vllm.v1.core import kv_cache_utils as kvu

    kvu.init_none_hash(sha256_cbor)
    assert bytes(kvu.NONE_HASH) == none_hash("vllm-none-hash")
    rng = random.Random(1)
    for _ in range(50):
        ids = [rng.choice((rng.randrange(24), rng.randrange(300), rng.randrange(70_000), rng.randrange(1 << 32)))
               for _ in range(rng.randrange(70))]  # fmt: skip
        parent, theirs = None, []
        for s in range(0, len(ids) - 15, 16):
            parent = kvu.hash_block_tokens(sha256_cbor, parent, ids[s : s + 16], None)
            theirs.append(bytes(parent))
        assert block_hashes(ids, 16, seed="vllm-none-hash") == theirs
    assert none_hash("7") != none_hash("vllm-none-hash")  # PYTHONHASHSEED changes every hash


def test_malformed_event_messages_are_errors_not_crashes():
    with pytest.raises(ValueError):
        decode_message([b"", b"short", b""])
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        decode_batch(b"\x93\x01\x02")
    batch = decode_batch(msgspec.msgpack.encode([1.0, [{"type": "AllBlocksCleared"}], None]))
    assert batch.events and type(batch.events[0]).__name__ == "AllBlocksCleared"


@pytest.mark.engine
def test_a_real_engine_publishes_the_hashes_we_compute(tiny_model, start_engine, tmp_path):
    # An ipc endpoint: vLLM binds its PUB there, nothing is open to the network.
    # (A tcp endpoint other than a wildcard makes vLLM *connect* its PUB instead,
    # and in 0.32 nothing published that way arrived: checked with its own
    # ZmqEventPublisher and a bound SUB.)
    endpoint = f"ipc://{tmp_path}/kv-events.sock"
    engine = start_engine(tiny_model, "--max-model-len", "512", "--enforce-eager", "--dtype", "bfloat16",
                          *publishing_args([], endpoint), name="kv-events", env={"PYTHONHASHSEED": "1234"})  # fmt: skip
    with engine:
        engine.wait_ready(300)
        sub = kv_event_subscriber(endpoint)
        try:
            time.sleep(1.0)  # the engine's PUB has connected and the subscription reached it
            model = httpx.get(engine.url + "/v1/models").json()["data"][0]["id"]
            prompt = [(37 * i + 11) % 1000 + 5 for i in range(300)]  # ids below the tiny model's 1024; 2 full blocks
            r = httpx.post(engine.url + "/v1/completions", timeout=120,
                           json={"model": model, "prompt": prompt, "max_tokens": 1})  # fmt: skip
            assert r.status_code == 200, r.text
            stored: list[BlockStored] = []
            deadline = time.time() + 30
            while time.time() < deadline and not stored:
                if sub.poll(500):
                    _, batch = decode_message(sub.recv_multipart())
                    stored += [e for e in batch.events if isinstance(e, BlockStored)]
        finally:
            sub.close()
    assert stored, "the engine published no BlockStored event"
    size = stored[0].block_size  # 128 on the CPU backend
    published = [h for e in stored for h in e.block_hashes]
    ours = block_hashes(prompt, size, seed="1234")
    assert len(ours) == len(prompt) // size >= 2
    assert [external(h) for h in ours] == published[: len(ours)], (size, published)
    assert stored[0].token_ids[:size] == prompt[:size]
    assert [external(h) for h in block_hashes(prompt, size, seed="vllm-none-hash")] != published[: len(ours)]  # the seed matters
