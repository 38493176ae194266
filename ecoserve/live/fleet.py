"""The engines a coordinator serves with: attach, detach, phases, health,
failure, replacement and drains.

The fleet owns every ``EngineRecord`` and keeps the router's instances in step
with them (``add_instance``, ``remove_instance``, ``fail_instance``). It
reports back through a ``FleetHost`` (the coordinator), which carries out the
router's actions and owns the requests:

- ``apply(actions)``: the router's answer to an instance change;
- ``engine_failed(instance_id)``: requeue or break the generations on it,
  returning how many went back to the queue;
- ``no_engine_left()``: nothing serves and nothing is launching.

An engine is failed when its process exits, when ``/health`` stays silent
HEALTH_MISSES times in a row, or when a stream to it breaks and it does not
answer ``/health``. One we launched is then killed and replaced (unless it was
being drained); one we attached is let go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ecoserve.engine.handle import EngineHandle, EngineUnreachable, UpstreamHTTPError
from ecoserve.engine.kv_event_stream import KVEventSubscriber
from ecoserve.engine.launcher import LocalLauncher
from ecoserve.engine.launcher_api import EngineLauncher, LaunchedEngine, OnProgress
from ecoserve.engine.process import SCHEDULER_CLS
from ecoserve.engine.resources import default_cpu_kv_gib
from ecoserve.engine.status_stream import StatusSubscriber
from ecoserve.live.prefixes import LivePrefixes
from ecoserve.policy import Action, InstanceState, PrefillTimePredictor, Router
from ecoserve.protocol import EngineStatus, StepRecord

log = logging.getLogger("ecoserve.coordinator")

HEALTH_S = 1.0  # how often engine liveness is checked
# An engine whose /health does not answer within HEALTH_TIMEOUT_S this many
# times in a row is hung: failed, killed and (when we launched it) replaced.
# Generous, so that a CPU engine busy with a long prefill is not mistaken for one.
HEALTH_TIMEOUT_S = 5.0
HEALTH_MISSES = 3
LEASE_S, LEASE_RENEW_S = 30.0, 5.0  # phase leases of attached engines (see _phase_loop)
REPLACE_TRIES = 3
EVENTS_KEPT = 200

# Where a new engine joins: a macro-instance index, None for the router's
# default, or a function asked when it joins (the autoscaler's target).
Macro = int | None | Callable[[], int]


class FleetHost(Protocol):
    def apply(self, actions: list[Action]) -> None: ...

    def engine_failed(self, instance_id: str, why: str) -> int:
        """Requeue (no first token) or break (streaming) its generations; how many were requeued."""

    def no_engine_left(self) -> None: ...

    def engine_steps(self, instance_id: str, steps: list[StepRecord]) -> None:
        """Step records the engine reported, new ones only, in step order."""


@dataclass(eq=False)
class EngineRecord:
    """The coordinator's view of one engine."""

    id: str
    url: str
    handle: EngineHandle
    model: str
    max_model_len: int
    kv_capacity_tokens: int
    launched: LaunchedEngine | None = None  # None: attached, not ours to stop
    initial_phase: str = "temporal"  # as found when attached
    desired_phase: str | None = None
    acked_phase: str | None = None
    observed: EngineStatus | None = None
    routed_total: int = 0
    failed: str | None = None  # why, once failed
    draining: bool = False
    leaving: bool = False  # drained: being stopped, no longer watched
    last_step: int = 0
    health_misses: int = 0
    phase_dirty: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task] = field(default_factory=list)


@dataclass
class LaunchSettings:
    """How local engines are started (``--model`` mode)."""

    model_path: str | None
    engine_args: list[str]
    device: str = "auto"
    log_dir: Path = Path(".")
    startup_timeout: float = 600.0
    cpu_kv_cache_gib: int | None = None
    max_engines: int = 1  # a local launcher plans its cores or GPUs for this many
    replace_failed: bool = True


