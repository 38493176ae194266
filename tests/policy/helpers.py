"""Small builders for policy tests (no engine needed)."""

from __future__ import annotations

from ecoserve.policy import (
    SLO,
    ConstraintChecker,
    InstanceState,
    MacroInstance,
    OverallScheduler,
    PrefillTimePredictor,
    RequestState,
)


def linear_predictor(seconds_per_token: float = 0.001) -> PrefillTimePredictor:
    """Prefill time proportional to prompt length: 1000 tokens -> 1 s by default."""
    return PrefillTimePredictor(points=[(0, 0.0), (1000, 1000 * seconds_per_token)])


def checker(ttft=1.0, tpot=0.1, mode="mean", reservation=1.0) -> ConstraintChecker:
    """The paper's mean mode unless a test says otherwise."""
    return ConstraintChecker(SLO(ttft, tpot), linear_predictor(), slack_mode=mode, output_reservation=reservation)


def macro(n=2, capacity=100_000, **kw) -> MacroInstance:
    m = MacroInstance(checker(**kw))
    for i in range(n):
        m.add_instance(InstanceState(f"i{i}", capacity), 0.0)
    return m


def overall(sizes=(2,), capacity=100_000, **kw) -> OverallScheduler:
    s = OverallScheduler(checker(**kw))
    k = 0
    for idx, size in enumerate(sizes):
        for _ in range(size):
            s.add_instance(InstanceState(f"i{k}", capacity), 0.0, macro=idx)
            k += 1
    return s


def req(rid, prompt=100, out=10, at=0.0) -> RequestState:
    return RequestState(rid, at, prompt, out)
