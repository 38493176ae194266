"""vLLM's KV-cache events, as an engine publishes them (``--kv-events-config``
with the ZeroMQ publisher): which blocks it stored, removed, or that it
cleared them all.

Rule: decoded with msgspec (MessagePack, vLLM's own encoding), never
unpickled; a message that is not a batch of these events is an error for the
caller to count, not a crash. Each ZeroMQ message is ``[topic, seq (8 bytes,
big-endian), payload]``; the payload is a batch ``[ts, [event, ...],
data_parallel_rank]``, every event a map tagged with its class name. Fields
mirror vLLM 0.32 (``vllm/distributed/kv_events.py``); those it may add later
are ignored. Block hashes are bytes (``kv_hash.block_hashes`` computes the
same ones), or 64-bit ints when the engine sets
``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES``.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

BlockHash = Union[bytes, int]


class BlockStored(msgspec.Struct, tag=True, omit_defaults=True):
    block_hashes: list[BlockHash]
    parent_block_hash: BlockHash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    extra_keys: list[Any] | None = None


class BlockRemoved(msgspec.Struct, tag=True, omit_defaults=True):
    block_hashes: list[BlockHash]
    medium: str | None = None


class AllBlocksCleared(msgspec.Struct, tag=True, omit_defaults=True):
    pass


KVEvent = Union[BlockStored, BlockRemoved, AllBlocksCleared]


class KVEventBatch(msgspec.Struct, array_like=True, omit_defaults=True):
    ts: float
    events: list[KVEvent]
    data_parallel_rank: int | None = None


_dec = msgspec.msgpack.Decoder(KVEventBatch)


def decode_batch(payload: bytes) -> KVEventBatch:
    """One published batch; raises ``msgspec.DecodeError``/``ValidationError`` otherwise."""
    return _dec.decode(payload)


def decode_message(frames: list[bytes]) -> tuple[int, KVEventBatch]:
    """A ZeroMQ message ``[topic, seq, payload]`` -> (seq, batch)."""
    if len(frames) != 3 or len(frames[1]) != 8:
        raise ValueError(f"a KV-event message has 3 frames (topic, 8-byte seq, payload), got {len(frames)}")
    return int.from_bytes(frames[1], "big"), decode_batch(frames[2])
