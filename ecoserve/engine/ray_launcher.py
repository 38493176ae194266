"""Engines on a Ray cluster: one Ray actor per engine, on whatever node has room.

Each engine is an ``EngineActor`` holding the engine's devices in Ray's
accounting (TP x PP GPUs on GPU nodes; cores on CPU nodes). The actor starts
the same vLLM API server with the EcoServe plugin as the local launcher does
(``process.EngineProcess``), as a child process on its node, listening on all
interfaces and advertising the node's IP (HTTP and the plugin's ZeroMQ
sockets); the coordinator then reaches it over the network like any attached
engine.

No orphans on a node:
- the vLLM server runs in its own process group; ``stop`` (SIGTERM, grace,
  SIGKILL of the group) runs on the node, inside the actor;
- the server is forked by a thread of the actor that lives as long as the
  server does (``start(keeper=True)``), with PR_SET_PDEATHSIG: if the actor
  process dies (killed, its raylet gone, its owner, the coordinator, gone: Ray
  fate-shares owned actors) the kernel sends the server SIGTERM, which stops
  its own children.

Nothing here imports Ray at module level: users without Ray are unaffected.
What we send through Ray are plain values and msgspec-encoded specs; Ray's
own control plane (cloudpickle between Ray processes) stays inside the
cluster, which must be a trusted network (see README, "Many machines").
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from ecoserve.engine.launcher_api import EngineLauncher, EngineStartError, LaunchedEngine, OnProgress, wait_healthy
from ecoserve.engine.process import (
    STOP_GRACE_S, EngineProcess, check_engine_args, engine_env, free_port, vllm_command,
)  # fmt: skip
from ecoserve.engine.resources import PlacementError, claim_cores, core_list, ranks_per_engine

log = logging.getLogger("ecoserve.ray")

__all__ = ["RayEngine", "RayLauncher", "RayUnavailableError", "engine_resources", "use_ray_token_if_any"]

RAY_MISSING = "the Ray launcher needs Ray on this machine and every node: pip install 'ecoserve[ray]'"
CONNECT_TIMEOUT_S = 5.0
ACTOR_LOST = -1  # exit_code() of an engine whose actor (or node) died
# Coordinator environment worth forwarding to engines on other machines; the
# rest of its environment (paths, CUDA_VISIBLE_DEVICES) belongs to its node.
_FORWARD_PREFIXES = ("VLLM_", "ECOSERVE_ZMQ_SECRET", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


class RayUnavailableError(RuntimeError):
    """Ray is not installed, or the cluster address does not answer."""


def engine_resources(engine_args: Sequence[str], device: str, cpus_per_rank: int = 1) -> dict[str, float]:
    """What one engine holds in Ray's accounting: TP x PP GPUs (and one CPU
    for the actor) on GPU, ``cpus_per_rank`` cores per rank on CPU."""
    ranks = ranks_per_engine(engine_args)
    if cpus_per_rank < 1:
        raise PlacementError("cpus_per_rank must be >= 1")
    if device == "cuda":
        return {"num_cpus": 1, "num_gpus": ranks}
    if device == "cpu":
        return {"num_cpus": ranks * cpus_per_rank, "num_gpus": 0}
    raise PlacementError(f"device must be cpu or cuda here, got {device!r}")


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast with a clear message: ``ray.init`` retries an unreachable
    address for minutes. ``auto`` is left to Ray (it fails at once)."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise RayUnavailableError(f"Ray address {address!r}: expected HOST:PORT (e.g. 10.0.0.1:6379), "
                                  "ray://HOST:PORT or auto")  # fmt: skip
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise RayUnavailableError(
            f"cannot reach the Ray cluster at {address} ({e.strerror or e}). Is `ray start --head` running there, "
            "and is its port open from this machine?"
        ) from None


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayUnavailableError(RAY_MISSING) from None
    return ray


# ---- on the node --------------------------------------------------------------------


class EngineSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What the coordinator tells an actor to start."""

    engine_id: str
    model: str
    engine_args: list[str]
    initial_phase: str
    log_dir: str
    env: dict[str, str]
    cpu_ranks: int  # > 0: a CPU engine; claim cores for this many ranks
    cpus_per_rank: int
    stop_grace: float
    base_cmd: list[str] | None = None  # tests: a stand-in for the vLLM command


