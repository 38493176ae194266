"""EcoServe's policy core: every scheduling decision, and nothing else.

Pure and time-injected: each method takes ``now`` and returns decisions; no
I/O, no sleeping, no vllm/torch/zmq/asyncio. The live coordinator and the
simulator drive these same objects.
"""

from ecoserve.policy.actions import Action, Constraint, Drained, Queued, Rejected, Routed, SetPhase
from ecoserve.policy.constraints import CheckResult, ConstraintChecker
from ecoserve.policy.instance import InstanceState
from ecoserve.policy.least_loaded import LeastLoadedRouter
from ecoserve.policy.macro_instance import MacroInstance
from ecoserve.policy.mitosis import (
    Merge,
    MitosisConfig,
    MitosisPlanner,
    ScaleIn,
    ScaleOut,
    Split,
    grow_target,
    shrink_victim,
    structural,
)
from ecoserve.policy.overall import OverallScheduler
from ecoserve.policy.phase import Phase
from ecoserve.policy.predictor import PrefillTimePredictor
from ecoserve.policy.request import RequestState
from ecoserve.policy.round_robin import RoundRobinRouter
from ecoserve.policy.router import Router
from ecoserve.policy.slo import SLO

POLICIES = ("ecoserve", "round-robin", "least-loaded")


def make_router(policy: str, slo: SLO, predictor: PrefillTimePredictor, **check_options) -> Router:
    """The router for a policy name (the CLI's ``--policy``). ``check_options``
    go to EcoServe's ConstraintChecker (slack_mode, output_reservation,
    decode_margin_s); the baselines check nothing."""
    if policy == "ecoserve":
        return OverallScheduler(ConstraintChecker(slo, predictor, **check_options))
    if policy == "round-robin":
        return RoundRobinRouter()
    if policy == "least-loaded":
        return LeastLoadedRouter()
    raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")


__all__ = [
    "Action", "CheckResult", "Constraint", "ConstraintChecker", "Drained", "InstanceState",
    "LeastLoadedRouter", "MacroInstance", "Merge", "MitosisConfig", "MitosisPlanner", "OverallScheduler",
    "POLICIES", "Phase", "PrefillTimePredictor", "Queued", "Rejected", "RequestState", "RoundRobinRouter",
    "Routed", "Router", "SLO", "ScaleIn", "ScaleOut", "SetPhase", "Split", "grow_target", "make_router",
    "shrink_victim", "structural",
]
