"""The prompt-token budget of one chunked-prefill step, from the decoders' slack.

Sarathi gives every step the same token budget, tuned for the worst case. But a
decoder's slack (its saved TPOT: how long until its next token is due, see
``RequestState.saved_tpot``) is often far more than one decode step, and what
it has banked can pay for a larger prompt chunk. The rule: the step may last as
long as the least-slack decoder can wait for its next token, less
``keep_tpots`` TPOTs (and ``margin_s``); the budget is the largest chunk whose
predicted step (``StepTimePredictor``) fits. So that decoder's next token still
comes ``keep_tpots`` TPOTs before it is due: a reserve against the predictor's
errors and the steps to come. A request that just started holds exactly one
TPOT (see ``saved_tpot``), so with the default of one it gets Sarathi's budget
until its steps have banked more.

Measured (`ecoserve simulate sweep --policies sarathi,sarathi-dyn`, CodeLlama-34B,
8 L20, LongBench, P90): spending the slack down to none (``keep_tpots=0``) lost
to the best static budget (4.99 against 5.64 req/s): every decoder then runs at
exactly the SLO, and any step longer than predicted misses it.

Two bounds: never less than Sarathi's own rule at this batch (its static budget
less one token per decode, so the dynamic budget only ever adds to Sarathi),
never more than the engine's per-step limit less the decodes. With nothing
decoding, nobody's TPOT is at stake: the limit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ecoserve.policy.step_time import StepTimePredictor


@dataclass(frozen=True, slots=True)
class ChunkBudgetRule:
    tpot: float  # the TPOT SLO, seconds
    static_budget: int  # Sarathi's tokens per step (decodes included): the floor
    max_budget: int  # the engine's max_num_batched_tokens: the ceiling
    keep_tpots: float = 1.0  # slack the least-slack decoder keeps after the step, in TPOTs
    margin_s: float = 0.0  # seconds kept beside it
    # Sarathi's rule at the actual batch: the floor is also the largest chunk whose
    # step lasts at most this share of the TPOT SLO (None: the static budget's only)
    floor_tpot_share: float | None = None

    def __post_init__(self) -> None:
        if self.tpot <= 0:
            raise ValueError("tpot must be > 0")
        if not 0 < self.static_budget <= self.max_budget:
            raise ValueError("need 0 < static_budget <= max_budget")
        if self.margin_s < 0 or self.keep_tpots < 0:
            raise ValueError("keep_tpots and margin_s must be >= 0")

    def floor(self, batch: int) -> int:
        """Sarathi's prompt tokens at this batch."""
        return max(0, self.static_budget - batch)

    def prompt_budget(self, min_slack: float | None, batch: int, context: int, steps: StepTimePredictor) -> int:
        """Prompt tokens the next step may take. ``min_slack``: the least saved
        TPOT among the ``batch`` decoders now (None: nothing decodes)."""
        ceiling = max(0, self.max_budget - batch)
        if min_slack is None or batch <= 0:
            return ceiling
        floor = self.floor(batch)
        if self.floor_tpot_share is not None:
            floor = max(floor, steps.largest_chunk(batch, context, self.floor_tpot_share * self.tpot, ceiling))
        fits = steps.largest_chunk(batch, context, min_slack - self.keep_tpots * self.tpot - self.margin_s, ceiling)
        return min(ceiling, max(floor, fits))


def least_slack(decoders: Iterable[tuple[int, float]], now: float, tpot: float) -> float | None:
    """The least saved TPOT among decoders given as (tokens out, first-token
    time): ``tokens * TPOT + t_first - now`` (None: no decoders)."""
    best = None
    for tokens, t_first in decoders:
        s = tokens * tpot + t_first - now
        if best is None or s < best:
            best = s
    return best
