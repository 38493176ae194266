"""EcoServe: partially disaggregated LLM serving on stock vLLM engines.

Kept import-light on purpose: ``python3 -m ecoserve.devenv`` must run with the
bare system Python (before any dependency is installed), and the policy core
must import with the base dependencies alone.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: ``from ecoserve import Coordinator`` pulls in asyncio, aiohttp and
    # FastAPI only when asked for.
    if name == "Coordinator":
        from ecoserve.live.coordinator import Coordinator

        return Coordinator
    raise AttributeError(f"module 'ecoserve' has no attribute {name!r}")
