"""Workloads shared by the simulator and the real-engine benchmark: arrival
processes, length distributions, traces, and engine profiles."""

from ecoserve.workload.arrivals import (
    empirical_cv,
    gamma_arrivals,
    poisson_arrivals,
    replay_times,
    times_from_gaps,
    unit_gaps,
)
from ecoserve.workload.lengths import (
    DATASET_SLOS,
    DATASETS,
    ClippedLogNormal,
    EmpiricalLengths,
    LengthDistribution,
    SyntheticLengths,
    fit_to_context,
)
from ecoserve.workload.profile import PROFILE_FORMAT, EngineProfile, is_profile_file, load_profile
from ecoserve.workload.traces import Trace, default_azure_path, load_azure_csv, load_mooncake_jsonl, load_trace
from ecoserve.workload.workload import Request, WorkloadTemplate, build_workload, default_slo, resolve_dataset

__all__ = [
    "DATASETS", "DATASET_SLOS", "PROFILE_FORMAT", "ClippedLogNormal", "EmpiricalLengths", "EngineProfile",
    "LengthDistribution", "Request", "SyntheticLengths", "Trace", "WorkloadTemplate", "build_workload",
    "default_azure_path", "default_slo", "empirical_cv", "fit_to_context", "gamma_arrivals", "is_profile_file",
    "load_azure_csv", "load_mooncake_jsonl", "load_profile", "load_trace", "poisson_arrivals", "replay_times",
    "resolve_dataset", "times_from_gaps", "unit_gaps",
]
