"""EcoServe: partially disaggregated LLM serving on stock vLLM engines.

Kept import-light on purpose: ``python3 -m ecoserve.devenv`` must run with the
bare system Python (before any dependency is installed), and the policy core
must import with the base dependencies alone.
"""

__version__ = "0.1.0"