class EngineInfo(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where an actor started its engine."""

    node_ip: str
    port: int
    pid: int
    log_path: str
    placement: str  # cores or GPUs, for logs


class EngineActor:
    """One engine on one node (a Ray actor; ``RayLauncher`` decorates it).
    Threaded (max_concurrency > 1): ``wait_exit`` blocks while ``log_tail``
    and ``stop`` are served."""

    def __init__(self, spec_bytes: bytes) -> None:
        import ray

        spec = msgspec.json.decode(spec_bytes, type=EngineSpec, strict=True)
        check_engine_args(spec.engine_args)
        self.spec = spec
        node_ip = ray.util.get_node_ip_address()
        ncores = spec.cpu_ranks * spec.cpus_per_rank
        zmq = {"ECOSERVE_ZMQ_HOST": "0.0.0.0", "ECOSERVE_ZMQ_ADVERTISE_HOST": node_ip}  # the coordinator is elsewhere
        env = engine_env(
            spec.env, zmq, engine_id=spec.engine_id, initial_phase=spec.initial_phase,
            cpu_kv_share=(os.cpu_count() or 1) // ncores if ncores else None,
        )  # fmt: skip
        self._locks: list[Any] = []
        if spec.cpu_ranks:
            if "VLLM_CPU_OMP_THREADS_BIND" in env:
                placement = f"cores {env['VLLM_CPU_OMP_THREADS_BIND']} (given)"
            else:
                # Ray counts CPUs, not which: the locks (held until the actor dies) say which
                cores, self._locks, shared = claim_cores(ncores)
                per = spec.cpus_per_rank
                env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(
                    core_list(cores[r * per : (r + 1) * per]) for r in range(spec.cpu_ranks)
                )
                placement = f"cores {env['VLLM_CPU_OMP_THREADS_BIND']}" + (" (shared)" if shared else "")
        else:
            placement = f"GPU {env.get('CUDA_VISIBLE_DEVICES', '?')}"  # set by Ray to the actor's GPUs
        port = free_port("0.0.0.0")
        cmd = vllm_command(spec.model, port, spec.engine_args, host="0.0.0.0", base_cmd=spec.base_cmd)
        log_path = Path(spec.log_dir) / f"{spec.engine_id}.log"
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:  # the coordinator's path may not exist on this node
            log_path = Path(tempfile.gettempdir()) / "ecoserve-logs" / log_path.name
        self.engine = EngineProcess(cmd, env, log_path, header=f"ecoserve on {node_ip} ({placement})")
        try:
            self.engine.start(keeper=True)  # a thread as long-lived as the server: see the module doc
        except Exception as e:
            raise RuntimeError(f"cannot start the engine on {node_ip}: {e}") from e
        assert self.engine.pid is not None
        self.info_bytes = msgspec.json.encode(EngineInfo(node_ip, port, self.engine.pid, str(log_path), placement))

    def info(self) -> bytes:
        return self.info_bytes

    def wait_exit(self) -> int:
        """Returns the server's exit code once it exits."""
        code = self.engine.wait_exit()
        return code if code is not None else ACTOR_LOST

    def log_tail(self, lines: int = 40) -> str:
        return self.engine.log_tail(lines)

    def stop(self, grace: float) -> int | None:
        """SIGTERM the server's group, wait up to ``grace`` s for the whole
        group, then SIGKILL it. Returns the exit code."""
        return self.engine.stop(grace)


# ---- on the coordinator ---------------------------------------------------------------


class RayEngine:
    """The coordinator's view of one engine actor. The URL is known once Ray
    has placed the actor (``RayLauncher.wait_healthy`` waits for that)."""

    def __init__(self, eid: str, actor: Any, log_path: Path) -> None:
        self.id = eid
        self.actor = actor
        self._ray = _import_ray()
        self._info_ref = actor.info.remote()
        self._exit_ref = actor.wait_exit.remote()
        self._info: EngineInfo | None = None
        self._code: int | None = None
        self._lost: str | None = None  # why the actor died, when it did
        self._log_path = log_path

    # Placement --------------------------------------------------------------------------
    def placed(self) -> bool:
        if self._info is None:
            ready, _ = self._ray.wait([self._info_ref], timeout=0)
            if ready:
                self._take_info()
        return self._info is not None

    def _take_info(self) -> None:
        try:
            raw = self._ray.get(self._info_ref)
        except self._ray.exceptions.RayError as e:
            self._lost = self._lost or _first_line(e)
            return
        self._info = msgspec.json.decode(raw, type=EngineInfo, strict=True)
        self._log_path = Path(self._info.log_path)

    async def wait_placed(self) -> None:
        """Until the actor runs its engine (raises EngineStartError if it died first)."""
        try:
            await asyncio.wrap_future(self._info_ref.future())
        except self._ray.exceptions.RayError as e:
            self._lost = self._lost or _first_line(e)
            raise EngineStartError(f"{self.id}: its Ray actor died while starting: {self._lost}") from None
        self._take_info()

    @property
    def node_ip(self) -> str | None:
        return self._info.node_ip if self.placed() else None

    @property
    def node_pid(self) -> int | None:
        """The server's pid on its node (``pid`` is None: not this machine's)."""
        return self._info.pid if self.placed() else None

    @property
    def placement(self) -> str:
        return self._info.placement if self.placed() else "not placed yet"

    # LaunchedEngine ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        if not self.placed():
            return f"ray-actor://{self.id}(pending)"
        assert self._info is not None
        host = f"[{self._info.node_ip}]" if ":" in self._info.node_ip else self._info.node_ip
        return f"http://{host}:{self._info.port}"

    @property
    def pid(self) -> int | None:
        return None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def exit_code(self) -> int | None:
        """Never blocks: the exit reference is checked with a zero timeout."""
        if self._code is not None:
            return self._code
        ready, _ = self._ray.wait([self._exit_ref], timeout=0)
        if not ready:
            return None
        try:
            self._code = int(self._ray.get(self._exit_ref))
        except self._ray.exceptions.RayError as e:  # the actor or its node died
            self._lost = self._lost or _first_line(e)
            self._code = ACTOR_LOST
        return self._code

    def stopped(self, code: int | None) -> None:
        """Stopped by the launcher: remember how, so that nothing asks Ray
        about it later (the connection may be closed by then)."""
        if self._code is None:
            self._code = code if code is not None else ACTOR_LOST

    def log_tail(self, lines: int = 40) -> str:
        if self._lost is not None or self.exit_code() == ACTOR_LOST:
            return f"(the engine's Ray actor is gone: {self._lost}; its log on the node: {self._log_path})"
        try:
            return str(self._ray.get(self.actor.log_tail.remote(lines), timeout=10))
        except Exception as e:  # a lost node, a slow one: say so instead of blocking longer
            return f"(cannot fetch the log through the actor: {_first_line(e)})"


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:500]


