"""Step-time predictor: seconds of one engine step that decodes ``batch``
sequences (``context`` tokens of KV between them) and prefills ``chunk`` prompt
tokens alongside (a mixed, chunked-prefill step; ``batch=0`` is a pure prefill
step, ``chunk=0`` a pure decode step).

- The decode part is ``a + b * batch + c * context``: weights are read once per
  step, each sequence costs its sampling and per-token work, and attention reads
  every sequence's KV. Fitted by least squares to a profile's decode grid, and
  corrected online by pure decode steps (an exponentially weighted ratio, as the
  prefill predictor is).
- The chunk adds its marginal prefill time: the prefill predictor's time for
  ``chunk`` tokens less its time for none (the step's fixed part, which the
  decode part already pays). Attention of a chunk over the earlier chunks of its
  own prompt is left out: the step is predicted as if each chunk were a prompt
  of its own (an underestimate that grows with the prompt; the online
  correction from mixed steps takes it up).

Pure: numbers in, numbers out; drivers fold in their engines' step records.
"""

from __future__ import annotations

from collections.abc import Iterable

from ecoserve.policy.predictor import PrefillTimePredictor, folded, least_squares3


class DecodeStepModel:
    def __init__(self, coeffs: tuple[float, float, float], *, alpha: float = 0.2, min_ratio: float = 0.2,
                 max_ratio: float = 5.0) -> None:  # fmt: skip
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.coeffs = coeffs
        self.alpha, self.min_ratio, self.max_ratio = alpha, min_ratio, max_ratio
        self.correction = 1.0

    @classmethod
    def fit(cls, points: Iterable[tuple[int, int, float]], **kw) -> DecodeStepModel:
        """Least squares over (batch, context tokens, seconds) points, e.g. a
        profile's decode grid (context = batch x mean context)."""
        pts = [(float(b), float(c), float(s)) for b, c, s in points]
        if len({(b, c) for b, c, _ in pts}) < 3:
            raise ValueError("a decode-step fit needs at least three distinct (batch, context) points")
        sb = max(b for b, _, _ in pts) or 1.0  # scaled for well-conditioned normal equations
        sc = max(c for _, c, _ in pts) or 1.0
        a, kb, kc = least_squares3(((1.0, b / sb, c / sc), s) for b, c, s in pts)
        return cls((a, kb / sb, kc / sc), **kw)

    def base(self, batch: int, context: int) -> float:
        a, b, c = self.coeffs
        return max(0.0, a + b * batch + c * context)

    def predict(self, batch: int, context: int) -> float:
        return self.base(batch, context) * self.correction

    def observe(self, batch: int, context: int, seconds: float) -> None:
        """Fold in one measured pure decode step."""
        predicted = self.base(batch, context)
        if predicted > 0 and seconds > 0:
            self.correction = folded(self.correction, seconds / predicted, self.alpha, self.min_ratio, self.max_ratio)


class StepTimePredictor:
    def __init__(self, prefill: PrefillTimePredictor, decode: DecodeStepModel, *, alpha: float = 0.2) -> None:
        self.prefill = prefill
        self.decode = decode
        self.alpha = alpha
        # measured over predicted chunk part of mixed steps (see observe_step)
        self.chunk_correction = 1.0

    def chunk_time(self, chunk: int) -> float:
        """The marginal seconds ``chunk`` prompt tokens add to a decode step."""
        if chunk <= 0:
            return 0.0
        p = self.prefill
        return max(0.0, p.predict(chunk) - p.predict(0)) * self.chunk_correction

    def step_time(self, chunk: int, batch: int, context: int) -> float:
        if batch <= 0:
            return self.prefill.predict(chunk) if chunk > 0 else 0.0
        return self.decode.predict(batch, context) + self.chunk_time(chunk)

    def largest_chunk(self, batch: int, context: int, seconds: float, cap: int) -> int:
        """The most prompt tokens (at most ``cap``) a step of ``batch`` decodes
        may take and still last at most ``seconds`` (0 if even none fits)."""
        if cap <= 0 or self.step_time(1, batch, context) > seconds:
            return 0
        if self.step_time(cap, batch, context) <= seconds:
            return cap
        lo, hi = 1, cap  # step_time(lo) fits, step_time(hi) does not; it grows with the chunk
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.step_time(mid, batch, context) <= seconds:
                lo = mid
            else:
                hi = mid
        return lo

    def observe_step(self, chunk: int, batch: int, context: int, seconds: float, prompts: int = 1) -> None:
        """Fold in one engine step: a pure prefill step calibrates the prefill
        predictor, a pure decode step the decode model, a mixed step the chunk
        part (what it took beyond the predicted decode part)."""
        if batch <= 0:
            if chunk > 0:
                self.prefill.observe_step("prefill", chunk, seconds, prompts)
            return
        if chunk <= 0:
            self.decode.observe(batch, context, seconds)
            return
        base = self.chunk_time(chunk) / self.chunk_correction
        extra = seconds - self.decode.predict(batch, context)
        if base > 0 and extra > 0:
            self.chunk_correction = folded(self.chunk_correction, extra / base, self.alpha, 0.2, 5.0)
