"""Prompt and output length distributions.

The paper's three datasets are modelled as synthetic distributions whose means
match the published statistics (docs/PAPER.md, "Evaluation setup"); the
Azure trace (or any trace file) gives an empirical distribution.

Shapes (our choice: the paper gives only means). Each length is an independent
lognormal, rounded to an integer and clipped to ``[lo, hi]``. ``sigma`` is the
standard deviation of the underlying normal (the shape); ``mu`` is then solved
so that the mean of the *clipped* continuous distribution equals the target
mean exactly (closed form for a clipped lognormal, bisection on mu), so
clipping does not shift the realised mean. Input and output are drawn
independently: the paper publishes no joint statistics.

| dataset   | input mean / sigma / clip | output mean / sigma / clip | why this shape |
|-----------|---------------------------|----------------------------|----------------|
| alpaca    | 20.63 / 0.6 / [4, 512]    | 163.80 / 0.8 / [1, 1024]   | short instructions, GPT-4 answers of a paragraph or two |
| sharegpt  | 343.76 / 1.0 / [4, 4096]  | 237.20 / 1.0 / [1, 2048]   | heavy-tailed chat turns (as in vLLM's ShareGPT benchmark) |
| longbench | 2686.89 / 0.5 / [512, 8192] | 101.78 / 0.8 / [1, 512]  | long documents, short answers (QA, summaries) |

A model with a shorter context than a sampled request truncates the prompt
(``fit_to_context``), as a serving stack with prompt truncation would; the
realised means are then lower, and the simulator reports them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


@dataclass(frozen=True, slots=True)
class ClippedLogNormal:
    """A lognormal length with a target mean, clipped to ``[lo, hi]``."""

    mean: float
    sigma: float
    lo: int
    hi: int

    def __post_init__(self) -> None:
        if not (1 <= self.lo < self.hi):
            raise ValueError(f"need 1 <= lo < hi, got [{self.lo}, {self.hi}]")
        if not (self.lo < self.mean < self.hi):
            raise ValueError(f"mean {self.mean} must lie strictly inside [{self.lo}, {self.hi}]")
        if self.sigma <= 0:
            raise ValueError("sigma must be > 0")

    @staticmethod
    def clipped_mean(mu: float, sigma: float, lo: float, hi: float) -> float:
        """E[min(max(X, lo), hi)] for X ~ LogNormal(mu, sigma)."""
        a, b = math.log(lo), math.log(hi)
        below = _phi((a - mu) / sigma)
        above = 1.0 - _phi((b - mu) / sigma)
        inside = math.exp(mu + sigma * sigma / 2) * (
            _phi((b - mu - sigma * sigma) / sigma) - _phi((a - mu - sigma * sigma) / sigma)
        )
        return lo * below + hi * above + inside

    @property
    def mu(self) -> float:
        lo_mu, hi_mu = math.log(self.lo) - 10 * self.sigma, math.log(self.hi) + 10 * self.sigma
        for _ in range(200):  # the clipped mean is increasing in mu
            mid = (lo_mu + hi_mu) / 2
            if self.clipped_mean(mid, self.sigma, self.lo, self.hi) < self.mean:
                lo_mu = mid
            else:
                hi_mu = mid
        return (lo_mu + hi_mu) / 2

    def sampler(self, rng: random.Random):
        mu, sigma, lo, hi = self.mu, self.sigma, self.lo, self.hi
        lognorm = rng.lognormvariate

        def draw() -> int:
            return min(hi, max(lo, round(lognorm(mu, sigma))))

        return draw


class LengthDistribution:
    """Draws ``(prompt_tokens, output_tokens)`` pairs."""

    name: str

    def sample(self, n: int, rng: random.Random) -> list[tuple[int, int]]:
        raise NotImplementedError

    def expected_means(self) -> tuple[float, float]:
        raise NotImplementedError

    @property
    def output_cap(self) -> int:
        """The largest output a request may have (its client's ``max_tokens``)."""
        raise NotImplementedError


@dataclass(frozen=True)
class SyntheticLengths(LengthDistribution):
    name: str
    prompt: ClippedLogNormal
    output: ClippedLogNormal

    def sample(self, n: int, rng: random.Random) -> list[tuple[int, int]]:
        p, o = self.prompt.sampler(rng), self.output.sampler(rng)
        return [(p(), o()) for _ in range(n)]

    def expected_means(self) -> tuple[float, float]:
        return self.prompt.mean, self.output.mean

    @property
    def output_cap(self) -> int:
        return self.output.hi


class EmpiricalLengths(LengthDistribution):
    """Pairs drawn with replacement from observed ``(prompt, output)`` pairs, so the
    joint distribution (and any correlation) of the source is kept."""

    def __init__(self, pairs: Sequence[tuple[int, int]], name: str = "empirical") -> None:
        clean = [(int(p), int(o)) for p, o in pairs if int(o) >= 1 and int(p) >= 0]
        if not clean:
            raise ValueError(f"{name}: no usable (prompt, output) pairs")
        self.pairs = clean
        self.name = name

    def sample(self, n: int, rng: random.Random) -> list[tuple[int, int]]:
        pairs, k = self.pairs, len(self.pairs)
        return [pairs[int(rng.random() * k)] for _ in range(n)]

    @property
    def output_cap(self) -> int:
        return max(o for _, o in self.pairs)

    def expected_means(self) -> tuple[float, float]:
        k = len(self.pairs)
        return sum(p for p, _ in self.pairs) / k, sum(o for _, o in self.pairs) / k


DATASETS: dict[str, SyntheticLengths] = {
    "alpaca": SyntheticLengths(
        "alpaca", ClippedLogNormal(20.63, 0.6, 4, 512), ClippedLogNormal(163.80, 0.8, 1, 1024)
    ),
    "sharegpt": SyntheticLengths(
        "sharegpt", ClippedLogNormal(343.76, 1.0, 4, 4096), ClippedLogNormal(237.20, 1.0, 1, 2048)
    ),
    "longbench": SyntheticLengths(
        "longbench", ClippedLogNormal(2686.89, 0.5, 512, 8192), ClippedLogNormal(101.78, 0.8, 1, 512)
    ),
}

# (TTFT SLO, TPOT SLO) in seconds per dataset, from docs/PAPER.md. Traces get
# the ShareGPT pair (conversation traffic of similar prompt sizes) unless told.
DATASET_SLOS: dict[str, tuple[float, float]] = {
    "alpaca": (1.0, 0.1),
    "sharegpt": (5.0, 0.1),
    "longbench": (15.0, 0.1),
}
TRACE_SLO = (5.0, 0.1)


def client_max_tokens(prompt: int, output: int, cap: int, max_context: int | None) -> int:
    """The ``max_tokens`` a client of this workload sends: the application's
    cap on an answer (a synthetic dataset's largest output, a trace's largest
    recorded output), less what the prompt leaves of the context. Never below
    the true output, which only decides when the request finishes. The policy
    reserves KV from this bound, as it does live, where it sees no more."""
    room = cap if max_context is None else min(cap, max_context - prompt)
    return max(output, room)


def fit_to_context(prompt: int, output: int, max_context: int | None) -> tuple[int, int]:
    """Truncate a request to a model's context: the output is kept (up to half
    the context), the prompt loses its head, as with left truncation."""
    if max_context is None or prompt + output <= max_context:
        return prompt, output
    output = min(output, max_context // 2)
    return max(1, min(prompt, max_context - output)), output
