"""What each engine's prefix cache holds, as the coordinator knows it.

Rule: one ``PrefixIndex`` per engine (the policy's ``InstanceState.prefix``),
all sharing one ``PrefixDirectory``, keyed by vLLM's own block hashes of the
prompt's token ids (``engine/kv_hash.py``, in the 64-bit form engines publish).
Two sources keep an index in step with its engine:

- always, the blocks we route there (the policy inserts them when it places a
  request: ``MacroInstance.on_placing``), bounded to the engine's KV blocks
  with LRU eviction: the fallback estimate;
- where the engine publishes its KV-cache events and hashes as we do
  (``sha256_cbor``, the same seed and block size), what it reports it stored,
  removed or cleared: its real state, evictions included.

An engine without prefix caching gets no index: nothing it is sent is reused.
Block hashes need one block size and seed for all engines: those of the first
engine with prefix caching; an engine that differs gets no index (warned).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ecoserve.engine.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch, subscribe_address
from ecoserve.engine.kv_hash import DEFAULT_SEED, HASH_ALGO, block_hashes, external
from ecoserve.policy.prefix_index import PrefixDirectory, PrefixIndex
from ecoserve.protocol import EngineStatus

log = logging.getLogger("ecoserve.coordinator")

# The policy's affinity threshold is in tokens (one Mooncake block, 512); a
# prompt shorter than one engine block (128 on CPU) has nothing to reuse.


@dataclass
class EnginePrefixes:
    """One engine's index and how it is kept."""

    index: PrefixIndex
    events: str  # subscribe address of its KV-cache events; "" when it has none we can use
    batches: int = 0
    lost_batches: int = 0
    # Of the prompts routed here with block hashes: their tokens, and those the
    # policy predicted the engine's cache would serve (to hold against the
    # engine's own vllm:prefix_cache_hits_total).
    routed_prompt_tokens: int = 0
    predicted_hit_tokens: int = 0

    def summary(self) -> dict[str, Any]:
        return {"source": "kv-events" if self.events else "routed", "blocks": len(self.index),
                "capacity_blocks": self.index.capacity, "event_batches": self.batches,
                "lost_batches": self.lost_batches, "routed_prompt_tokens": self.routed_prompt_tokens,
                "predicted_hit_tokens": self.predicted_hit_tokens}  # fmt: skip


class LivePrefixes:
    def __init__(self, enabled: bool = True, *, kv_events: bool = True) -> None:
        """``kv_events``: follow the engines' KV-cache events where they can be
        matched; off, every index is the estimate from routed blocks."""
        self.enabled = enabled
        self.kv_events = kv_events
        self.directory = PrefixDirectory()
        self.block_size: int | None = None  # tokens per block, from the first engine with prefix caching
        self.seed: str | None = None
        self.engines: dict[str, EnginePrefixes] = {}

    def index_for(self, eid: str, url: str, status: EngineStatus) -> PrefixIndex | None:
        """The index of an engine joining, or None (prefix routing off, no
        prefix caching there, or hashes we cannot match)."""
        pc = status.prefix_caching
        if not self.enabled or pc is None or status.block_size < 1:
            return None
        seed = pc.hash_seed or DEFAULT_SEED
        if self.block_size is None:
            self.block_size, self.seed = status.block_size, seed
        elif (status.block_size, seed) != (self.block_size, self.seed):
            log.warning("engine %s: prefix-cache blocks of %d tokens (hash seed %r) unlike the others' %d (%r): "
                        "its prefix cache is not tracked", eid, status.block_size, seed, self.block_size, self.seed)
            return None
        events = subscribe_address(pc.kv_events, url) if pc.kv_events and pc.hash_algo == HASH_ALGO else ""
        if not self.kv_events:
            events = ""
        elif pc.kv_events and not events:
            log.warning("engine %s hashes its prefix cache with %s, not %s: its KV events cannot be matched; "
                        "tracking the blocks routed there instead", eid, pc.hash_algo, HASH_ALGO)  # fmt: skip
        index = PrefixIndex(max(1, status.kv_blocks_total), status.block_size, directory=self.directory, owner=eid)
        self.engines[eid] = EnginePrefixes(index, events)
        return index

    def blocks_of(self, token_ids: Sequence[int] | None) -> tuple[int, ...]:
        """A prompt's full-block hashes, as engines publish them; () when no
        engine tracks a prefix cache or the ids are unknown."""
        if not token_ids or self.block_size is None or not self.engines:
            return ()
        return tuple(external(h) for h in block_hashes(token_ids, self.block_size, seed=self.seed))

    def apply(self, eid: str, batch: KVEventBatch) -> None:
        """One batch of the engine's KV-cache events."""
        ep = self.engines.get(eid)
        if ep is None:
            return
        ep.batches += 1
        for ev in batch.events:
            if isinstance(ev, BlockStored):
                # vLLM 0.32 sends extra_keys as one entry per block, None where the block
                # has none ([None, None, ...]): only a block with some (LoRA, multimodal,
                # cache salt) hashes unlike ours
                plain = not ev.extra_keys or all(k is None for k in ev.extra_keys)
                if ev.block_size == ep.index.block_tokens and not ev.lora_id and plain:
                    parent = None if ev.parent_block_hash is None else _int(ev.parent_block_hash)
                    ep.index.insert([_int(h) for h in ev.block_hashes], parent)
            elif isinstance(ev, BlockRemoved):
                ep.index.remove([_int(h) for h in ev.block_hashes])
            elif isinstance(ev, AllBlocksCleared):
                ep.index.clear()

    def routed(self, eid: str, prompt_tokens: int, predicted_hit: int) -> None:
        """A prompt with block hashes went to the engine; the policy expected
        ``predicted_hit`` of its tokens from the engine's cache."""
        ep = self.engines.get(eid)
        if ep is not None:
            ep.routed_prompt_tokens += prompt_tokens
            ep.predicted_hit_tokens += predicted_hit

    def lost(self, eid: str, batches: int) -> None:
        """Batches of events were published and never received: the index may
        hold blocks the engine evicted, or miss some it stored, until LRU and
        later events correct it. Counted, and said once per engine."""
        ep = self.engines.get(eid)
        if ep is None:
            return
        if not ep.lost_batches:
            log.warning("engine %s: %d KV-event batches lost; its prefix index is an estimate until later events "
                        "correct it", eid, batches)  # fmt: skip
        ep.lost_batches += batches

    def forget(self, eid: str) -> None:
        """The engine left: its blocks leave the directory."""
        ep = self.engines.pop(eid, None)
        if ep is not None:
            ep.index.clear()

    def summary(self, eid: str) -> dict[str, Any] | None:
        ep = self.engines.get(eid)
        return ep.summary() if ep is not None else None


def _int(h: bytes | int) -> int:
    """Hashes arrive as 64-bit ints (vLLM's default) or as the 32 hash bytes."""
    return h if isinstance(h, int) else external(h)
