"""Arrival processes: Poisson, Gamma with a coefficient of variation, trace replay.

Every process is built from *unit-rate* gaps (mean 1 s) scaled by ``1/rate``,
so one seed gives the same shape of traffic at every rate (common random
numbers): a goodput search compares rates on the same burst pattern, not on
fresh noise, and attainment varies smoothly with the rate.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def unit_gaps(n: int, cv: float, rng: random.Random) -> list[float]:
    """``n`` inter-arrival gaps with mean 1 and coefficient of variation ``cv``.

    ``cv == 1`` is exponential (Poisson arrivals); otherwise Gamma with shape
    ``k = 1/cv^2`` and scale ``cv^2`` (mean k*scale = 1, CV = 1/sqrt(k) = cv).
    CV > 1 is bursty (the paper uses 1.2, 1.5 and 2.0); CV < 1 is smoother.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    if cv <= 0:
        raise ValueError(f"burstiness CV must be > 0, got {cv}")
    if cv == 1.0:
        return [rng.expovariate(1.0) for _ in range(n)]
    shape, scale = 1.0 / (cv * cv), cv * cv
    return [rng.gammavariate(shape, scale) for _ in range(n)]


def times_from_gaps(gaps: Sequence[float], rate: float) -> list[float]:
    """Arrival times (the first at its gap after 0) at ``rate`` requests/s."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    out, t, inv = [], 0.0, 1.0 / rate
    for g in gaps:
        t += g * inv
        out.append(t)
    return out


def poisson_arrivals(n: int, rate: float, rng: random.Random) -> list[float]:
    return times_from_gaps(unit_gaps(n, 1.0, rng), rate)


def gamma_arrivals(n: int, rate: float, cv: float, rng: random.Random) -> list[float]:
    return times_from_gaps(unit_gaps(n, cv, rng), rate)


def replay_times(times: Sequence[float], rate: float | None = None) -> list[float]:
    """A trace's arrival times from 0, time-scaled so its mean rate is ``rate``
    (``None``: as recorded). Scaling keeps the trace's burst structure."""
    if not times:
        return []
    t0 = times[0]
    rel = [t - t0 for t in times]
    if rate is None or len(rel) < 2 or rel[-1] <= 0:
        return rel
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    native = (len(rel) - 1) / rel[-1]
    k = native / rate
    return [t * k for t in rel]


def empirical_cv(times: Sequence[float]) -> float:
    """Coefficient of variation of the gaps between consecutive arrivals."""
    gaps = [b - a for a, b in zip(times, times[1:])]
    if len(gaps) < 2:
        raise ValueError("need at least three arrivals")
    m = sum(gaps) / len(gaps)
    var = sum((g - m) ** 2 for g in gaps) / (len(gaps) - 1)
    return var**0.5 / m
