"""EcoServe's discrete-event cluster simulator: simulated engines with an
iteration-time model (roofline from model and hardware specs, or a profile
measured on a real engine), the baselines' instance behaviours, and the very
same policy objects the live coordinator drives."""

from ecoserve.policy.config import PAPER_POLICIES
from ecoserve.sim.cluster import POLICIES, SimConfig, build, candidates, distserve_layouts, sarathi_budget
from ecoserve.sim.core import RouterDriver, Simulator
from ecoserve.sim.engine import SimEngine, SimRequest
from ecoserve.sim.engine_model import EngineModel, ProfileModel, RooflineModel, make_engine_model
from ecoserve.sim.runner import PolicySweep, RunResult, run_best, simulate, sweep_policy
from ecoserve.sim.specs import HARDWARE, MODELS, HardwareSpec, ModelSpec, default_tp
from ecoserve.workload.profile import load_profile

__all__ = [
    "HARDWARE", "MODELS", "PAPER_POLICIES", "POLICIES", "EngineModel", "HardwareSpec", "ModelSpec", "PolicySweep",
    "ProfileModel", "RooflineModel", "RouterDriver", "RunResult", "SimConfig", "SimEngine", "SimRequest",
    "Simulator", "build", "candidates", "default_tp", "distserve_layouts", "load_profile", "make_engine_model",
    "run_best", "sarathi_budget", "simulate", "sweep_policy",
]
