"""The phases an instance can be commanded into (same names as the plugin's)."""

from __future__ import annotations

from enum import Enum


class Phase(str, Enum):
    PREFILL = "prefill"  # admit and prefill new requests; decodes pause, keep their KV
    DECODE = "decode"  # admit nothing new; running requests decode
    MIXED = "mixed"  # stock vLLM behaviour (baselines)
    CHUNKED = "chunked"  # decode every request, plus a budgeted prompt chunk per step (policy/trickle.py)
