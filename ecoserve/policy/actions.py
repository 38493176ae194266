"""What a router decides: the actions its driver (coordinator or simulator)
carries out. Routers return lists of these from every event method."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ecoserve.policy.phase import Phase


class Constraint(str, Enum):
    """Why a request could not be placed on an instance (Algorithm 1)."""

    TTFT = "ttft"  # the window's predicted prefill time would pass the TTFT SLO
    TPOT = "tpot"  # decoding requests lack the slack to pause that long
    MEMORY = "memory"  # its KV (prompt + output reservation) does not fit
    SEATS = "seats"  # the engine already holds as many requests as it can run
    NO_INSTANCE = "no_instance"  # nothing healthy and accepting to route to
    QUEUE = "queue"  # earlier requests are pending: FIFO, it waits behind them


@dataclass(frozen=True, slots=True)
class Routed:
    request_id: str
    instance_id: str
    reason: str  # "fits" for the constraint check, or the baseline's name


@dataclass(frozen=True, slots=True)
class Queued:
    request_id: str
    reason: Constraint  # the constraint that failed on the last instance tried


@dataclass(frozen=True, slots=True)
class Rejected:
    request_id: str
    reason: str  # human-readable: why it can never be served


@dataclass(frozen=True, slots=True)
class SetPhase:
    instance_id: str
    phase: Phase


@dataclass(frozen=True, slots=True)
class Drained:
    """A removed instance has finished its last request: safe to stop."""

    instance_id: str


Action = Routed | Queued | Rejected | SetPhase | Drained
