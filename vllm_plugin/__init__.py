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


def endpoint_plugin():
    """Endpoint plugin factory."""
    from vllm_plugin.version import check_vllm_version

    check_vllm_version()
    from vllm_plugin.endpoints import EcoServeEndpoints

    return EcoServeEndpoints()
