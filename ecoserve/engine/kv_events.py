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

Also here: the flags that make an engine we launch publish them
(``publishing_args``), and where to subscribe (``subscribe_address``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from typing import Any, Union
from urllib.parse import urlsplit

import msgspec

from ecoserve.engine.kv_hash import HASH_ALGO

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


def publishing_args(engine_args: Sequence[str], endpoint: str) -> list[str]:
    """The vLLM flags that make an engine publish its KV-cache events on
    ``endpoint`` with block hashes ``kv_hash`` computes (``sha256_cbor``),
    for those of them ``engine_args`` does not set itself; none when they
    switch prefix caching off. Go before ``engine_args``, so theirs win."""
    given = {a.split("=", 1)[0].replace("_", "-") for a in engine_args if a.startswith("--")}
    if "--no-enable-prefix-caching" in given:
        return []
    out: list[str] = []
    if "--prefix-caching-hash-algo" not in given:
        out += ["--prefix-caching-hash-algo", HASH_ALGO]
    if "--kv-events-config" not in given:
        config = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": endpoint}
        out += ["--kv-events-config", json.dumps(config)]
    return out


def local_endpoint(engine_id: str, port: int) -> str:
    """An ``ipc://`` endpoint for a local engine's events: bound by the engine,
    reachable from this machine only. (A non-wildcard ``tcp://`` endpoint
    makes vLLM 0.32 connect its PUB instead of binding it, and nothing
    published that way arrives; a wildcard one listens on every interface.)"""
    return f"ipc://{tempfile.gettempdir()}/ecoserve-kv-{os.getpid()}-{engine_id}-{port}.sock"


def subscribe_address(endpoint: str, engine_url: str) -> str:
    """Where to subscribe to an engine's events: its endpoint, with a wildcard
    host (``tcp://*:5557``, vLLM's default) replaced by the engine's host."""
    if endpoint.startswith("tcp://*:") or endpoint.startswith("tcp://0.0.0.0:"):
        host = urlsplit(engine_url).hostname or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"tcp://{host}:{endpoint.rsplit(':', 1)[1]}"
    return endpoint
