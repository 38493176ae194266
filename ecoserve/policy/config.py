"""One validated policy configuration, built in one place.

The CLI (``serve`` and ``simulate``), the Python API, the live coordinator and
the simulator all describe the policy with a ``PolicyConfig`` and build their
router, predictor and mitosis planner from it, so no rule (which policies
exist, what autoscaling needs, how engines are laid out at start, where the
predictor comes from) is written twice. Invalid settings raise ValueError here,
once, with a message fit for a user.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ecoserve.policy.constraints import ConstraintChecker, SlackMode
from ecoserve.policy.least_loaded import LeastLoadedRouter
from ecoserve.policy.longest_prefix import LongestPrefixRouter
from ecoserve.policy.mitosis import MitosisConfig, MitosisPlanner
from ecoserve.policy.overall import OverallScheduler
from ecoserve.policy.predictor import PrefillTimePredictor
from ecoserve.policy.round_robin import RoundRobinRouter
from ecoserve.policy.router import Router
from ecoserve.policy.slo import SLO
from ecoserve.policy.step_time import DecodeStepModel, StepTimePredictor
from ecoserve.policy.macro_instance import MacroInstance
from ecoserve.policy.trickle import TrickleMacroInstance

# The routing policies that drive real engines (``ecoserve serve --policy``).
POLICIES = ("ecoserve", "round-robin", "least-loaded")
# The paper's comparison. Its baselines are engine behaviours that exist only in
# the simulator (sim/cluster.py), which also runs the live routing baselines.
PAPER_POLICIES = ("ecoserve", "vllm", "sarathi", "distserve", "mooncake")
# Ablations, in the simulator only: ``sarathi-dyn`` is Sarathi whose every step's
# prompt budget comes from the decoders' slack (policy.chunk_budget);
# ``prefix-oracle`` routes to the engine whose real prefix cache holds the most
# of the prompt (policy.longest_prefix), the bound prefix-aware routing is held to.
ABLATIONS = ("sarathi-dyn", "prefix-oracle")  # prefix-oracle: the longest cached prefix, seen exactly
# Routers under evaluation: ``ecoserve-trickle`` is trickle-first instance
# scheduling (policy/trickle.py). ``serve`` offers it too, marked experimental,
# so that real engines can measure it beside the simulator.
EXPERIMENTAL = ("ecoserve-trickle",)
SERVE_POLICIES = POLICIES + EXPERIMENTAL
SIM_POLICIES = PAPER_POLICIES + tuple(p for p in POLICIES if p not in PAPER_POLICIES) + ABLATIONS + EXPERIMENTAL

# The prefill-time predictor's starting model when no profile is given:
# 10 ms + 1 ms per prompt token. Deliberately pessimistic for small models (a
# slow prediction only makes windows smaller, never late); prefill step records
# correct it online, by a factor within [0.2, 5].
DEFAULT_PREFILL_COEFFS = (0.01, 1e-3, 0.0)
# A decode step's starting model when no profile is given, 10 ms + 1 ms a
# sequence + 1 us a context token: the order of the small generated model on one
# CPU core (bench/results/real/profile-small-1core.json: 42 ms at batch 8,
# context 512). Decode step records correct it (a ratio within [0.2, 5]).
DEFAULT_DECODE_COEFFS = (0.01, 1e-3, 1e-6)


def step_predictor(prefill: PrefillTimePredictor,
                   decode_points: Sequence[tuple[int, int, float]] | None = None) -> StepTimePredictor:  # fmt: skip
    """A step-time predictor around ``prefill``: its decode part fitted to a
    profile's (batch, context tokens, seconds) points, else DEFAULT_DECODE_COEFFS."""
    decode = DecodeStepModel.fit(decode_points) if decode_points else DecodeStepModel(DEFAULT_DECODE_COEFFS)
    return StepTimePredictor(prefill, decode)


def require_macros(policy: str) -> None:
    """Autoscaling (mitosis) splits and merges macro instances: only EcoServe has them."""
    if policy != "ecoserve":
        raise ValueError(f"autoscaling (mitosis) needs --policy ecoserve (EcoServe's macro instances), not {policy!r}")


