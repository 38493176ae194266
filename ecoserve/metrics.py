"""SLO metrics shared by the simulator and the real-engine benchmark.

- TTFT: arrival -> first token, including any wait in a pending queue or for a
  phase switch (docs/PAPER.md: "Reported TTFT includes the wait").
- TPOT: ``(e2e - ttft) / (output_tokens - 1)``, the mean gap between output
  tokens after the first; a one-token request has TPOT 0.
- A request *meets the SLOs* when it finished, TTFT <= TTFT SLO and TPOT <=
  TPOT SLO. Rejected or unfinished requests meet neither.
- Attainment: the share of all requests that meet both.
- Goodput at P50/P90/P99: the highest rate at which at least 50/90/99% of
  requests meet both SLOs, found by ``find_goodput`` over a callable
  ``rate -> attainment`` (a simulation or a real benchmark run).

Percentiles use linear interpolation between order statistics (numpy's
default), so they agree with ``numpy.percentile``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

LEVELS: dict[str, float] = {"p50": 0.50, "p90": 0.90, "p99": 0.99}


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What a run observed for one request. Times in seconds on one clock."""

    arrival: float
    prompt_tokens: int
    output_tokens: int
    first_token: float | None = None  # None: never got one (rejected, unfinished)
    finish: float | None = None
    id: str = ""

    @property
    def finished(self) -> bool:
        return self.finish is not None and self.first_token is not None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrival

    @property
    def e2e(self) -> float | None:
        return None if self.finish is None else self.finish - self.arrival

    @property
    def tpot(self) -> float | None:
        return tpot_of(self.first_token, self.finish, self.output_tokens) if self.finished else None

    def meets(self, ttft_slo: float, tpot_slo: float) -> bool:
        if not self.finished:
            return False
        tpot = self.tpot
        return self.ttft <= ttft_slo and (tpot is None or tpot <= tpot_slo)


