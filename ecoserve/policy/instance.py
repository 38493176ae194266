"""What the policy knows about one instance (one model replica, one engine).

Besides its requests, an instance keeps running aggregates so the constraint
check is O(1) rather than a walk over its requests: the open window's size,
unstarted count and predicted prefill total, and the decoders' count, output
tokens and first-token times (mean slack = (TPOT * tokens + t_first) / n - now).
Every change goes through the transition methods below, which keep them exact;
``window()`` and ``decoding()`` recompute membership from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ecoserve.policy.phase import Phase
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
    # Running aggregates (see the module docstring).
    window_size: int = 0
    window_unstarted: int = 0
    window_pred: float = 0.0
    dec_n: int = 0
    dec_tokens: int = 0
    dec_tfirst: float = 0.0

    def __post_init__(self) -> None:
        if self.kv_capacity_tokens <= 0:
            raise ValueError(f"instance {self.id}: kv_capacity_tokens must be > 0")

    @property
    def accepting(self) -> bool:
        return self.healthy and not self.draining

    @property
    def kv_free(self) -> int:
        return self.kv_capacity_tokens - self.kv_reserved

    def in_window(self, req: RequestState) -> bool:
        return self.window_start is not None and req.window == self.window_seq

    def window(self) -> list[RequestState]:
        """Requests routed into the current prefill window, in routing order."""
        return [r for r in self.requests.values() if self.in_window(r)]

    def decoding(self) -> list[RequestState]:
        """Requests that have their first token and are not in the open window."""
        return [r for r in self.requests.values() if r.started and not self.in_window(r)]

    @property
    def num_waiting(self) -> int:
        return sum(1 for r in self.requests.values() if not r.started)

    @property
    def num_running(self) -> int:
        return sum(1 for r in self.requests.values() if r.started)

    def mean_slack(self, now: float, tpot: float) -> float | None:
        """Mean saved TPOT of the decoders, or None when nothing decodes."""
        if not self.dec_n:
            return None
        return (tpot * self.dec_tokens + self.dec_tfirst) / self.dec_n - now

    # -- transitions ---------------------------------------------------------------------

    def open_window(self, now: float) -> None:
        self.window_seq += 1
        self.window_start = now
        self.window_size = self.window_unstarted = 0
        self.window_pred = 0.0
        self.phase, self.phase_since = Phase.PREFILL, now

    def close_window(self, now: float) -> None:
        """Every window member has its first token: they become decoders."""
        for r in self.window():
            self._join_decoders(r)
        self.window_start = None
        self.window_size = self.window_unstarted = 0
        self.window_pred = 0.0
        self.phase, self.phase_since = Phase.DECODE, now

    def place(self, req: RequestState, in_window: bool) -> None:
        self.requests[req.id] = req
        self.kv_reserved += req.kv_reserved
        if in_window:
            req.window = self.window_seq
            self.window_size += 1
            self.window_unstarted += 1
            self.window_pred += req.predicted_prefill

    def start(self, req: RequestState) -> None:
        """``req`` just had its first token (tokens_out already counted)."""
        if self.in_window(req):
            self.window_unstarted -= 1
        else:
            self._join_decoders(req)

    def add_tokens(self, req: RequestState, count: int) -> None:
        """``count`` more tokens for a request that had started before."""
        req.tokens_out += count
        if not self.in_window(req):
            self.dec_tokens += count

    def leave(self, req: RequestState) -> None:
        del self.requests[req.id]
        self.kv_reserved -= req.kv_reserved
        if self.in_window(req):
            self.window_size -= 1
            self.window_pred -= req.predicted_prefill
            if not req.started:
                self.window_unstarted -= 1
        elif req.started:
            self.dec_n -= 1
            self.dec_tokens -= req.tokens_out
            self.dec_tfirst -= req.first_token_at

    def _join_decoders(self, req: RequestState) -> None:
        self.dec_n += 1
        self.dec_tokens += req.tokens_out
        self.dec_tfirst += req.first_token_at
