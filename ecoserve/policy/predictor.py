"""Prefill-time predictor: prompt length -> seconds of prefill on one instance.

Two base models, both corrected online by the ratio of observed to predicted
prefill times (an exponentially weighted mean, so the correction follows drift
such as a busier host without jumping on one noisy step):

- a measured profile (prompt length -> seconds), interpolated piecewise-linearly
  and extrapolated along the last segment's slope;
- a fitted quadratic ``a + b*n + c*n^2`` (attention makes prefill super-linear
  in the prompt length), fitted by least squares to measured points.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence


class PrefillTimePredictor:
    def __init__(
        self,
        *,
        points: Sequence[tuple[int, float]] | None = None,
        coeffs: tuple[float, float, float] | None = None,
        alpha: float = 0.2,
        min_ratio: float = 0.2,
        max_ratio: float = 5.0,
    ) -> None:
        if (points is None) == (coeffs is None):
            raise ValueError("give exactly one of points (a profile) or coeffs (a, b, c)")
        if points is not None:
            pts = sorted((int(n), float(s)) for n, s in points)
            if not pts:
                raise ValueError("a profile needs at least one (prompt_tokens, seconds) point")
            if len({n for n, _ in pts}) != len(pts):
                raise ValueError("profile has duplicate prompt lengths")
            if any(s < 0 for _, s in pts):
                raise ValueError("profile has negative times")
            self._xs = [n for n, _ in pts]
            self._ys = [s for _, s in pts]
        self.coeffs = coeffs
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self.min_ratio, self.max_ratio = min_ratio, max_ratio
        self.correction = 1.0
        self.observations = 0

    @classmethod
    def fit_quadratic(cls, points: Iterable[tuple[int, float]], **kw) -> PrefillTimePredictor:
        """Least-squares fit of ``a + b*n + c*n^2`` (normal equations, 3x3)."""
        pts = [(float(n), float(s)) for n, s in points]
        if len({n for n, _ in pts}) < 3:
            raise ValueError("a quadratic fit needs at least three distinct prompt lengths")
        # Scale n to keep the normal equations well conditioned.
        scale = max(n for n, _ in pts) or 1.0
        a, b, c = least_squares3(((1.0, n / scale, (n / scale) ** 2), s) for n, s in pts)
        return cls(coeffs=(a, b / scale, c / scale / scale), **kw)

    def base(self, prompt_tokens: int) -> float:
        """Uncorrected prediction."""
        n = prompt_tokens
        if self.coeffs is not None:
            a, b, c = self.coeffs
            return max(0.0, a + b * n + c * n * n)
        xs, ys = self._xs, self._ys
        if len(xs) == 1:
            return ys[0] * n / xs[0] if xs[0] else ys[0]
        i = bisect.bisect_left(xs, n)
        i = min(max(i, 1), len(xs) - 1)  # segment [i-1, i]; ends extrapolate
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return max(0.0, y0 + (y1 - y0) * (n - x0) / (x1 - x0))

    def predict(self, prompt_tokens: int) -> float:
        return self.base(prompt_tokens) * self.correction

    def predict_uncached(self, prompt_tokens: int, cached_tokens: int) -> float:
        """Prefill of a prompt whose first ``cached_tokens`` are in the prefix
        cache: the rest is computed, and its attention still spans the whole
        context. Under a cost that grows with the prompt (linear layers per
        token, attention per token and context so far), that is the whole
        prompt's cost less the cached part's, plus one step's fixed cost."""
        if cached_tokens <= 0:
            return self.predict(prompt_tokens)
        fixed = self.base(0)
        return max(self.base(prompt_tokens) - self.base(cached_tokens) + fixed, fixed) * self.correction

    def observe(self, prompt_tokens: int, seconds: float) -> None:
        """Fold in one measured prefill (e.g. from an engine's step record)."""
        self._fold(seconds, self.base(prompt_tokens))

    def _fold(self, seconds: float, predicted: float) -> None:
        if predicted <= 0 or seconds <= 0:
            return
        self.correction = folded(self.correction, seconds / predicted, self.alpha, self.min_ratio, self.max_ratio)
        self.observations += 1

    def observe_step(self, kind: str, prefill_tokens: int, seconds: float, prompts: int = 1) -> None:
        """Fold in one engine step, live or simulated: only pure prefill steps
        calibrate (a decode in the step would inflate it). A step that prefilled
        several prompts is compared with the sum of their lone predictions (taken
        as equal shares of its tokens), since that sum is what the constraint
        check charges a window: comparing it with one prompt of their total
        length, the earlier rule, overstated the batch discount (attention is per
        prompt) and halved EcoServe's simulated LongBench goodput."""
        if kind == "prefill" and prefill_tokens > 0 and prompts >= 1:
            self._fold(seconds, prompts * self.base(max(1, round(prefill_tokens / prompts))))


def folded(correction: float, ratio: float, alpha: float, lo: float, hi: float) -> float:
    """An online correction moved toward one measured/predicted ``ratio``
    (clamped to [lo, hi]): an exponentially weighted mean, so it follows drift
    without jumping on one noisy step. Every predictor here corrects this way."""
    return correction + alpha * (min(hi, max(lo, ratio)) - correction)


def least_squares3(rows: Iterable[tuple[tuple[float, float, float], float]]) -> tuple[float, float, float]:
    """Coefficients of the least-squares fit of ``y ~ k . x`` over (x, y) rows
    with three features (normal equations, 3x3)."""
    m = [[0.0] * 4 for _ in range(3)]
    for x, y in rows:
        for i in range(3):
            for j in range(3):
                m[i][j] += x[i] * x[j]
            m[i][3] += x[i] * y
    return solve3(m)


def solve3(m: list[list[float]]) -> tuple[float, float, float]:
    """Gaussian elimination with partial pivoting on a 3x4 augmented matrix."""
    for col in range(3):
        piv = max(range(col, 3), key=lambda r: abs(m[r][col]))
        if abs(m[piv][col]) < 1e-12:
            raise ValueError("degenerate points: cannot fit a quadratic")
        m[col], m[piv] = m[piv], m[col]
        for r in range(col + 1, 3):
            f = m[r][col] / m[col][col]
            for k in range(col, 4):
                m[r][k] -= f * m[col][k]
    out = [0.0, 0.0, 0.0]
    for r in (2, 1, 0):
        out[r] = (m[r][3] - sum(m[r][k] * out[k] for k in range(r + 1, 3))) / m[r][r]
    return out[0], out[1], out[2]