def tpot_of(first_token: float | None, finish: float, output_tokens: int) -> float | None:
    """Mean seconds per output token after the first; None without a first
    token or a second one (a 1-token request has no TPOT, and so meets any
    TPOT SLO). The live coordinator, the benchmark and the simulator all use it."""
    if first_token is None or output_tokens <= 1:
        return None
    return (finish - first_token) / (output_tokens - 1)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear interpolation; NaN if empty."""
    if not 0 <= q <= 100:
        raise ValueError("q must be within [0, 100]")
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def distribution(values: Sequence[float]) -> dict[str, float]:
    """``p50``/``p90``/``p99``/``mean``/``max`` of a sample (NaN if empty)."""
    xs = sorted(values)
    out = {name: percentile(xs, lvl * 100) for name, lvl in LEVELS.items()}
    out["mean"] = sum(xs) / len(xs) if xs else math.nan
    out["max"] = xs[-1] if xs else math.nan
    return out


def attainment(records: Iterable[RequestRecord], ttft_slo: float, tpot_slo: float) -> float:
    recs = list(records)
    if not recs:
        return math.nan
    return sum(1 for r in recs if r.meets(ttft_slo, tpot_slo)) / len(recs)


def summarize(records: Sequence[RequestRecord], ttft_slo: float, tpot_slo: float) -> dict:
    """Attainment and latency percentiles of a run (JSON-ready).

    TTFT/TPOT percentiles are over the requests that have the value (finished
    ones of two tokens or more for TPOT); ``finished`` says how many finished.
    """
    ttfts = [r.ttft for r in records if r.ttft is not None]
    tpots = [r.tpot for r in records if r.tpot is not None]
    n = len(records)
    met_ttft = sum(1 for r in records if r.ttft is not None and r.ttft <= ttft_slo)
    met_tpot = sum(1 for r in records if r.finished and (r.tpot is None or r.tpot <= tpot_slo))
    return {
        "num_requests": n,
        "finished": sum(1 for r in records if r.finished),
        "attainment": attainment(records, ttft_slo, tpot_slo) if n else math.nan,
        "ttft_attainment": met_ttft / n if n else math.nan,
        "tpot_attainment": met_tpot / n if n else math.nan,
        "ttft": distribution(ttfts),
        "tpot": distribution(tpots),
    }


# -- goodput search ---------------------------------------------------------------------


@dataclass
class GoodputResult:
    goodput: dict[str, float]  # level name -> highest passing rate found (0.0 if none)
    evaluations: list[tuple[float, float]] = field(default_factory=list)  # (rate, attainment), in call order
    bracket: dict[str, tuple[float, float | None]] = field(default_factory=dict)  # name -> (pass, fail)

    def curve(self) -> list[tuple[float, float]]:
        """Evaluated (rate, attainment) points sorted by rate."""
        return sorted(set(self.evaluations))


def find_goodput(
    attain: Callable[[float], float],
    levels: Mapping[str, float] | None = None,
    *,
    start: float = 1.0,
    rel_tol: float = 0.02,
    min_rate: float = 1e-3,
    max_rate: float = 1e4,
    max_evals: int = 60,
    on_eval: Callable[[float, float], None] | None = None,
) -> GoodputResult:
    """Goodput at each level: the highest rate whose attainment is >= the level.

    Raise the rate (doubling) until attainment fails, then bisect between the
    highest passing and the lowest failing rate until they are within
    ``rel_tol`` of each other; the passing end is the answer. If ``start``
    already fails, halve down to a passing rate (0.0 if none above
    ``min_rate``). Evaluations are cached and shared by all levels, so asking
    for P50, P90 and P99 costs little more than one of them. ``attain`` should
    be deterministic (fixed seeds); with noise, the search still returns a rate
    that passed, but not necessarily the highest one.
    """
    levels = dict(LEVELS if levels is None else levels)
    if not levels:
        raise ValueError("no levels to search")
    if start <= 0 or not 0 < min_rate < max_rate:
        raise ValueError("need start > 0 and 0 < min_rate < max_rate")
    cache: dict[float, float] = {}
    result = GoodputResult({})

    def f(rate: float) -> float:
        rate = _q(rate)
        if rate not in cache:
            if len(cache) >= max_evals:
                raise _Budget()
            a = float(attain(rate))
            cache[rate] = a
            result.evaluations.append((rate, a))
            if on_eval is not None:
                on_eval(rate, a)
        return cache[rate]

    # Highest level first: its goodput is the lowest, so the others' brackets
    # start from what it has already evaluated.
    for name, target in sorted(levels.items(), key=lambda kv: -kv[1]):
        try:
            result.goodput[name], result.bracket[name] = _search(f, cache, target, start, rel_tol, min_rate, max_rate)
        except _Budget:
            passing = [r for r, a in cache.items() if a >= target]
            result.goodput[name] = max(passing) if passing else 0.0
            result.bracket[name] = (result.goodput[name], None)
    return result


class _Budget(Exception):
    pass


def _q(rate: float) -> float:
    """Rates are compared at 6 significant digits, so cached points are hit."""
    return float(f"{rate:.6g}")


def _search(f, cache, target, start, rel_tol, min_rate, max_rate) -> tuple[float, tuple[float, float | None]]:
    passing = [r for r, a in cache.items() if a >= target]
    if passing:
        lo = max(passing)
    else:
        r = min(cache) if cache else _q(start)
        while True:
            if f(r) >= target:
                lo = r
                break
            if r / 2 < min_rate:
                return 0.0, (0.0, r)
            r = _q(r / 2)
    failing_above = [r for r, a in cache.items() if r > lo and a < target]
    hi = min(failing_above) if failing_above else None
    while hi is None:
        r = _q(lo * 2)
        if r > max_rate:
            return lo, (lo, None)
        if f(r) >= target:
            lo = r
        else:
            hi = r
    while hi / lo > 1 + rel_tol:
        mid = _q((lo + hi) / 2)
        if mid in (lo, hi):
            break
        if f(mid) >= target:
            lo = mid
        else:
            hi = mid
    return lo, (lo, hi)