class RayLauncher(EngineLauncher):
    """Engines as Ray actors on a cluster (``address``), or on a local Ray
    instance started for us. Every node needs ecoserve and vLLM installed in
    the Python that runs ``ray start``, and the model at the same path (or a
    hub name)."""

    name = "ray"

    def __init__(
        self,
        model: str,
        engine_args: Sequence[str] = (),
        *,
        address: str | None = None,
        device: str = "auto",
        cpus_per_rank: int = 1,
        log_dir: Path | str | None = None,
        extra_env: dict[str, str] | None = None,
        stop_grace: float = STOP_GRACE_S,
        base_cmd: Sequence[str] | None = None,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        check_engine_args(engine_args)
        ranks_per_engine(engine_args)  # bad sizes fail here, before Ray starts
        ray = _import_ray()
        if address:
            check_reachable(address)
        self.model = str(model)
        self.engine_args = list(engine_args)
        self.address = address
        self.cpus_per_rank = cpus_per_rank
        # On each node; the default is a fresh folder under that node's temp directory.
        run = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.gettempdir()) / "ecoserve-logs" / run
        self.stop_grace = stop_grace
        self.base_cmd = list(base_cmd) if base_cmd is not None else None
        # One shared secret for this coordinator's ZeroMQ channels to engines
        # bound beyond loopback; set here too so our own client side sees it.
        os.environ.setdefault("ECOSERVE_ZMQ_SECRET", secrets.token_hex(32))
        env = {k: v for k, v in os.environ.items() if k.startswith(_FORWARD_PREFIXES) and k != "VLLM_PLUGINS"}
        env.update(extra_env or {})
        self.env = env
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            _init_ray(ray, address, init_kwargs or {})
        if device == "auto":
            device = "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"
        self.device = device
        self.resources = engine_resources(engine_args, device, cpus_per_rank)
        self._actor_cls = ray.remote(max_concurrency=4, max_restarts=0)(EngineActor)
        self._running: dict[str, RayEngine] = {}
        self._launched = 0

    def capacity(self) -> int | None:
        """Engines that fit on the nodes' free resources now (None when Ray
        cannot say); an autoscaling cluster may hold more later."""
        try:
            from ray._private.state import available_resources_per_node

            nodes = available_resources_per_node().values()
        except Exception:
            return None
        cpus, gpus = self.resources["num_cpus"], self.resources["num_gpus"]
        total = 0
        for free in nodes:
            fit = int(free.get("CPU", 0) // cpus) if cpus else 10**6
            if gpus:
                fit = min(fit, int(free.get("GPU", 0) // gpus))
            total += fit
        return total

    def launch(self, count: int, *, initial_phase: str) -> list[LaunchedEngine]:
        """Creates the actors and returns at once; Ray places each on a node
        with room (or holds it until one has: ``wait_healthy`` times out)."""
        engines: list[LaunchedEngine] = []
        for _ in range(count):
            eid = f"engine-{self._launched}"
            self._launched += 1
            spec = EngineSpec(
                engine_id=eid, model=self.model, engine_args=self.engine_args, initial_phase=initial_phase,
                log_dir=str(self.log_dir), env=self.env, cpu_ranks=0 if self.device == "cuda" else ranks_per_engine(
                    self.engine_args), cpus_per_rank=self.cpus_per_rank, stop_grace=self.stop_grace,
                base_cmd=self.base_cmd,
            )  # fmt: skip
            options = {"name": f"ecoserve-{os.getpid()}-{eid}", **self.resources}
            actor = self._actor_cls.options(**options).remote(msgspec.json.encode(spec))
            engine = RayEngine(eid, actor, self.log_dir / f"{eid}.log")
            self._running[eid] = engine
            engines.append(engine)
        return engines

    async def wait_healthy(self, engines: Sequence[LaunchedEngine], timeout: float,
                           on_progress: OnProgress | None = None) -> None:  # fmt: skip
        deadline = time.monotonic() + timeout
        mine = [self._running[e.id] for e in engines if e.id in self._running]
        if on_progress is not None:
            on_progress(0, len(engines), "Ray is placing them")
        placing = asyncio.gather(*(e.wait_placed() for e in mine))
        try:
            await asyncio.wait_for(placing, timeout)
        except asyncio.TimeoutError:
            stuck = next(e for e in mine if not e.placed())
            raise EngineStartError(
                f"{stuck.id}: Ray found no node with room for {self._wants()} in {timeout:.0f} s "
                f"(free now: {_free_summary()}). Add nodes, or ask for fewer engines."
            ) from None
        for e in mine:
            log.info("%s runs on %s (%s), log %s on that node", e.id, e.url, e.placement, e.log_path)
        await wait_healthy(engines, max(1.0, deadline - time.monotonic()), on_progress)

    def _wants(self) -> str:
        r = self.resources
        return f"{r['num_gpus']:g} GPU(s)" if r["num_gpus"] else f"{r['num_cpus']:g} CPU(s)"

    async def stop(self, engines: Sequence[LaunchedEngine]) -> None:
        mine = [self._running.pop(e.id) for e in engines if e.id in self._running]
        if mine:
            # Shielded: a second Ctrl-C must not leave engines behind.
            await asyncio.shield(self._stop(mine))

    async def _stop(self, engines: list[RayEngine]) -> None:
        ray = _import_ray()

        async def one(e: RayEngine) -> None:
            code = None
            try:
                if e.exit_code() == ACTOR_LOST:
                    return  # nothing left to stop: its server went with the actor
                if not e.placed():
                    return  # still waiting for a node (or starting): the kill below cancels it
                ref = e.actor.stop.remote(self.stop_grace)
                code = await asyncio.wait_for(asyncio.wrap_future(ref.future()), self.stop_grace + 15)
            except (ray.exceptions.RayError, asyncio.TimeoutError) as err:
                log.warning("%s: stop through its actor failed (%s); killing the actor", e.id, _first_line(err))
            finally:
                ray.kill(e.actor, no_restart=True)  # frees its resources; its server dies with it
                e.stopped(code)
            if e.placed():
                await _until_dead(ray, e.actor)

        await asyncio.gather(*(one(e) for e in engines))

    async def close(self) -> None:
        await self.stop(list(self._running.values()))
        if self._owns_ray:
            ray = _import_ray()
            if ray.is_initialized():
                ray.shutdown()
            self._owns_ray = False


async def _until_dead(ray: Any, actor: Any, timeout: float = 15.0) -> None:
    """``ray.kill`` returns before the actor is gone: wait until a call to it fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            await asyncio.wait_for(asyncio.wrap_future(actor.info.remote().future()), 5.0)
        except ray.exceptions.RayActorError:
            return
        except (ray.exceptions.RayError, asyncio.TimeoutError):
            pass
        await asyncio.sleep(0.1)
    log.warning("a killed engine actor still answers after %.0f s", timeout)


def _init_ray(ray: Any, address: str | None, kwargs: dict[str, Any]) -> None:
    """``ray.init`` without letting it take over SIGTERM (it installs a
    handler that exits: ``ecoserve serve`` handles signals itself)."""
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if on_main else None
    opts: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    if address:
        opts["address"] = address
    else:
        opts["include_dashboard"] = False
    opts.update(kwargs)
    if address:
        use_ray_token_if_any()
    try:
        ray.init(**opts)
    except ConnectionError as e:
        raise RayUnavailableError(f"cannot connect to Ray ({address or 'local'}): {_first_line(e)}") from None
    finally:
        if on_main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def use_ray_token_if_any() -> None:
    """Ray >= 2.59 turns token authentication on for clusters started with
    ``ray start --head``, but a driver connecting by address sends its token
    (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) only in
    RAY_AUTH_MODE=token, and otherwise retries for a minute. Send it whenever
    one exists and the mode is not set: a cluster without authentication
    ignores it."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # Ray before token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _free_summary() -> str:
    try:
        from ray._private.state import available_resources_per_node

        parts = []
        for node, free in available_resources_per_node().items():
            parts.append(f"node {node[:8]}: {free.get('CPU', 0):g} CPU, {free.get('GPU', 0):g} GPU")
        return "; ".join(parts) or "no live nodes"
    except Exception:
        return "unknown"
