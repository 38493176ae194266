"""EcoServe's vLLM plugin: runs inside unmodified vLLM processes.

Enabled with ``VLLM_PLUGINS=ecoserve`` (one name for both entry points below)
plus ``--scheduler-cls vllm_plugin.scheduler.EcoServeScheduler``; see README.md.

- ``register``: the ``vllm.general_plugins`` entry point, run in every vLLM
  process (API server, EngineCore, workers): refuses unsupported vLLM versions.
- ``EcoServeEndpoints``: the ``vllm.endpoint_plugins`` entry point (API server
  only): ``/ecoserve/status``, ``/ecoserve/phase``, ``/ecoserve/command``.

Import-light on purpose: vLLM loads this module in every process it starts.
"""

from __future__ import annotations

SCHEDULER_CLS = "vllm_plugin.scheduler.EcoServeScheduler"


def register() -> None:
    """General plugin hook; idempotent (vLLM may call it more than once)."""
    from vllm_plugin.version import check_vllm_version

    check_vllm_version()
    _request_amx()


def _request_amx() -> None:
    """Ask Linux for the AMX tile state in this process, where the CPU has it.

    vLLM 0.32's CPU attention picks its AMX kernel for bf16 on such CPUs, but
    never asks for the tile state (``arch_prctl(ARCH_REQ_XCOMP_PERM)``); oneDNN
    asks on its first AMX matmul, which a prefill of 5 tokens or more reaches.
    So an engine whose first request was 1-4 tokens died with SIGILL in its
    worker (measured on a Sapphire Rapids host: prompts of 1-4 tokens first
    killed it, 5 and more did not, and after one of those short ones worked).
    torch asks the same way for its own AMX kernels (``_init_amx``)."""
    import sys

    torch = sys.modules.get("torch")  # vLLM's processes have it; never import it here for this
    if torch is None:
        return
    try:
        if torch.cpu._is_amx_tile_supported():
            torch._C._cpu._init_amx()
    except (AttributeError, RuntimeError):  # another torch, or not permitted: vLLM's own behaviour stands
        pass


def endpoint_plugin():
    """Endpoint plugin factory."""
    from vllm_plugin.version import check_vllm_version

    check_vllm_version()
    from vllm_plugin.endpoints import EcoServeEndpoints

    return EcoServeEndpoints()
