"""Per-step records: what each engine step computed and how long it took.

The coordinator fits its prefill-time predictor online from these (prefill
tokens -> duration), and the tests assert from them that no batch mixes phases.
"""

from __future__ import annotations

import time
from collections import deque

from ecoserve.protocol import StepRecord

RECENT = 64  # records kept for status replies


class StepRecorder:
    def __init__(self) -> None:
        self.num_steps = 0
        self.recent: deque[StepRecord] = deque(maxlen=RECENT)
        self.unsent: list[StepRecord] = []
        # Keyed by the SchedulerOutput: with async scheduling several steps are
        # in flight, and update_from_output hands back the very same object.
        self._open: dict[int, tuple[int, float, float, tuple[int, int, int, int]]] = {}

    def begin(self, output, requests: dict, wall: float, t0: float) -> None:
        """Classify the scheduled requests; call right after schedule()."""
        prefill_tokens = prefill_reqs = decode_batch = decode_ctx = 0
        for req_id, n in output.num_scheduled_tokens.items():
            req = requests[req_id]
            before = req.num_computed_tokens - n  # schedule() already advanced it
            # vLLM's own prefill boundary; num_tokens - 1 covers resumed requests
            # recomputing their output after a preemption.
            if before < max(req.num_prompt_tokens, req.num_tokens - 1):
                prefill_tokens += n
                prefill_reqs += 1
            else:
                decode_batch += 1
                decode_ctx += before
        self.num_steps += 1
        self._open[id(output)] = (
            self.num_steps,
            wall,
            t0,
            (prefill_tokens, prefill_reqs, decode_batch, decode_ctx),
        )

    def finish(self, output) -> StepRecord | None:
        """Close the step's record; call at the end of update_from_output()."""
        opened = self._open.pop(id(output), None)
        if opened is None:
            return None
        step, wall, t0, (pt, pr, db, dc) = opened
        kind = ("mixed" if db else "prefill") if pt else ("decode" if db else "empty")
        rec = StepRecord(
            step=step,
            start=wall,
            duration_s=time.perf_counter() - t0,
            kind=kind,
            prefill_tokens=pt,
            prefill_reqs=pr,
            decode_batch=db,
            decode_context_tokens=dc,
        )
        self.recent.append(rec)
        self.unsent.append(rec)
        return rec

    def take_unsent(self) -> list[StepRecord]:
        out, self.unsent = self.unsent, []
        return out
