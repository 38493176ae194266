"""EcoServe's policy core: every scheduling decision, and nothing else.

Pure and time-injected: each method takes ``now`` and returns decisions; no
I/O, no sleeping, no vllm/torch/zmq/asyncio. The live coordinator and the
simulator drive these same objects.
"""

from ecoserve.policy.actions import Action, Constraint, Drained, Queued, Rejected, Routed, SetPhase
from ecoserve.policy.config import DEFAULT_PREFILL_COEFFS, POLICIES, PolicyConfig
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
from ecoserve.policy.scaling import ScalingPort, carry_out, join_macro
from ecoserve.policy.router import Router
from ecoserve.policy.slo import SLO

__all__ = [
    "DEFAULT_PREFILL_COEFFS", "Action", "CheckResult", "Constraint", "ConstraintChecker", "Drained", "InstanceState",
    "LeastLoadedRouter", "MacroInstance", "Merge", "MitosisConfig", "MitosisPlanner", "OverallScheduler",
    "POLICIES", "Phase", "PolicyConfig", "PrefillTimePredictor", "Queued", "Rejected", "RequestState", "RoundRobinRouter",
    "Routed", "Router", "SLO", "ScaleIn", "ScaleOut", "ScalingPort", "SetPhase", "Split", "carry_out", "grow_target",
    "join_macro", "shrink_victim", "structural",
]
