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

The waiting prompts' TTFT (``waiting``, optional): the budget is also at least
the smallest chunk with which every waiting prompt that can still meet its TTFT
does (``ttft_chunk``), so slack-sized chunks never starve a prompt that a
bigger one would save. Measured on one CPU engine (bench/single_engine.py,
`single-engine-steps/`): without it, where a step of the floor's chunk already
outlasts the TPOT (prefill costs 1.6 ms a token there, a decode step 33 ms),
a decoder that has just started never banks slack while prompts keep coming,
every mixed step runs at the floor, and a 2,040-token prompt takes 34 steps,
holding the prompts behind it past their TTFT. With ``lost_yield``, a prompt
that would miss its TTFT even in one step of the ceiling lets the others go
first, so one lost prompt does not take the ones behind it down too. With
``floor_within_tpot`` the floor is also cut to the largest chunk whose step
lasts at most one TPOT: there, a floor step outlasted it (0.13 s against 106 ms),
so a decoder that had just started missed its TPOT beside a lost prompt's chunks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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
    # prompts that would miss their TTFT even at the ceiling let the others go first (``ttft_plan``)
    lost_yield: bool = False
    # the floor never makes a step outlast the TPOT SLO: where even the static budget's
    # chunk would (a slow prefill), the floor is the largest chunk whose step does not;
    # where the decodes alone outlast it, no chunk size helps them and the floor stands
    floor_within_tpot: bool = False

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

    def prompt_budget(self, min_slack: float | None, batch: int, context: int, steps: StepTimePredictor,
                      waiting: Sequence[tuple[int, float]] = ()) -> int:  # fmt: skip
        """Prompt tokens the next step may take. ``min_slack``: the least saved
        TPOT among the ``batch`` decoders now (None: nothing decodes).
        ``waiting``: the prompts not yet prefilled, as (tokens left, seconds
        until their TTFT is due), in the order the engine prefills them."""
        return self.plan(min_slack, batch, context, steps, waiting)[0]

    def plan(self, min_slack: float | None, batch: int, context: int, steps: StepTimePredictor,
             waiting: Sequence[tuple[int, float]] = ()) -> tuple[int, list[int]]:  # fmt: skip
        """``prompt_budget``, and which of ``waiting`` are lost (``ttft_plan``):
        with ``lost_yield`` the engine holds them back while others wait."""
        ceiling = max(0, self.max_budget - batch)
        need, lost = ttft_plan(waiting, batch, context, steps, ceiling, lost_yield=self.lost_yield) if waiting else (0, [])
        if min_slack is None or batch <= 0:
            return ceiling, lost
        floor = self.floor(batch)
        if self.floor_within_tpot and (within := steps.largest_chunk(batch, context, self.tpot, ceiling)):
            floor = min(floor, within)  # not where the decodes alone outlast the TPOT: no cut protects them
        if self.floor_tpot_share is not None:
            floor = max(floor, steps.largest_chunk(batch, context, self.floor_tpot_share * self.tpot, ceiling))
        fits = steps.largest_chunk(batch, context, min_slack - self.keep_tpots * self.tpot - self.margin_s, ceiling)
        return min(ceiling, max(floor, fits, need)), lost


def prefill_seconds(tokens: int, chunk: int, batch: int, context: int, steps: StepTimePredictor) -> float:
    """Predicted time to prefill ``tokens`` prompt tokens in steps of at most
    ``chunk``, each beside ``batch`` decodes of ``context`` tokens in all."""
    full, rest = divmod(tokens, chunk)
    t = full * steps.step_time(chunk, batch, context) if full else 0.0
    return t + (steps.step_time(rest, batch, context) if rest else 0.0)


def ttft_chunk(waiting: Iterable[tuple[int, float]], batch: int, context: int, steps: StepTimePredictor,
               cap: int, *, lost_yield: bool = False) -> int:  # fmt: skip
    """The smallest chunk (at most ``cap``) with which every waiting prompt
    that can still meet its TTFT does (``ttft_plan``'s first answer)."""
    return ttft_plan(waiting, batch, context, steps, cap, lost_yield=lost_yield)[0]


def ttft_plan(waiting: Iterable[tuple[int, float]], batch: int, context: int, steps: StepTimePredictor,
              cap: int, *, lost_yield: bool = False) -> tuple[int, list[int]]:  # fmt: skip
    """The smallest chunk (at most ``cap``) with which every waiting prompt
    that can still meet its TTFT does, and which prompts cannot (their
    indexes). Prompt k gets its first token when the tokens of prompts 1..k
    are prefilled (the engine takes them in order). ``waiting``: (tokens left,
    seconds until its TTFT is due). A prompt that would miss even at ``cap`` is
    lost: it asks for no chunk of its own; its tokens still come before the
    later prompts', unless ``lost_yield`` (the engine then lets the later ones
    go first: a lost prompt's SLO is missed anyway, theirs need not be).
    0: nobody needs more than the smallest."""
    need, ahead, lost = 0, 0, []
    for k, (left, seconds) in enumerate(waiting):
        left = max(0, left)
        if seconds <= 0 or cap <= 0 or prefill_seconds(ahead + left, cap, batch, context, steps) > seconds:
            lost.append(k)
            if not lost_yield:
                ahead += left
            continue
        ahead += left
        if need and prefill_seconds(ahead, need, batch, context, steps) <= seconds:
            continue  # the chunk an earlier prompt needs serves this one too
        lo, hi = need, cap  # lo misses (or is 0), hi meets: find the smallest that meets
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if prefill_seconds(ahead, mid, batch, context, steps) <= seconds:
                hi = mid
            else:
                lo = mid
        need = hi
    return need, lost


def least_slack(decoders: Iterable[tuple[int, float]], now: float, tpot: float) -> float | None:
    """The least saved TPOT among decoders given as (tokens out, first-token
    time): ``tokens * TPOT + t_first - now`` (None: no decoders)."""
    best = None
    for tokens, t_first in decoders:
        s = tokens * tpot + t_first - now
        if best is None or s < best:
            best = s
    return best