@dataclass(frozen=True)
class PolicyConfig:
    policy: str = "ecoserve"
    slo: SLO = SLO(5.0, 0.1)
    # EcoServe's constraint check (see ConstraintChecker)
    slack_mode: SlackMode = "min"
    output_reservation: float = 1.0
    decode_margin_s: float = 0.0
    # Macro instances: N_l, N_u, and the fleet's bounds and triggers when
    # autoscaling (mitosis) is on.
    mitosis: MitosisConfig = MitosisConfig()
    autoscale: bool = False
    # The predictor's base model: a measured profile's (prompt tokens, seconds)
    # points, else a quadratic's coefficients (a, b, c).
    prefill_points: tuple[tuple[int, float], ...] | None = None
    prefill_coeffs: tuple[float, float, float] | None = None
    # ecoserve-trickle: prompt tokens a trickling step takes (decodes included), and
    # the decode steps of a profile, (batch, context tokens, seconds), for its step-time
    # predictor (None: DEFAULT_DECODE_COEFFS)
    trickle_budget: int = 128
    decode_points: tuple[tuple[int, int, float], ...] | None = None
    # ecoserve, ecoserve-trickle: queued requests whose TTFT is lost wait behind the
    # others (MacroInstance.lost_yield), until they have waited lost_yield_max_wait
    # seconds past the TTFT SLO (None: no bound)
    lost_yield: bool = False
    lost_yield_max_wait: float | None = None

    def __post_init__(self) -> None:
        if self.policy not in POLICIES + EXPERIMENTAL + ("longest-prefix",):
            raise ValueError(f"unknown policy {self.policy!r}; choose one of {', '.join(POLICIES)}")
        if self.trickle_budget < 1:
            raise ValueError("trickle_budget must be >= 1")
        if self.lost_yield_max_wait is not None:
            if not self.lost_yield:
                raise ValueError("lost_yield_max_wait bounds lost_yield: set lost_yield too")
            if not self.lost_yield_max_wait >= 0:
                raise ValueError("lost_yield_max_wait must be >= 0 seconds")
        if self.autoscale:
            require_macros(self.policy)
        if self.prefill_points is not None and self.prefill_coeffs is not None:
            raise ValueError("give the predictor a profile's points or coefficients, not both")
        if self.decode_points:  # a grid too small to fit fails here, with its message (none: the defaults)
            DecodeStepModel.fit(self.decode_points)
        # Built once to validate slack_mode, output_reservation, decode_margin_s and the points.
        ConstraintChecker(self.slo, self.predictor(), slack_mode=self.slack_mode,
                          output_reservation=self.output_reservation, decode_margin_s=self.decode_margin_s)  # fmt: skip

    @staticmethod
    def points_of(points: Sequence[tuple[int, float]]) -> tuple[tuple[int, float], ...]:
        """A profile's prefill points in the form ``prefill_points`` takes."""
        return tuple((int(n), float(s)) for n, s in points)

    def predictor(self) -> PrefillTimePredictor:
        """A fresh predictor (each router owns one: it is corrected online)."""
        if self.prefill_points is not None:
            return PrefillTimePredictor(points=self.prefill_points)
        return PrefillTimePredictor(coeffs=self.prefill_coeffs or DEFAULT_PREFILL_COEFFS)

    def step_predictor(self, predictor: PrefillTimePredictor | None = None) -> StepTimePredictor:
        """A step-time predictor around ``predictor`` (default: a fresh one)."""
        return step_predictor(predictor or self.predictor(), self.decode_points)

    def build_router(self, predictor: PrefillTimePredictor | None = None) -> Router:
        """The router for this policy, around ``predictor`` (default: a fresh one)."""
        if self.policy == "round-robin":
            return RoundRobinRouter()
        if self.policy == "least-loaded":
            return LeastLoadedRouter()
        if self.policy == "longest-prefix":
            return LongestPrefixRouter()
        predictor = predictor or self.predictor()
        checker = ConstraintChecker(
            self.slo, predictor, slack_mode=self.slack_mode,
            output_reservation=self.output_reservation, decode_margin_s=self.decode_margin_s,
        )  # fmt: skip
        ly = {"lost_yield": self.lost_yield, "lost_yield_max_wait": self.lost_yield_max_wait}
        if self.policy == "ecoserve-trickle":
            steps, budget = self.step_predictor(predictor), self.trickle_budget
            return OverallScheduler(checker, lambda c, name: TrickleMacroInstance(c, steps, budget, name, **ly))
        return OverallScheduler(checker, lambda c, name: MacroInstance(c, name=name, **ly))

    def chunked_step_budget(self) -> int | None:
        """Tokens per step, decodes included, of an instance in ``CHUNKED``: the
        trickle budget, which the trickle rule's predictions assume (the
        simulator's chunked engines run it; live, every ``chunked`` command
        carries it). None: this policy never rests in ``CHUNKED``."""
        return self.trickle_budget if self.policy == "ecoserve-trickle" else None

    def planner(self) -> MitosisPlanner | None:
        """The mitosis planner when autoscaling is on, else None."""
        return MitosisPlanner(self.slo, self.mitosis) if self.autoscale else None

    def starting_layout(self, n: int) -> list[int]:
        """Macro-instance sizes for a fleet of ``n`` engines at start: the
        fewest groups of at most N_u, as even as possible (one group for the
        baselines)."""
        if n < 1:
            raise ValueError("need at least one engine")
        if self.policy not in ("ecoserve", "ecoserve-trickle"):
            return [n]
        groups = math.ceil(n / self.mitosis.macro_max)
        return [n // groups + (1 if g < n % groups else 0) for g in range(groups)]

    def starting_macro(self, k: int, n: int) -> int:
        """The macro instance the ``k``-th of ``n`` starting engines joins."""
        total = 0
        for g, size in enumerate(self.starting_layout(n)):
            total += size
            if k < total:
                return g
        raise IndexError(f"engine {k} of {n}")
