"""How long a client refused with 429 should wait: the ``Retry-After`` header.

A 429 means the pending queue is full (``--max-pending`` requests). A retry
sent before most of that queue has drained would find it full again, and all
refused clients retrying at once would refuse each other; so the advice is
the time the queue takes to drain at the recent completion rate,
``ceil(max_pending / completions per second)``, between 1 and 60 seconds. The
rate is counted over the last ``WINDOW_S`` seconds in one-second buckets: a
fixed, small amount of memory however many requests come. With no completion
in the window (the engines are stalled, or just started) the advice is
``IDLE_ADVICE_S``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from ecoserve.live import Observer

WINDOW_S = 10
MIN_S, MAX_S = 1, 60
IDLE_ADVICE_S = 10


class RetryAdvisor(Observer):
    """An ``Observer`` that counts completions and passes every event on to ``inner``."""

    def __init__(self, inner: Observer, clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self._clock = clock
        self._buckets = [0] * WINDOW_S  # completions per second, a ring indexed by int(second) % WINDOW_S
        self._seconds = [-1] * WINDOW_S  # which second each bucket counts

    def on_routed(self, instance_id: str, reason: str) -> None:
        self.inner.on_routed(instance_id, reason)

    def on_queued(self, reason: str) -> None:
        self.inner.on_queued(reason)

    def on_done(self, outcome: str, ttft: float | None, tpot: float | None) -> None:
        self.inner.on_done(outcome, ttft, tpot)
        if outcome == "success":
            second = int(self._clock())
            i = second % WINDOW_S
            if self._seconds[i] != second:
                self._seconds[i], self._buckets[i] = second, 0
            self._buckets[i] += 1

    def completion_rate(self) -> float:
        """Successful completions per second over the last WINDOW_S seconds."""
        now = int(self._clock())
        done = sum(n for n, s in zip(self._buckets, self._seconds, strict=True) if now - WINDOW_S < s <= now)
        return done / WINDOW_S

    def seconds(self, queued: int) -> int:
        """Retry-After for a refusal with ``queued`` requests ahead."""
        rate = self.completion_rate()
        if rate <= 0:
            return IDLE_ADVICE_S
        return int(min(MAX_S, max(MIN_S, math.ceil(queued / rate))))