class Fleet:
    def __init__(self, host: FleetHost, router: Router, predictor: PrefillTimePredictor, settings: LaunchSettings,
                 *, launcher: EngineLauncher | None = None, engine_api_key: str | None = None,
                 prefixes: LivePrefixes | None = None, chunked_step_budget: int | None = None) -> None:  # fmt: skip
        self.host = host
        # Tokens per step, decodes included, that every ``chunked`` command carries
        # (PolicyConfig.chunked_step_budget); None: the engine's own settings.
        self.chunked_step_budget = chunked_step_budget
        self.prefixes = prefixes if prefixes is not None else LivePrefixes(enabled=False)
        self.router = router
        self.predictor = predictor
        self.settings = settings
        self.launcher = launcher
        self.engine_api_key = engine_api_key
        self.engines: dict[str, EngineRecord] = {}
        self.events: list[dict[str, Any]] = []  # scaling and failure history, for status
        self.launching = 0
        self.requeued_total = 0  # requests moved off a failed engine before their first token
        self.replaced_total = 0
        self.served_model = ""
        self.max_model_len = 0
        self.stopping = False
        self._drains: dict[str, asyncio.Future[None]] = {}
        self._side_tasks: set[asyncio.Task] = set()  # launches, drains, replacements

    # ---- queries ---------------------------------------------------------------------
    def serving(self) -> list[EngineRecord]:
        return [r for r in self.engines.values() if not r.failed]

    def any_available(self) -> bool:
        """Something serves now or is being launched."""
        return bool(self.launching or self.serving())

    # ---- launching and attaching -----------------------------------------------------
    def launch(self, count: int) -> list[LaunchedEngine]:
        """Start ``count`` engines (not yet healthy), building the local launcher on first use."""
        s = self.settings
        if self.launcher is None:
            assert s.model_path is not None
            extra_env: dict[str, str] = {}
            if (
                s.device in ("auto", "cpu")
                and "VLLM_CPU_KVCACHE_SPACE" not in os.environ
                and not any(a.startswith("--kv-cache-memory") for a in s.engine_args)
            ):
                # vLLM's CPU default reserves 90% of memory per engine: N engines
                # cannot all start. (Ignored by GPU engines.)
                extra_env["VLLM_CPU_KVCACHE_SPACE"] = str(s.cpu_kv_cache_gib or default_cpu_kv_gib(s.max_engines))
            self.launcher = LocalLauncher(
                s.model_path, s.engine_args, slots=s.max_engines, device=s.device, log_dir=s.log_dir,
                extra_env=extra_env,
            )  # fmt: skip
        engines = self.launcher.launch(count, initial_phase=self.router.initial_phase.value)
        for e in engines:
            log.info("starting %s (%s launcher), log %s", e.id, self.launcher.name, e.log_path)
        return engines

    async def wait_healthy(self, engines: list[LaunchedEngine], on_progress: OnProgress | None = None) -> None:
        assert self.launcher is not None
        await self.launcher.wait_healthy(engines, self.settings.startup_timeout, on_progress)

    async def attach(self, eid: str, url: str, launched: LaunchedEngine | None, macro: Macro = None) -> None:
        handle = EngineHandle(url, api_key=self.engine_api_key)
        await handle.open()
        try:
            cards = await handle.models()
            status = await handle.status()
        except (EngineUnreachable, UpstreamHTTPError) as e:
            await handle.close()
            raise RuntimeError(f"engine {url} is not usable: {e}. Is it a vLLM server started with "
                               f"VLLM_PLUGINS=ecoserve and --scheduler-cls {SCHEDULER_CLS}?") from None  # fmt: skip
        if not cards:
            await handle.close()
            raise RuntimeError(f"engine {url} serves no model")
        model = str(cards[0]["id"])
        if self.served_model and model != self.served_model:
            await handle.close()
            raise RuntimeError(
                f"engine {url} serves {model!r}, the others {self.served_model!r}: one model per coordinator"
            )
        if any(r.url == url and not r.failed for r in self.engines.values()):
            await handle.close()
            raise ValueError(f"engine {url} is already attached")
        self.served_model = model
        mml = int(cards[0].get("max_model_len") or 0)
        self.max_model_len = min(self.max_model_len, mml) if self.max_model_len else mml
        kv = max(1, status.kv_blocks_total * status.block_size)
        rec = EngineRecord(eid, url, handle, model, mml, kv, launched=launched, initial_phase=status.phase,
                           observed=status)  # fmt: skip
        self.engines[eid] = rec
        prefix = self.prefixes.index_for(eid, url, status)
        inst = InstanceState(eid, kv_capacity_tokens=kv, url=url, max_requests=status.max_num_seqs or None,
                             prefix=prefix)  # fmt: skip
        # Make the engine match the policy's starting state before it gets a request.
        rec.desired_phase = self.router.initial_phase.value
        rec.phase_dirty.set()
        rec.tasks.append(asyncio.create_task(self._phase_loop(rec), name=f"ecoserve-phase-{eid}"))
        if status.addresses is not None and status.addresses.status:
            sub = StatusSubscriber(status.addresses.status, lambda st, rec=rec: self.observe_status(rec, st))
            rec.tasks.append(asyncio.create_task(sub.run(), name=f"ecoserve-status-{eid}"))
        events = self.prefixes.engines[eid].events if prefix is not None else ""
        if events:
            kv_sub = KVEventSubscriber(events, lambda b, eid=eid: self.prefixes.apply(eid, b),
                                       on_gap=lambda n, eid=eid: self.prefixes.lost(eid, n))  # fmt: skip
            rec.tasks.append(asyncio.create_task(kv_sub.run(), name=f"ecoserve-kv-events-{eid}"))
        where = macro() if callable(macro) else macro
        if where is not None:
            where = min(where, len(self.router.layout()))
        self.host.apply(self.router.add_instance(inst, time.monotonic(), macro=where))
        log.info("engine %s at %s: model %s, KV %d tokens, phase %s, prefix cache %s", eid, url, model, kv,
                 rec.desired_phase, "untracked" if prefix is None else "from KV events" if events else "estimated")

    async def detach(self, rec: EngineRecord) -> None:
        """Stop watching an engine that left the routing (drained or failed);
        stop it if we launched it."""
        for t in rec.tasks:
            t.cancel()
        for t in rec.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        rec.tasks.clear()
        self.prefixes.forget(rec.id)
        await self._hand_back(rec)
        if rec.launched is not None and self.launcher is not None:
            await self.launcher.stop([rec.launched])

    async def _hand_back(self, rec: EngineRecord) -> None:
        """Close our handle. An attached engine outlives us: give it back the
        phase it had, not frozen in the last one we commanded."""
        if rec.launched is None and not rec.failed and rec.acked_phase not in (None, rec.initial_phase):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(rec.handle.set_phase(rec.initial_phase), 2.0)
        await rec.handle.close()

    # ---- scaling: one engine at a time ----------------------------------------------
    async def add_engine(self, macro: Macro = None) -> str:
        """Launch one more engine, wait until it serves, and add it to the
        routing at ``macro``. Returns its id. Raises ValueError when nothing
        can be launched here."""
        if self.settings.model_path is None:
            raise ValueError("this coordinator attaches to engines (--engine-url); it launches none: "
                             "attach one with attach_engine(url)")  # fmt: skip
        if self.stopping:
            raise ValueError("the coordinator is stopping")
        self.launching += 1
        try:
            try:
                [engine] = self.launch(1)
            except ValueError as e:  # PlacementError: no free slot
                raise ValueError(str(e)) from None
            assert self.launcher is not None
            try:
                await self.wait_healthy([engine])
                await self.attach(engine.id, engine.url, engine, macro=macro)
            except BaseException:
                await asyncio.shield(self.launcher.stop([engine]))
                raise
        finally:
            self.launching -= 1
        self.event("added", engine.id)
        return engine.id

    async def attach_engine(self, url: str, macro: int | None = None) -> str:
        """Add an already running engine (with the plugin) to the routing."""
        eid = f"attached-{len(self.engines)}"
        while eid in self.engines:
            eid += "x"
        await self.attach(eid, url.rstrip("/"), None, macro=macro)
        self.event("attached", eid)
        return eid

    async def remove_engine(self, eid: str) -> None:
        """Drain an engine: route nothing new to it, let what it holds finish,
        then stop it (ours) or let it go (attached). Never a kill."""
        rec = self.engines.get(eid)
        if rec is None:
            raise KeyError(eid)
        if rec.failed:  # already out of the routing
            self.engines.pop(eid, None)
            return
        if eid not in self._drains:
            serving = [r for r in self.engines.values() if not r.failed and not r.draining]
            if serving == [rec]:
                raise ValueError(f"{eid} is the last engine serving: add another before removing it")
            rec.draining = True
            self._drains[eid] = asyncio.get_running_loop().create_future()
            self.event("draining", eid)
            self.host.apply(self.router.remove_instance(eid, time.monotonic()))
        await asyncio.shield(self._drains[eid])

    def drained(self, eid: str) -> None:
        """The router says a draining engine is empty: stop it."""
        log.info("engine %s drained", eid)
        if eid in self._drains:
            self.spawn(self._finish_drain(eid), f"drained-{eid}")

    async def _finish_drain(self, eid: str) -> None:
        rec = self.engines.get(eid)
        fut = self._drains.get(eid)
        try:
            if rec is not None:
                rec.leaving = True  # its health checks fail from here on, by design
                await self.detach(rec)
                self.engines.pop(eid, None)
                self.event("removed", eid)
        finally:
            self._drains.pop(eid, None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        """Run a launch, drain or replacement beside the loop; its failure is logged, never lost."""
        task = asyncio.create_task(coro, name=f"ecoserve-{what}")
        self._side_tasks.add(task)
        task.add_done_callback(self._side_done)

    def _side_done(self, task: asyncio.Task) -> None:
        self._side_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed: %s", task.get_name(), task.exception())
            self.event("error", None, f"{task.get_name()}: {task.exception()}")

    def event(self, kind: str, instance: str | None, detail: str | None = None) -> None:
        self.events.append({"time": time.time(), "event": kind, "instance": instance, "detail": detail})
        del self.events[:-EVENTS_KEPT]
        log.info("%s %s%s", kind, instance or "", f": {detail}" if detail else "")

    # ---- phases and status -----------------------------------------------------------
    def want_phase(self, eid: str, phase: str) -> None:
        rec = self.engines.get(eid)
        if rec is not None and not rec.failed:
            rec.desired_phase = phase
            rec.phase_dirty.set()

    def routed(self, eid: str) -> None:
        rec = self.engines.get(eid)
        if rec is not None:
            rec.routed_total += 1

    async def _phase_loop(self, rec: EngineRecord) -> None:
        """Send the engine the phase the policy wants, one command at a time.

        An attached engine outlives us, so its phases are leased: renewed
        every LEASE_RENEW_S, they lapse back to the engine's own startup phase
        LEASE_S after we are gone (crash, network split) instead of leaving it
        frozen in ``decode``. Engines we launched die with us: no lease."""
        leased = rec.launched is None
        while True:
            renew = False
            if leased:
                try:
                    await asyncio.wait_for(rec.phase_dirty.wait(), LEASE_RENEW_S)
                except asyncio.TimeoutError:
                    renew = True
            else:
                await rec.phase_dirty.wait()
            rec.phase_dirty.clear()
            want = rec.desired_phase
            if want is None or (want == rec.acked_phase and not renew):
                continue
            try:
                budget = self.chunked_step_budget if want == "chunked" else None
                status = await rec.handle.set_phase(want, lease_s=LEASE_S if leased else None, step_budget=budget)
                rec.acked_phase = status.phase
                self.observe_status(rec, status)
            except (EngineUnreachable, UpstreamHTTPError) as e:
                log.warning("phase command %s -> %s failed: %s", rec.id, want, e)
                await asyncio.sleep(0.1)
            if rec.desired_phase != rec.acked_phase:
                rec.phase_dirty.set()

    def observe_status(self, rec: EngineRecord, st: EngineStatus) -> None:
        if rec.observed is None or st.seq >= rec.observed.seq or st.time > rec.observed.time:
            rec.observed = st
        new = [s for s in sorted(st.steps, key=lambda s: s.step) if s.step > rec.last_step]
        for step in new:
            self.predictor.observe_step(step.kind, step.prefill_tokens, step.duration_s, step.prefill_reqs)
        if new:
            rec.last_step = new[-1].step
            self.host.engine_steps(rec.id, new)

    # ---- health and failure ----------------------------------------------------------
    async def health_monitor(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_S)
            live = [r for r in self.engines.values() if not r.failed and not r.leaving]
            await asyncio.gather(*(self._check_health(r) for r in live))

    async def _check_health(self, rec: EngineRecord) -> None:
        """Dead (process exited) or hung (``/health`` silent HEALTH_MISSES times in a row)."""
        code = rec.launched.exit_code() if rec.launched is not None else None
        if code is not None:
            self.fail_engine(rec, f"process exited with code {code}; log {rec.launched.log_path}")  # type: ignore[union-attr]
            return
        if await rec.handle.health(timeout=HEALTH_TIMEOUT_S):
            rec.health_misses = 0
            return
        rec.health_misses += 1
        if rec.health_misses >= HEALTH_MISSES and not rec.failed:
            self.fail_engine(rec, f"GET /health failed {HEALTH_MISSES} times in a row (dead or hung)")

    async def engine_broke(self, eid: str, why: str) -> None:
        """A stream to the engine broke: fail it if it is really gone."""
        rec = self.engines.get(eid)
        if rec is None or rec.failed or rec.leaving or self.stopping:
            return
        exited = rec.launched is not None and rec.launched.exit_code() is not None
        alive = not exited and await rec.handle.health(timeout=2.0)
        if not alive and not rec.failed:
            self.fail_engine(rec, why)

    def fail_engine(self, rec: EngineRecord, why: str) -> None:
        """Take a dead or hung engine out of rotation: the host requeues the
        requests it had not started (they keep their place) and breaks the
        started streams; an engine we launched is killed and replaced."""
        if rec.failed or rec.leaving:
            return
        rec.failed = why
        log.error("engine %s (%s) failed: %s", rec.id, rec.url, why)
        self.event("failed", rec.id, why)
        self.requeued_total += self.host.engine_failed(rec.id, why)
        for t in rec.tasks:
            t.cancel()
        self.prefixes.forget(rec.id)
        macro = None
        if self.router.has_macros:
            with contextlib.suppress(KeyError, ValueError):
                macro = self.router.group_index_of(rec.id)
        self.host.apply(self.router.fail_instance(rec.id, time.monotonic()))
        drain = self._drains.get(rec.id)
        if drain is not None and not drain.done():
            drain.set_result(None)  # nothing left to drain
        replacing = rec.launched is not None and self.settings.replace_failed and not self.stopping
        if replacing:
            self.spawn(self._replace(rec, macro, draining=rec.draining), f"replace-{rec.id}")
        elif rec.launched is not None and self.launcher is not None:
            self.spawn(self.launcher.stop([rec.launched]), f"stop-{rec.id}")
        if not replacing and not self.any_available():
            self.host.no_engine_left()

    async def _replace(self, rec: EngineRecord, macro: int | None, *, draining: bool) -> None:
        """Kill what is left of a failed engine (a hung one still holds its
        memory and devices), then start a new one in its place, unless it was
        being drained anyway."""
        self.launching += 1
        try:
            assert self.launcher is not None and rec.launched is not None
            await self.launcher.stop([rec.launched])
            await rec.handle.close()
            self.engines.pop(rec.id, None)
            if draining:
                return
            for attempt in range(1, REPLACE_TRIES + 1):
                try:
                    new = await self.add_engine(macro)
                    self.replaced_total += 1
                    self.event("replaced", rec.id, f"by {new}")
                    return
                except Exception as e:
                    log.error("replacing %s failed (try %d of %d): %s", rec.id, attempt, REPLACE_TRIES, e)
                    self.event("launch-failed", rec.id, str(e))
                    await asyncio.sleep(2.0 * attempt)
        finally:
            self.launching -= 1
            if not self.any_available():
                self.host.no_engine_left()

    # ---- shutdown --------------------------------------------------------------------
    def tasks(self) -> list[asyncio.Task]:
        return list(self._side_tasks) + [t for rec in self.engines.values() for t in rec.tasks]

    async def close(self) -> None:
        """After the tasks are cancelled: close handles, stop our engines, release drains."""
        for rec in list(self.engines.values()):
            rec.tasks.clear()
            await self._hand_back(rec)
        if self.launcher is not None:
            # Shielded: a second Ctrl-C must not leave engines behind.
            await asyncio.shield(self.launcher.close())
        for fut in self._drains.values():
            if not fut.done():
                fut.set_result(None)
