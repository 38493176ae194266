"""Service-level objectives: the two latency targets every decision serves."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SLO:
    """TTFT: seconds from arrival to the first token (including any wait for a
    phase switch). TPOT: mean seconds per output token after the first."""

    ttft: float
    tpot: float

    def __post_init__(self) -> None:
        if not (self.ttft > 0 and self.tpot > 0):
            raise ValueError(f"SLOs must be positive, got ttft={self.ttft} tpot={self.tpot}")
