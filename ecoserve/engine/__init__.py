"""Engines as the coordinator sees them: handles, local launchers, status channel.

- ``handle``: one engine's HTTP surface (streaming generation, phase commands,
  status, tokenize);
- ``status_stream``: its ZeroMQ status pushes;
- ``launcher_api``: the launcher contract (``EngineLauncher``);
- ``process``: one engine process, started and stopped the same way by every
  launcher and benchmark, never orphaned (``EngineProcess``);
- ``launcher`` + ``resources``: local vLLM engines as child processes, each
  on its own cores or GPUs (``LocalLauncher``);
"""

from ecoserve.engine.handle import EngineHandle, EngineUnreachable, UpstreamHTTPError, UpstreamStream
from ecoserve.engine.launcher import LocalEngine, LocalLauncher, build_engines, stop_engines
from ecoserve.engine.launcher_api import EngineLauncher, EngineStartError, LaunchedEngine, wait_healthy
from ecoserve.engine.process import EngineProcess
from ecoserve.engine.resources import EngineSlot, PlacementError, plan_engines
from ecoserve.engine.status_stream import StatusSubscriber

__all__ = [
    "EngineHandle",
    "EngineLauncher",
    "EngineProcess",
    "EngineSlot",
    "EngineStartError",
    "EngineUnreachable",
    "LaunchedEngine",
    "LocalEngine",
    "LocalLauncher",
    "PlacementError",
    "StatusSubscriber",
    "UpstreamHTTPError",
    "UpstreamStream",
    "build_engines",
    "plan_engines",
    "stop_engines",
    "wait_healthy",
]
