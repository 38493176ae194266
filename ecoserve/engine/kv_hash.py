"""vLLM's prefix-cache block hashes, computed outside vLLM.

Rule: the same bytes vLLM 0.32 computes with ``--prefix-caching-hash-algo
sha256_cbor`` (``vllm/v1/core/kv_cache_utils.py: hash_block_tokens``,
``vllm/utils/hashing.py: sha256_cbor``), so a coordinator can tell which
engine holds a prompt's prefix from the token ids alone, and match the hashes
an engine publishes in its KV-cache events (``BlockStored.block_hashes``):

- a block is ``block_size`` consecutive prompt tokens; only full blocks count;
- block k's hash is ``sha256(cbor([parent, tuple(token_ids), extra_keys]))``
  with canonical CBOR, ``parent`` the previous block's hash (bytes), and for
  the first block ``NONE_HASH = sha256(cbor(seed))``;
- ``seed`` is ``$PYTHONHASHSEED`` if the engine has it set, else
  ``"vllm-none-hash"`` (vLLM's fixed seed for cryptographic hashes);
- ``extra_keys`` is None for plain text requests (no LoRA, multimodal input or
  cache salt: those change the hash, and such requests are not matched here);
- KV events carry each hash as its last 8 bytes read as an integer by default
  (``external``), the full 32 bytes with ``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0``;
- the block size is the engine's (128 tokens on vLLM 0.32's CPU backend).

vLLM's default algorithm, ``sha256``, hashes a *pickle* of the same tuple:
Python-version dependent bytes we will not produce (no pickle anywhere in this
project). Engines started by ``ecoserve serve`` use ``sha256_cbor``. Canonical
CBOR of these three shapes (bytes, an array of non-negative ints, null; a text
seed) is written by hand below: no cbor2 dependency for the coordinator.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

HASH_ALGO = "sha256_cbor"  # what engines must be started with (--prefix-caching-hash-algo)
DEFAULT_SEED = "vllm-none-hash"


def _head(major: int, n: int) -> bytes:
    """A CBOR item head: major type and argument, in the shortest form (canonical)."""
    if n < 24:
        return bytes([major << 5 | n])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | info]) + n.to_bytes(size, "big")
    raise ValueError("integer too large for CBOR")


def _cbor_block(parent: bytes, token_ids: Sequence[int]) -> bytes:
    parts = [b"\x83", _head(2, len(parent)), parent, _head(4, len(token_ids))]  # [parent, [ids...], null]
    for t in token_ids:
        if t < 0:
            raise ValueError("token ids are non-negative")
        parts.append(_head(0, t))
    parts.append(b"\xf6")
    return b"".join(parts)


def none_hash(seed: str | None = None) -> bytes:
    """The first block's parent: ``sha256(cbor(seed))``."""
    s = (seed if seed is not None else os.environ.get("PYTHONHASHSEED", DEFAULT_SEED)).encode()
    return hashlib.sha256(_head(3, len(s)) + s).digest()


def external(block_hash: bytes) -> int:
    """A hash as engines publish it in KV events by default
    (``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES``): its last 8 bytes as an integer."""
    return int.from_bytes(block_hash, "big") & ((1 << 64) - 1)


def block_hashes(token_ids: Sequence[int], block_size: int, *, seed: str | None = None) -> list[bytes]:
    """The hashes of the full blocks of a prompt's token ids, in order."""
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    parent = none_hash(seed)
    out: list[bytes] = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hashlib.sha256(_cbor_block(parent, token_ids[start : start + block_size])).digest()
        out.append(parent)
    return out
