"""Real-engine benchmarking: an open-loop load generator with a streaming
client (``ecoserve bench``) and an engine profiler (``ecoserve profile``).

Requests come from ``ecoserve.workload`` and results are scored by
``ecoserve.metrics``, the same code the simulator uses, so measured and
simulated numbers are comparable.
"""

from ecoserve.bench.client import Outcome, stream_completion
from ecoserve.bench.loadgen import LoadResult, run_load
from ecoserve.bench.prompts import PromptSynthesizer

__all__ = ["LoadResult", "Outcome", "PromptSynthesizer", "run_load", "stream_completion"]
