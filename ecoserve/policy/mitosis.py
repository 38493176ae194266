"""The mitosis planner: when to grow or shrink, and how the layout of macro
instances follows.

Triggers (docs/PAPER.md, "Mitosis scaling", with what the paper leaves open filled in):
- scale out when the mean TTFT over a sliding window exceeds the TTFT SLO.
  Requests still pending count with their wait so far, since overload shows
  first as requests that have no first token yet;
- scale in when a macro instance of n instances has mean saved TPOT above
  ``TTFT_SLO * (n + 1) / n`` (its decoders could absorb a full extra prefill
  window spread over one fewer instance), nothing is pending and TTFT is within
  its SLO; the condition must hold for ``scale_in_hold_s`` (hysteresis), and
  every scale action starts a ``cooldown_s`` during which no other is taken, so
  the fleet does not flap.

Layout rules (pure functions of the layout, so they can be tested alone):
- grow: add to the first macro instance below N_u ("refill the original to
  N_u before growing the new one"); if all are full, add to the last, which then
  exceeds N_u and is split in two halves;
- shrink: take from the partial macro instance (below N_l) if there is one, else
  from the smallest above N_l, else from the last (which becomes the partial
  one); within it, the instance with the fewest requests (cheapest drain);
- merge any two macro instances that together fit in N_u (the two smallest).
Every macro instance then stays within [N_l, N_u], except at most one partial.
Removed instances drain (Router.remove_instance); none is ever killed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ecoserve.policy.overall import OverallScheduler
from ecoserve.policy.slo import SLO

Layout = Sequence[Sequence[str]]


@dataclass(frozen=True, slots=True)
class ScaleOut:
    macro: int  # add one instance to this macro instance (== len(layout): a new one)


@dataclass(frozen=True, slots=True)
class ScaleIn:
    instance_id: str  # drain this instance, then stop it


@dataclass(frozen=True, slots=True)
class Split:
    macro: int


@dataclass(frozen=True, slots=True)
class Merge:
    into: int
    other: int


ScaleAction = ScaleOut | ScaleIn | Split | Merge


@dataclass(frozen=True, slots=True)
class MitosisConfig:
    macro_min: int = 1  # N_l
    macro_max: int = 8  # N_u
    min_instances: int = 1
    max_instances: int = 64
    ttft_window_s: float = 30.0
    cooldown_s: float = 30.0
    scale_in_hold_s: float = 30.0

    def __post_init__(self) -> None:
        if not 1 <= self.macro_min <= self.macro_max:
            raise ValueError("need 1 <= macro_min (N_l) <= macro_max (N_u)")
        if 2 * self.macro_min > self.macro_max + 1:
            raise ValueError(
                f"a macro instance of N_u + 1 = {self.macro_max + 1} cannot split into two halves of "
                f"at least N_l = {self.macro_min}: need 2 * N_l <= N_u + 1"
            )
        if not 1 <= self.min_instances <= self.max_instances:
            raise ValueError("need 1 <= min_instances <= max_instances")


# -- layout rules ----------------------------------------------------------------------


def grow_target(layout: Layout, cfg: MitosisConfig) -> int:
    for idx, group in enumerate(layout):
        if len(group) < cfg.macro_max:
            return idx
    return max(0, len(layout) - 1) if layout else 0


def shrink_victim(layout: Layout, cfg: MitosisConfig, load: Mapping[str, int]) -> str | None:
    groups = [(idx, g) for idx, g in enumerate(layout) if g]
    if not groups:
        return None
    partial = [(idx, g) for idx, g in groups if len(g) < cfg.macro_min]
    above = [(idx, g) for idx, g in groups if len(g) > cfg.macro_min]
    if partial:
        _, group = partial[0]
    elif above:
        _, group = min(above, key=lambda t: (len(t[1]), t[0]))
    else:
        _, group = groups[-1]
    # Fewest requests drains fastest; ties go to the last in routing order.
    return min(reversed(group), key=lambda iid: load.get(iid, 0))


def structural(layout: Layout, cfg: MitosisConfig) -> ScaleAction | None:
    """The next split or merge the layout needs, or None when it is in shape."""
    for idx, group in enumerate(layout):
        if len(group) > cfg.macro_max:
            return Split(idx)
    sized = sorted((len(g), idx) for idx, g in enumerate(layout))
    if len(sized) >= 2 and sized[0][0] + sized[1][0] <= cfg.macro_max:
        a, b = sorted((sized[0][1], sized[1][1]))
        return Merge(into=a, other=b)
    return None


# -- the planner -----------------------------------------------------------------------


class MitosisPlanner:
    def __init__(self, slo: SLO, config: MitosisConfig) -> None:
        self.slo = slo
        self.cfg = config
        self._ttfts: deque[tuple[float, float]] = deque()  # (time observed, ttft)
        self._last_action = float("-inf")
        self._slack_since: float | None = None

    def observe_ttft(self, ttft: float, now: float) -> None:
        self._ttfts.append((now, ttft))

    def mean_ttft(self, sched: OverallScheduler, now: float) -> float | None:
        horizon = now - self.cfg.ttft_window_s
        while self._ttfts and self._ttfts[0][0] < horizon:
            self._ttfts.popleft()
        values = [t for _, t in self._ttfts]
        values += [now - r.arrival for r in sched.pending()]
        return sum(values) / len(values) if values else None

    def _over_provisioned(self, sched: OverallScheduler, now: float) -> bool:
        for group in sched.macros:
            insts = [i for i in group.instances() if not i.draining]
            n = len(insts)
            if n == 0:
                continue
            decoding = [r for i in insts for r in i.decoding()]
            if not any(i.requests for i in insts):
                return True  # idle group: nothing to protect
            if not decoding:
                continue
            slack = sum(r.saved_tpot(now, self.slo.tpot) for r in decoding) / len(decoding)
            if slack > self.slo.ttft * (n + 1) / n:
                return True
        return False

    def plan(self, sched: OverallScheduler, now: float, *, launching: int = 0) -> list[ScaleAction]:
        """What to do now. ``launching``: instances asked for and not yet added
        (the planner waits for them rather than asking twice)."""
        layout = sched.layout()
        fix = structural(layout, self.cfg)
        if fix is not None:
            return [fix]
        if launching or now - self._last_action < self.cfg.cooldown_s:
            return []
        size = sum(len(g) for g in layout)
        ttft = self.mean_ttft(sched, now)
        if size < self.cfg.min_instances or (
            ttft is not None and ttft > self.slo.ttft and size < self.cfg.max_instances
        ):
            self._slack_since = None
            self._last_action = now
            return [ScaleOut(grow_target(layout, self.cfg))]
        calm = not sched.has_pending() and (ttft is None or ttft <= self.slo.ttft)
        if not (calm and size > self.cfg.min_instances and self._over_provisioned(sched, now)):
            self._slack_since = None
            return []
        if self._slack_since is None:
            self._slack_since = now
        if now - self._slack_since < self.cfg.scale_in_hold_s:
            return []
        load = {i.id: len(i.requests) for i in sched.instances()}
        victim = shrink_victim(layout, self.cfg, load)
        if victim is None:
            return []
        self._slack_since = None
        self._last_action = now
        return [ScaleIn(victim)]
