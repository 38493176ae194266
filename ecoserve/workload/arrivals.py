"""Arrival processes: Poisson, Gamma with a coefficient of variation, trace replay.

Every process is built from *unit-rate* gaps (mean 1 s) scaled by ``1/rate``,
so one seed gives the same shape of traffic at every rate (common random
numbers): a goodput search compares rates on the same burst pattern, not on
fresh noise, and attainment varies smoothly with the rate.
"""

from __future__ import annotations

import math
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


# -- time-varying rate: load steps ------------------------------------------------------

RateSteps = Sequence[tuple[float, float]]  # (rate in req/s, duration in s), one after another from 0


def parse_rate_steps(text: str) -> list[tuple[float, float]]:
    """``"20:120,30:120"`` -> ``[(20.0, 120.0), (30.0, 120.0)]`` (RATE:SECONDS pairs)."""
    steps = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        try:
            rate, dur = (float(x) for x in part.split(":"))
        except ValueError:
            raise ValueError(f"bad load step {part!r}: use RATE:SECONDS, e.g. 20:120") from None
        steps.append((rate, dur))
    check_rate_steps(steps)
    return steps


def check_rate_steps(steps: RateSteps) -> None:
    if not steps:
        raise ValueError("need at least one load step (RATE:SECONDS)")
    for rate, dur in steps:
        if not (rate > 0 and math.isfinite(rate)) or not (dur > 0 and math.isfinite(dur)):
            raise ValueError(f"load step {rate:g}:{dur:g}: rate and duration must be > 0")


def expected_arrivals(steps: RateSteps) -> float:
    """The integral of the rate over the steps: the mean number of arrivals."""
    return sum(rate * dur for rate, dur in steps)


def warp_to_steps(unit_times: Sequence[float], steps: RateSteps) -> list[float]:
    """Arrival times under a piecewise-constant rate, from the arrival times of a
    rate-1 process (cumulative unit gaps, sorted).

    Each unit time ``s`` maps to ``t = L^-1(s)``, where ``L(t)`` is the integral of
    the rate up to ``t`` (a time change): a unit Poisson process becomes the
    inhomogeneous Poisson process of that rate, and Gamma gaps keep their burst
    pattern within each step. As with ``times_from_gaps``, one seed gives the same
    shape of traffic whatever the rates. Times past the last step are dropped.
    """
    check_rate_steps(steps)
    out: list[float] = []
    t0 = 0.0  # start of the current step, in real time
    s0 = 0.0  # L(t0)
    k = 0
    for s in unit_times:
        while k < len(steps) and s > s0 + steps[k][0] * steps[k][1]:
            s0 += steps[k][0] * steps[k][1]
            t0 += steps[k][1]
            k += 1
        if k == len(steps):
            break
        out.append(t0 + (s - s0) / steps[k][0])
    return out
