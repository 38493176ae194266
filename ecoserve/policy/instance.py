"""What the policy knows about one instance (one model replica, one engine).

Besides its requests, an instance keeps running aggregates so the constraint
check is O(1) rather than a walk over its requests: the open window's size,
unstarted count and predicted prefill total; the decoders' (every request with
a first token) count, output tokens and first-token times (mean slack =
(TPOT * tokens + t_first) / n - now); and the KV tokens its requests hold.

KV reservations share prompt blocks as vLLM's prefix cache does: once a
request has its first token, its prompt's full blocks are in the engine's KV,
and a later request whose prompt starts with them uses them instead of its
own. Such blocks are in ``pooled`` (block -> requests using it) and counted
once in ``kv_reserved``; a request's own ``kv_reserved`` is the rest of what
it holds. So ``kv_reserved == sum(r.kv_reserved) + block_tokens * len(pooled)``.
Every change goes through the transition methods below, which keep them exact;
``window()`` and ``decoding()`` recompute membership from scratch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ecoserve.policy.phase import Phase
from ecoserve.policy.prefix_index import PrefixIndex, leading_run
from ecoserve.policy.request import RequestState


@dataclass(slots=True, eq=False)
class InstanceState:
    id: str
    kv_capacity_tokens: int
    phase: Phase = Phase.DECODE
    # When the instance last switched into its current prefill window; None while
    # it is not in one. Requests routed at or after it are the window's prefills.
    window_start: float | None = None
    window_seq: int = 0  # numbers the windows; the open one is window_seq
    phase_since: float = 0.0
    healthy: bool = True
    draining: bool = False  # being removed: takes nothing new, finishes what it has
    requests: dict[str, RequestState] = field(default_factory=dict)
    kv_reserved: int = 0
    url: str = ""  # opaque to the policy; lets drivers keep one record per engine
    # Requests the engine can hold at once (vLLM's max_num_seqs); None: no limit.
    # A window must not route more than the engine can admit: in PREFILL it could
    # neither admit them nor decode to free a seat.
    max_requests: int | None = None
    # Running aggregates (see the module docstring).
    window_size: int = 0
    window_unstarted: int = 0
    window_pred: float = 0.0
    # Requests routed outside any window that have no first token yet (trickled
    # in chunks beside the decodes: policy/trickle.py): count, predicted prefill
    # seconds and the prompt tokens their chunks compute (less what the prefix
    # cache holds). Always zero under Algorithm 1, which routes into windows only.
    trickle_n: int = 0
    trickle_pred: float = 0.0
    trickle_tokens: int = 0
    dec_n: int = 0
    dec_tokens: int = 0
    dec_tfirst: float = 0.0
    kv_used: int = 0  # prompt + output tokens held by its requests (not reservations)
    # The policy's estimate of the engine's prefix cache (policy/prefix_index.py);
    # None: prefixes are not considered.
    prefix: PrefixIndex | None = None
    # Prompt blocks in the engine's KV that requests share (see the module docstring).
    pooled: dict[int, int] = field(default_factory=dict)
    # min over decoders of (TPOT * tokens + t_first), for one TPOT; None: stale.
    # Cached because a routing walk or a re-offer checks an instance many times
    # between two changes of its decoders.
    _min_key: float | None = field(default=None, repr=False)
    _min_key_tpot: float = field(default=0.0, repr=False)
    _min_id: str | None = field(default=None, repr=False)  # the decoder with the least slack

    def __post_init__(self) -> None:
        if self.kv_capacity_tokens <= 0:
            raise ValueError(f"instance {self.id}: kv_capacity_tokens must be > 0")

    @property
    def accepting(self) -> bool:
        return self.healthy and not self.draining

    @property
    def kv_free(self) -> int:
        return self.kv_capacity_tokens - self.kv_reserved

    def cached_tokens(self, req: RequestState) -> int:
        """Prompt tokens of ``req`` this instance's prefix cache is thought to hold."""
        if self.prefix is None or not req.blocks:
            return 0
        return self.prefix.cached_tokens(req.blocks, req.prompt_tokens)

    def shared_blocks(self, req: RequestState) -> int:
        """How many of ``req``'s leading blocks it would share from the pool here
        (never the block holding its last token: that token is always computed)."""
        pooled, blocks = self.pooled, req.blocks
        if not blocks or blocks[0] not in pooled or self.prefix is None:  # most prompts share nothing: no slice
            return 0
        return leading_run(req.blocks[: (req.prompt_tokens - 1) // self.prefix.block_tokens], pooled)

    def shared_tokens(self, req: RequestState) -> int:
        """KV tokens of ``req``'s prompt it would not need here: blocks shared from the pool."""
        n = self.shared_blocks(req)
        return n * self.prefix.block_tokens if n else 0

    def in_window(self, req: RequestState) -> bool:
        return self.window_start is not None and req.window == self.window_seq

    def window(self) -> list[RequestState]:
        """Requests routed into the current prefill window, in routing order."""
        return [r for r in self.requests.values() if self.in_window(r)]

    def decoding(self) -> list[RequestState]:
        """Requests that have their first token: their TPOT clock runs, and
        every prefill the instance still does pauses them, whether they came in
        an earlier window or in the open one."""
        return [r for r in self.requests.values() if r.started]

    @property
    def num_waiting(self) -> int:
        return len(self.requests) - self.dec_n

    @property
    def num_running(self) -> int:
        return self.dec_n

    @property
    def has_seat(self) -> bool:
        return self.max_requests is None or len(self.requests) < self.max_requests

    def mean_slack(self, now: float, tpot: float) -> float | None:
        """Mean saved TPOT of the decoders, or None when nothing decodes."""
        if not self.dec_n:
            return None
        return (tpot * self.dec_tokens + self.dec_tfirst) / self.dec_n - now

    def min_slack(self, now: float, tpot: float) -> float | None:
        """The least saved TPOT among the decoders, or None when nothing decodes."""
        if not self.dec_n:
            return None
        if self._min_key is None or self._min_key_tpot != tpot:
            # Kept between calls: a decoder's key only grows with its tokens, so
            # only the least one's progress or leaving forces this scan again.
            best, best_id = math.inf, None
            for r in self.requests.values():
                if r.first_token_at is not None and (k := r.tokens_out * tpot + r.first_token_at) < best:
                    best, best_id = k, r.id
            self._min_key, self._min_id, self._min_key_tpot = best, best_id, tpot
        return self._min_key - now

    # -- transitions ---------------------------------------------------------------------

    def open_window(self, now: float) -> None:
        self.window_seq += 1
        self.window_start = now
        self.window_size = self.window_unstarted = 0
        self.window_pred = 0.0
        self.phase, self.phase_since = Phase.PREFILL, now

    def close_window(self, now: float, phase: Phase = Phase.DECODE) -> None:
        """Every window member has its first token (they are decoders already);
        the instance goes back to ``phase``."""
        self.window_start = None
        self.window_size = self.window_unstarted = 0
        self.window_pred = 0.0
        self.phase, self.phase_since = phase, now

    def place(self, req: RequestState, in_window: bool) -> None:
        """``req.kv_reserved``: what it needs here besides the blocks it shares
        (``shared_blocks``, taken from the pool now)."""
        req.pooled = req.blocks[: self.shared_blocks(req)]
        for b in req.pooled:
            self.pooled[b] += 1
        self.requests[req.id] = req
        self.kv_reserved += req.kv_reserved
        self.kv_used += req.prompt_tokens
        if in_window:
            req.window = self.window_seq
            self.window_size += 1
            self.window_unstarted += 1
            self.window_pred += req.predicted_prefill
        elif req.trickled:
            self._trickle(req, 1)

    def _trickle(self, req: RequestState, sign: int) -> None:
        self.trickle_n += sign
        self.trickle_pred += sign * req.predicted_prefill
        self.trickle_tokens += sign * (req.prompt_tokens - req.cached_tokens)  # what its chunks compute

    def start(self, req: RequestState) -> None:
        """``req`` just had its first token (tokens_out already counted)."""
        if self.in_window(req):
            self.window_unstarted -= 1
        elif req.trickled:
            self._trickle(req, -1)
        self.dec_n += 1
        self.dec_tokens += req.tokens_out
        self.dec_tfirst += req.first_token_at
        self.kv_used += req.tokens_out
        if self._min_key is not None and (k := req.tokens_out * self._min_key_tpot + req.first_token_at) < self._min_key:
            self._min_key, self._min_id = k, req.id
        if self.prefix is not None and req.blocks:
            self._pool_prompt(req)

    def _pool_prompt(self, req: RequestState) -> None:
        """Its prompt is in the engine's KV: its own full blocks join the pool
        (moved from its reservation, the total unchanged), except those another
        request computed at the same time (the engine holds both copies)."""
        pooled, bt = self.pooled, self.prefix.block_tokens
        mine = [b for b in req.blocks[len(req.pooled) :] if b not in pooled]
        for b in mine:
            pooled[b] = 1
        req.pooled += tuple(mine)
        req.kv_reserved -= bt * len(mine)

    def add_tokens(self, req: RequestState, count: int) -> None:
        """``count`` more tokens for a request that had started before."""
        req.tokens_out += count
        self.dec_tokens += count
        self.kv_used += count
        if req.id == self._min_id:
            self._min_key = None

    def leave(self, req: RequestState) -> None:
        del self.requests[req.id]
        self.kv_reserved -= req.kv_reserved
        if req.pooled:
            pooled, bt = self.pooled, self.prefix.block_tokens
            for b in req.pooled:
                if pooled[b] == 1:
                    del pooled[b]
                    self.kv_reserved -= bt
                else:
                    pooled[b] -= 1
            req.pooled = ()
        self.kv_used -= req.prompt_tokens + req.tokens_out
        if self.in_window(req):
            self.window_size -= 1
            self.window_pred -= req.predicted_prefill
            if not req.started:
                self.window_unstarted -= 1
        elif req.trickled and not req.started:
            self._trickle(req, -1)
        if req.started:
            self.dec_n -= 1
            self.dec_tokens -= req.tokens_out
            self.dec_tfirst -= req.first_token_at
            if req.id == self._min_id:
                self._min_key = None
